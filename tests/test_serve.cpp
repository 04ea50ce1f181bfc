// `clhost serve`: the real server (the clhost binary) on a free loopback port, real quick runs.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "access.hpp"
#include "run_view.hpp"
#include "serve_process.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using clhost::test::read_file;
using clhost::test::TempDir;
using Clock = std::chrono::steady_clock;
using clhost::test::ServerProcess;

const std::string kQuick = std::string(CLHOST_SOURCE_DIR) + "/configs/quick.toml";

const httplib::Headers kPageHeaders{{"X-Clhost-Request", "1"}};

json get_json(httplib::Client& client, const std::string& path, int expected = 200) {
  const auto response = client.Get(path);
  EXPECT_TRUE(response) << path;
  if (!response) return json();
  EXPECT_EQ(response->status, expected) << path << ": " << response->body;
  return json::parse(response->body, nullptr, false);
}

json post_json(httplib::Client& client, const std::string& path, const json& body, int expected) {
  const auto response = client.Post(path, kPageHeaders, body.dump(), "application/json");
  EXPECT_TRUE(response) << path;
  if (!response) return json();
  EXPECT_EQ(response->status, expected) << path << ": " << response->body;
  return json::parse(response->body, nullptr, false);
}

json launch_form(const std::string& name, const std::vector<std::string>& set = {}) {
  return json{{"name", name}, {"config", read_file(kQuick)}, {"set", set}};
}

// Polls the run until its status is one of `wanted` (or a minute passes).
json wait_for_status(httplib::Client& client, const std::string& name,
                     const std::vector<std::string>& wanted) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  json run;
  while (Clock::now() < deadline) {
    const auto response = client.Get("/api/runs/" + name);
    if (response && response->status == 200) {
      run = json::parse(response->body);
      for (const auto& status : wanted) {
        if (run["status"] == status) return run;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ADD_FAILURE() << name << " never reached the wanted status; last: " << run.dump();
  return run;
}

// The events of one Server-Sent-Events stream until the run ends (or a timeout).
std::vector<std::pair<std::string, json>> read_stream(httplib::Client& client,
                                                      const std::string& path) {
  std::vector<std::pair<std::string, json>> events;
  std::string pending;
  client.Get(path, [&](const char* data, size_t size) {
    pending.append(data, size);
    for (size_t end = pending.find("\n\n"); end != std::string::npos; end = pending.find("\n\n")) {
      const std::string message = pending.substr(0, end);
      pending.erase(0, end + 2);
      std::string kind;
      std::string data_line;
      std::istringstream lines(message);
      for (std::string line; std::getline(lines, line);) {
        if (line.rfind("event: ", 0) == 0) kind = line.substr(7);
        if (line.rfind("data: ", 0) == 0) data_line = line.substr(6);
      }
      if (!kind.empty()) events.emplace_back(kind, json::parse(data_line));
    }
    return true;
  });
  return events;
}

// --- without a server --------------------------------------------------------------------------

TEST(ServeParts, CurvesStayBoundedAndKeepTheirExtremes) {
  clhost::serve::CurveDownsampler curves(1000);
  for (int64_t step = 1; step <= 1000000; ++step) {
    curves.add(step, step == 500000 ? 99.0 : 1.0, 0.5);
  }
  const json c = curves.to_json();
  EXPECT_LE(c["step"].size(), 1000U);
  EXPECT_GE(c["step"].size(), 400U);
  double highest = 0;
  for (const auto& value : c["loss_max"]) highest = std::max(highest, value.get<double>());
  EXPECT_EQ(highest, 99.0);  // the spike survives downsampling
  EXPECT_EQ(c["step"].back(), 1000000);
  curves.drop_after(250000);
  const json cut = curves.to_json();
  EXPECT_LE(cut["step"].back().get<int64_t>(), 250000 + c["width"].get<int64_t>());
}

TEST(ServeParts, RunNamesNeverBecomePaths) {
  using clhost::serve::valid_run_name;
  EXPECT_TRUE(valid_run_name("quick_20261206_101010"));
  EXPECT_TRUE(valid_run_name("a.b-c_1"));
  for (const char* bad : {"", "..", ".hidden", "a/b", "../etc", "a\\b", "a b", "%2e%2e", "/abs"}) {
    EXPECT_FALSE(valid_run_name(bad)) << bad;
  }
  EXPECT_FALSE(valid_run_name(std::string(129, 'a')));
}

TEST(ServeCli, BadOptionsAreRefusedWithWhatWasWrong) {
  const std::string serve = std::string(CLHOST_BINARY) + " serve ";
  auto result = clhost::test::run_command(serve + "--port 70000");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--port must be 0..65535"), std::string::npos) << result.output;
  result = clhost::test::run_command(serve + "--token short");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--token must be at least 16"), std::string::npos);
  result = clhost::test::run_command(serve + "--port 0 --configs /nonexistent/configs");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("--configs /nonexistent/configs: not a directory"),
            std::string::npos)
      << result.output;
  // A port already taken: said so, exit 1.
  TempDir dir;
  ServerProcess first(dir.path("runs"));
  result = clhost::test::run_command(serve + "--runs " + dir.path("runs") + " --port " +
                                     std::to_string(first.port()));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("cannot listen on 127.0.0.1:" + std::to_string(first.port())),
            std::string::npos)
      << result.output;
}

// --- the real server ---------------------------------------------------------------------------

TEST(ServeApi, ListsAndShowsARunStartedFromTheCommandLine) {
  TempDir dir;
  const std::string run_dir = dir.path("runs/cli_run");
  const auto run =
      clhost::test::run_command(std::string(CLHOST_BINARY) + " run --config " + kQuick +
                                " --output " + run_dir + " --quiet --profile-memory");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const json results = json::parse(read_file(run_dir + "/results.json"));
  ServerProcess server(dir.path("runs"));
  auto client = server.client();

  const json list = get_json(client, "/api/runs");
  ASSERT_EQ(list["total"], 1);
  const json& row = list["runs"][0];
  EXPECT_EQ(row["name"], "cli_run");
  EXPECT_EQ(row["status"], "complete");
  EXPECT_EQ(row["results"]["average"], results["metrics"]["average_accuracy"]);
  EXPECT_EQ(row["results"]["forgetting"], results["metrics"]["forgetting"]);
  EXPECT_EQ(row["plugins"], json::array({"l2", "memory_profiler"}));
  EXPECT_DOUBLE_EQ(row["progress"]["fraction"].get<double>(), 1.0);

  const json details = get_json(client, "/api/runs/cli_run");
  EXPECT_EQ(details["matrix"], results["accuracy_matrix"]);
  EXPECT_EQ(details["baseline"], results["random_init_accuracy"]);
  EXPECT_EQ(details["tasks"].size(), 5U);
  EXPECT_FALSE(details["curves"]["step"].empty());
  EXPECT_NE(details["config_toml"].get<std::string>().find("[train]"), std::string::npos);

  ASSERT_TRUE(details["has_memory_profile"].get<bool>());
  const json memory = get_json(client, "/api/runs/cli_run/memory");
  EXPECT_FALSE(memory["samples"]["rss_bytes"].empty());
  EXPECT_EQ(memory["samples"]["rss_bytes"].size(), memory["samples"]["t_s"].size());
  EXPECT_FALSE(memory["events"].empty());

  const auto report = client.Get("/api/runs/cli_run/report");
  ASSERT_TRUE(report);
  EXPECT_EQ(report->status, 200);
  EXPECT_NE(report->body.find("<html"), std::string::npos);
  EXPECT_TRUE(fs::exists(run_dir + "/report.html"));

  EXPECT_EQ(get_json(client, "/api/runs?status=failed")["total"], 0);
  EXPECT_EQ(get_json(client, "/api/runs?plugin=memory_profiler")["total"], 1);
  EXPECT_EQ(get_json(client, "/api/runs?plugin=ewc")["total"], 0);
  EXPECT_EQ(get_json(client, "/api/runs?q=CLI_")["total"], 1);
  EXPECT_EQ(get_json(client, "/api/runs?q=nothing")["total"], 0);
  get_json(client, "/api/runs/missing_run", 404);
}

TEST(ServeApi, StreamsALaunchedRunFromStartToEnd) {
  TempDir dir;
  ServerProcess server(dir.path("runs"));
  auto client = server.client();
  post_json(client, "/api/launch", launch_form("streamed"), 201);
  const auto events = read_stream(client, "/api/runs/streamed/stream");
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.front().first, "snapshot");
  json matrix = events.front().second["matrix"];
  int64_t last_step = 0;
  int64_t last_row = static_cast<int64_t>(matrix.size()) - 1;
  std::vector<std::string> statuses;
  for (size_t i = 1; i < events.size(); ++i) {
    const auto& [kind, event] = events[i];
    if (kind == "progress") {
      for (const auto& point : event) {
        EXPECT_GT(point["global_step"].get<int64_t>(), last_step);  // in order, none twice
        last_step = point["global_step"];
      }
    } else if (kind == "evaluation" && event["after_task"] >= 0) {
      EXPECT_EQ(event["after_task"].get<int64_t>(), last_row + 1);
      last_row = event["after_task"];
      matrix.push_back(event["row"]);
    } else if (kind == "status") {
      statuses.push_back(event["status"]);
    }
  }
  ASSERT_FALSE(statuses.empty());
  EXPECT_EQ(statuses.back(), "complete");  // after "running" (and "starting") as it went
  EXPECT_EQ(last_step, 300);               // 5 tasks x 60 steps, every one logged (log_every = 10)
  const json results = json::parse(read_file(dir.path("runs/streamed/results.json")));
  EXPECT_EQ(matrix, results["accuracy_matrix"]);
  EXPECT_TRUE(fs::exists(dir.path("runs/streamed/report.html")));  // written as the run ended
}

TEST(ServeApi, LaunchStopResumeComplete) {
  TempDir dir;
  ServerProcess server(dir.path("runs"));
  auto client = server.client();
  post_json(client, "/api/launch",
            launch_form("stopped", {"train.iterations=1000", "run.checkpoint_every=200"}), 201);
  // Stop it once it is training.
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    const json run = get_json(client, "/api/runs/stopped");
    if (run["status"] == "running" && run["progress"].value("global_step", 0) > 20) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  post_json(client, "/api/runs/stopped/stop", json::object(), 202);
  const json stopped = wait_for_status(client, "stopped", {"interrupted", "complete", "failed"});
  ASSERT_EQ(stopped["status"], "interrupted") << stopped.dump();
  EXPECT_GE(stopped["checkpoints"].get<int>(), 1);
  post_json(client, "/api/runs/stopped/stop", json::object(), 409);  // not running
  post_json(client, "/api/runs/stopped/resume", json::object(), 202);
  const json done = wait_for_status(client, "stopped", {"complete", "failed"});
  ASSERT_EQ(done["status"], "complete") << done.dump();
  const json results = json::parse(read_file(dir.path("runs/stopped/results.json")));
  EXPECT_EQ(results["resumes"].size(), 1U);
  EXPECT_EQ(done["matrix"], results["accuracy_matrix"]);
  EXPECT_EQ(done["resumes"], 1);
  post_json(client, "/api/runs/stopped/resume", json::object(), 409);  // complete
  // The same name again is refused.
  post_json(client, "/api/launch", launch_form("stopped"), 409);
}

TEST(ServeApi, LaunchesAnABComparisonOverSeeds) {
  TempDir dir;
  ServerProcess server(dir.path("runs"));
  auto client = server.client();
  json form = launch_form("ab", {"train.iterations=20"});
  form["a"] = "plugins=";
  form["b"] = "plugins=l2";
  form["seeds"] = 2;
  form["jobs"] = 2;
  post_json(client, "/api/compare", form, 201);
  const json done = wait_for_status(client, "ab", {"complete", "failed"});
  ASSERT_EQ(done["status"], "complete") << done.dump();
  EXPECT_EQ(done["kind"], "compare");
  EXPECT_EQ(done["progress"]["finished_runs"], 4);
  const json comparison = json::parse(read_file(dir.path("runs/ab/compare.json")));
  EXPECT_EQ(done["statistics"], comparison);
  // The form's override reached both arms' runs.
  for (const char* arm : {"a", "b"}) {
    const json results =
        json::parse(read_file(dir.path(std::string("runs/ab/") + arm + "/seed_0/results.json")));
    EXPECT_EQ(results["config"]["train"]["iterations"], 20) << arm;
  }
  ASSERT_EQ(done["a_matrix"].size(), 5U);
  const double a00 = done["a_matrix"][0][0];
  const double b00 = done["b_matrix"][0][0];
  EXPECT_DOUBLE_EQ(done["difference_b_minus_a"][0][0].get<double>(), b00 - a00);
  const auto page = client.Get("/api/runs/ab/compare_page");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  const json list = get_json(client, "/api/runs");
  EXPECT_EQ(list["total"], 1);  // the arms' runs are inside it, not beside it
  // Arms are overrides only: no file of their own, no plug-in directory.
  form["name"] = "ab2";
  form["b"] = "/etc/passwd.toml";
  post_json(client, "/api/compare", form, 400);
  form["b"] = "run.plugin_path=[\"/tmp\"]";
  post_json(client, "/api/compare", form, 400);
}

TEST(ServeApi, ValidationShowsLocatedErrors) {
  TempDir dir;
  ServerProcess server(dir.path("runs"));
  auto client = server.client();
  const json ok = post_json(client, "/api/validate", launch_form(""), 200);
  EXPECT_TRUE(ok["valid"].get<bool>()) << ok.dump();

  std::string config = read_file(kQuick);
  const size_t at = config.find("lr = 1e-3");
  const auto line = 1 + std::count(config.begin(), config.begin() + static_cast<long>(at), '\n');
  config.replace(at, 9, "lrr = 1e-3");
  const json bad =
      post_json(client, "/api/validate", json{{"config", config}, {"set", json::array()}}, 200);
  EXPECT_FALSE(bad["valid"].get<bool>());
  ASSERT_EQ(bad["errors"].size(), 1U) << bad.dump();
  const json& error = bad["errors"][0];
  EXPECT_EQ(error["line"], line);
  EXPECT_EQ(error["column"], 1);
  EXPECT_NE(error["message"].get<std::string>().find("lrr"), std::string::npos) << error.dump();

  const json bad_set = post_json(client, "/api/validate", launch_form("", {"train.lr=-1"}), 200);
  EXPECT_FALSE(bad_set["valid"].get<bool>());
  EXPECT_NE(bad_set["errors"][0]["message"].get<std::string>().find("train.lr"), std::string::npos)
      << bad_set.dump();

  // A plug-in the pipeline names but nobody has: clhost validate's plug-in error.
  const json missing = post_json(
      client, "/api/validate",
      json{{"config", read_file(kQuick)}, {"plugins", json::array({"no_such_plugin"})}}, 200);
  EXPECT_FALSE(missing["valid"].get<bool>());
  EXPECT_EQ(missing["errors"][0]["class"], "plug-in error") << missing.dump();

  // Plug-ins load from the server's plug-in path only.
  const json foreign =
      post_json(client, "/api/validate", launch_form("", {"run.plugin_path=[\"/tmp\"]"}), 200);
  EXPECT_FALSE(foreign["valid"].get<bool>());
  EXPECT_EQ(foreign["errors"][0]["key"], "run.plugin_path") << foreign.dump();
  // A launch of a bad config starts nothing.
  post_json(client, "/api/launch", json{{"name", "bad"}, {"config", config}}, 400);
  EXPECT_FALSE(fs::exists(dir.path("runs/bad")));
  post_json(client, "/api/launch", json{{"name", "../escape"}, {"config", read_file(kQuick)}}, 400);
  post_json(client, "/api/validate", json{{"set", json::array()}}, 400);  // no config
}

TEST(ServeApi, RefusesTraversalOversizeAndForeignRequests) {
  TempDir dir;
  fs::create_directories(dir.path("secret"));
  const std::string kept = dir.file("secret/status.json", "{\"status\": \"complete\"}");
  ServerProcess server(dir.path("runs"), {"--max-request-bytes", "4096"});
  auto client = server.client();
  for (const char* path : {"/api/runs/..", "/api/runs/.serve", "/api/runs/..%2Fsecret",
                           "/api/runs/%2e%2e", "/api/runs/a%20b/log"}) {
    const auto response = client.Get(path);
    ASSERT_TRUE(response) << path;
    EXPECT_TRUE(response->status == 400 || response->status == 404)
        << path << " -> " << response->status << " " << response->body;
    EXPECT_EQ(response->body.find("complete"), std::string::npos) << path;
  }
  // POST without the page's header, from another origin, or too large.
  auto plain = client.Post("/api/runs/x/stop", "", "application/json");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 403);
  auto foreign =
      client.Post("/api/validate", {{"X-Clhost-Request", "1"}, {"Origin", "http://evil.example"}},
                  "{}", "application/json");
  ASSERT_TRUE(foreign);
  EXPECT_EQ(foreign->status, 403);
  auto large =
      client.Post("/api/validate", kPageHeaders, std::string(10000, ' '), "application/json");
  ASSERT_TRUE(large);
  EXPECT_EQ(large->status, 413);
  // DNS rebinding: a Host that is not the loopback address.
  auto rebound = client.Get("/api/runs", {{"Host", "evil.example:80"}});
  ASSERT_TRUE(rebound);
  EXPECT_EQ(rebound->status, 403);
}

TEST(ServeApi, StreamLimitIsReported) {
  TempDir dir;
  ServerProcess server(dir.path("runs"), {"--max-streams", "1"});
  auto client = server.client();
  post_json(client, "/api/launch", launch_form("long", {"train.iterations=2000"}), 201);
  wait_for_status(client, "long", {"running"});
  httplib::Client holder("127.0.0.1", server.port());
  std::atomic<bool> opened{false};
  std::atomic<bool> release{false};
  std::thread first([&] {
    holder.Get("/api/runs/long/stream", [&](const char*, size_t) {
      opened = true;
      return !release;
    });
  });
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!opened && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const json refused = get_json(client, "/api/runs/long/stream", 503);
  EXPECT_NE(refused["error"].get<std::string>().find("--max-streams"), std::string::npos);
  release = true;
  first.join();
  post_json(client, "/api/runs/long/stop", json::object(), 202);
  wait_for_status(client, "long", {"interrupted"});
}

TEST(ServeApi, TokenRequiredOffLoopback) {
  TempDir dir;
  ServerProcess server(dir.path("runs"), {"--host", "0.0.0.0"});
  ASSERT_EQ(server.token().size(), 32U);  // generated and printed
  auto client = server.client();
  get_json(client, "/api/runs", 401);
  const auto page = client.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 401);
  const auto with_header = client.Get("/api/runs", {{"X-Clhost-Token", server.token()}});
  ASSERT_TRUE(with_header);
  EXPECT_EQ(with_header->status, 200);
  const auto wrong = client.Get("/api/runs", {{"X-Clhost-Token", std::string(32, '0')}});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  const auto opened = client.Get("/?token=" + server.token());
  ASSERT_TRUE(opened);
  EXPECT_EQ(opened->status, 200);
  EXPECT_NE(opened->get_header_value("Set-Cookie").find("HttpOnly"), std::string::npos);
  const auto with_cookie = client.Get("/api/runs", {{"Cookie", "clhost_token=" + server.token()}});
  ASSERT_TRUE(with_cookie);
  EXPECT_EQ(with_cookie->status, 200);
}

TEST(ServeApi, ServerRestartMidRunLosesNothing) {
  TempDir dir;
  auto server = std::make_unique<ServerProcess>(dir.path("runs"));
  {
    auto client = server->client();
    post_json(client, "/api/launch", launch_form("survivor", {"train.iterations=600"}), 201);
    wait_for_status(client, "survivor", {"running"});
  }
  server.reset();  // SIGTERM to the server: the run is in its own session and goes on
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ServerProcess again(dir.path("runs"));
  auto client = again.client();
  const json done = wait_for_status(client, "survivor", {"complete", "failed", "interrupted"});
  ASSERT_EQ(done["status"], "complete") << done.dump();
  const json results = json::parse(read_file(dir.path("runs/survivor/results.json")));
  EXPECT_EQ(done["matrix"], results["accuracy_matrix"]);
  EXPECT_EQ(done["progress"]["global_step"], 3000);
  EXPECT_EQ(done["resumes"], 0);  // it never stopped
}

}  // namespace
