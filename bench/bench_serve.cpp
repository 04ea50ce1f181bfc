// clhost serve: how long the runs list takes with 1,000 run directories (cold: the first listing
// reads every run; warm: the cached views only check what changed), and how long an event takes
// from being appended to a run's journal to reaching a client of the run's live stream.
// Usage: bench_serve [OUTPUT.json]. Runs the real `clhost serve` binary.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_args.hpp"
#include "bench_timing.hpp"
#include "event_journal.hpp"
#include "serve_process.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kRuns = 1000;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// One finished quick run, copied `kRuns` times under distinct names (their journals, results
// and status are what a real run wrote).
void make_runs(const fs::path& runs) {
  const fs::path first = runs / "run_0000";
  const std::string command = std::string(CLHOST_BINARY) + " run --quiet --config " +
                              CLHOST_SOURCE_DIR + "/configs/quick.toml --output " + first.string();
  const auto result = clhost::test::run_command(command);
  if (result.exit_code != 0) throw std::runtime_error("the quick run failed: " + result.output);
  for (int i = 1; i < kRuns; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "run_%04d", i);
    fs::create_directories(runs / name);
    for (const char* file : {"events.jsonl", "results.json", "status.json", "config.toml",
                             "metrics.csv", "accuracy_matrix.csv"}) {
      fs::copy_file(first / file, runs / name / file);
    }
  }
}

json list_latency(const clhost::test::ServerProcess& server) {
  auto client = server.client();
  const auto start = Clock::now();
  const auto cold = client.Get("/api/runs?limit=50");
  const double cold_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (!cold || cold->status != 200) throw std::runtime_error("GET /api/runs failed");
  const double warm = clhost::bench::median_seconds(21, [&] { client.Get("/api/runs?limit=50"); });
  const double filtered =
      clhost::bench::median_seconds(21, [&] { client.Get("/api/runs?limit=50&q=run_09"); });
  return json{{"runs", kRuns},
              {"cold_seconds", cold_seconds},
              {"warm_median_seconds", warm},
              {"filtered_median_seconds", filtered},
              {"total_reported", json::parse(cold->body)["total"]}};
}

// Appends events to a "running" run (this process holds its pid) and times their arrival.
json stream_latency(const clhost::test::ServerProcess& server, const fs::path& runs) {
  const fs::path dir = runs / "live";
  fs::create_directories(dir);
  clhost::EventJournal journal(clhost::journal_path(dir.string()));
  journal.append(json{{"event", "run_begin"},
                      {"pid", ::getpid()},
                      {"pid_start", clhost::process_start_ticks(::getpid())},
                      {"tasks", json::array({json{{"name", "t"}, {"steps", 100000}}})}});
  std::vector<double> checkpoint_ms;
  std::vector<double> progress_ms;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    auto client = server.client();
    std::string pending;
    client.Get("/api/runs/live/stream", [&](const char* data, size_t size) {
      pending.append(data, size);
      for (size_t end = pending.find("\n\n"); end != std::string::npos;
           end = pending.find("\n\n")) {
        const std::string message = pending.substr(0, end);
        pending.erase(0, end + 2);
        const size_t at = message.find("data: ");
        if (at == std::string::npos) continue;
        const json data_json = json::parse(message.substr(at + 6), nullptr, false);
        const double now = unix_now();
        if (message.find("event: checkpoint") != std::string::npos) {
          checkpoint_ms.push_back(1000.0 * (now - data_json["t"].get<double>()));
        } else if (message.find("event: progress") != std::string::npos) {
          for (const auto& point : data_json)
            progress_ms.push_back(1000.0 * (now - point["t"].get<double>()));
        }
      }
      return !done;
    });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the snapshot first
  for (int i = 0; i < 40; ++i) {
    journal.append(json{
        {"event", i % 2 == 0 ? "checkpoint" : "progress"}, {"global_step", i + 1}, {"loss", 1.0}});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  done = true;
  journal.append(json{{"event", "checkpoint"}, {"global_step", 1000}});  // wakes the reader
  reader.join();
  const auto median = [](std::vector<double> values) {
    if (values.empty()) return -1.0;
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  return json{{"events", checkpoint_ms.size() + progress_ms.size()},
              {"checkpoint_event_median_ms", median(checkpoint_ms)},
              {"progress_event_median_ms", median(progress_ms)},
              {"note",
               "appended to events.jsonl -> parsed by a client of /api/runs/NAME/stream; "
               "progress points are sent together at most every 250 ms, an isolated one at once"}};
}

}  // namespace

int main(int argc, char** argv) try {
  clhost::bench::check_arguments(argc, argv, "usage: bench_serve [OUT.json]");
  clhost::test::TempDir dir;
  const fs::path runs = dir.path("runs");
  make_runs(runs);
  clhost::test::ServerProcess server(runs.string());
  json result{{"benchmark", "bench_serve"},
              {"hardware_threads", std::thread::hardware_concurrency()},
              {"list", list_latency(server)},
              {"stream", stream_latency(server, runs)}};
  const std::string text = result.dump(2);
  std::printf("%s\n", text.c_str());
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_serve: %s\n", e.what());
  return 1;
}
