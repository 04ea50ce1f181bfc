// Reading runs: the list, a run's state, its live stream, its log, memory profile and report,
// and the comparison of two finished runs.
#include <httplib.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "access.hpp"
#include "event_journal.hpp"
#include "files.hpp"
#include "report/report.hpp"
#include "serve_context.hpp"

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

// A live stream forwards progress at most this often (the events between are sent together).
constexpr auto kProgressInterval = std::chrono::milliseconds(250);
// It checks whether the run's process is still there this often.
constexpr auto kStatusInterval = std::chrono::seconds(1);
// An idle stream sends a comment this often, so proxies and the browser keep it open.
constexpr auto kKeepAliveInterval = std::chrono::seconds(15);

size_t parameter_or(const httplib::Request& request, const char* name, size_t fallback,
                    size_t limit) {
  if (!request.has_param(name)) return fallback;
  try {
    return std::min<size_t>(std::stoul(request.get_param_value(name)), limit);
  } catch (const std::exception&) {
    return fallback;
  }
}

// One Server-Sent Event.
std::string sse(const std::string& event, const json& data, int64_t id = -1) {
  std::string message;
  if (id >= 0) message += "id: " + std::to_string(id) + "\n";
  message += "event: " + event +
             "\ndata: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
  return message;
}

// The state of one live stream: where it is in the journal, what it has not sent yet.
class RunStream {
 public:
  RunStream(ServeContext& context, std::string name, int64_t offset, std::string status)
      : context_(context),
        name_(std::move(name)),
        dir_(context.runs_dir / name_),
        offset_(offset),
        status_(std::move(status)) {
    notify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    watch_directory();
  }
  ~RunStream() {
    if (notify_fd_ >= 0) ::close(notify_fd_);
  }
  RunStream(const RunStream&) = delete;
  RunStream& operator=(const RunStream&) = delete;
  RunStream(RunStream&&) = delete;
  RunStream& operator=(RunStream&&) = delete;

  // Sends what is new; false when the stream should end (client gone, run over, server
  // stopping).
  bool pump(httplib::DataSink& sink) {
    wait_for_change();
    if (context_.stopping) return false;
    std::string out;
    read_new_lines(out);
    const auto now = Clock::now();
    if (!progress_.empty() && now - last_progress_ >= kProgressInterval) {
      out += sse("progress", progress_, offset_);
      progress_ = json::array();
      last_progress_ = now;
    }
    bool finished = false;
    if (now - last_status_check_ >= kStatusInterval) {
      last_status_check_ = now;
      finished = check_status(out);
    }
    if (out.empty() && now - last_sent_ >= kKeepAliveInterval) out = ": keep-alive\n\n";
    if (!out.empty()) {
      if (!sink.write(out.data(), out.size())) return false;
      last_sent_ = now;
    }
    if (finished) sink.done();
    return !finished;
  }

 private:
  void watch_directory() {
    if (notify_fd_ >= 0 && !watching_ && fs::is_directory(dir_)) {
      watching_ = inotify_add_watch(notify_fd_, dir_.c_str(),
                                    IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) >= 0;
    }
  }

  // Until the run directory changes, or a short while (status checks, coalesced progress).
  void wait_for_change() {
    watch_directory();
    if (!watching_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return;
    }
    pollfd poll_fd{notify_fd_, POLLIN, 0};
    const int timeout_ms = progress_.empty() ? 500 : 50;
    if (::poll(&poll_fd, 1, timeout_ms) > 0) {
      char buffer[4096];
      while (::read(notify_fd_, buffer, sizeof(buffer)) > 0) {
      }
    }
  }

  void read_new_lines(std::string& out) {
    std::ifstream in(dir_ / kEventJournalFile, std::ios::binary);
    if (!in) return;
    in.seekg(offset_);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // half a line: the rest comes next time
      offset_ += static_cast<int64_t>(line.size()) + 1;
      json event = json::parse(line, nullptr, false);
      if (!event.is_object()) continue;
      const std::string kind = event.value("event", "");
      if (kind == "progress") {
        progress_.push_back(std::move(event));
        continue;
      }
      // Order is kept: progress before this event goes first.
      if (!progress_.empty()) {
        out += sse("progress", progress_, offset_);
        progress_ = json::array();
        last_progress_ = Clock::now();
      }
      out += sse(kind.empty() ? "unknown" : kind, event, offset_);
    }
  }

  // Sends a "status" event when the run's status changed; true when the run is over.
  bool check_status(std::string& out) {
    std::string status;
    json snapshot;
    context_.index.with_view(name_, [&](RunView& view) {
      status = view.status();
      if (status != status_) snapshot = view.snapshot();
    });
    if (status.empty() || status == status_) return false;
    status_ = status;
    if (status == "complete") write_report_quietly();
    out += sse("status",
               json{{"status", status},
                    {"status_message", snapshot.value("status_message", "")},
                    {"results", snapshot.value("results", json())},
                    {"has_results", snapshot.value("has_results", false)}},
               offset_);
    return status != "running" && status != "starting";
  }

  // The run's HTML report, produced as the run ends (a failure leaves it to the first request,
  // which says why).
  void write_report_quietly() const {
    try {
      if (fs::exists(dir_ / "results.json")) tools::write_run_report(dir_.string());
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): GET .../report retries
    }
  }

  ServeContext& context_;
  std::string name_;
  fs::path dir_;
  int64_t offset_;
  std::string status_;
  int notify_fd_ = -1;
  bool watching_ = false;
  json progress_ = json::array();
  Clock::time_point last_progress_{}, last_status_check_ = Clock::now(), last_sent_ = Clock::now();
};

void list_runs(ServeContext& context, const httplib::Request& request,
               httplib::Response& response) {
  RunFilter filter;
  filter.text = request.get_param_value("q");
  filter.plugin = request.get_param_value("plugin");
  filter.status = request.get_param_value("status");
  filter.offset = parameter_or(request, "offset", 0, 1 << 30);
  filter.limit = parameter_or(request, "limit", 50, 500);
  send_json(response, context.index.list(filter));
}

void run_details(ServeContext& context, const httplib::Request& request,
                 httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  json snapshot;
  if (!context.index.with_view(name, [&](RunView& view) { snapshot = view.snapshot(); })) {
    send_error(response, 404, "no run named '" + name + "' in " + context.runs_dir.string());
    return;
  }
  snapshot["config_toml"] = read_text(context.runs_dir / name / "config.toml");
  send_json(response, snapshot);
}

void run_stream(ServeContext& context, const httplib::Request& request,
                httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  json snapshot;
  int64_t offset = 0;
  if (!context.index.with_view(name, [&](RunView& view) {
        snapshot = view.snapshot();
        offset = view.advance();
      })) {
    send_error(response, 404, "no run named '" + name + "'");
    return;
  }
  if (context.streams.fetch_add(1) >= context.options.max_streams) {
    context.streams.fetch_sub(1);
    send_error(response, 503,
               "too many live run pages (" + std::to_string(context.options.max_streams) +
                   ", clhost serve --max-streams): close one and reload");
    return;
  }
  snapshot["config_toml"] = read_text(context.runs_dir / name / "config.toml");
  auto stream = std::make_shared<RunStream>(context, name, offset, snapshot.value("status", ""));
  auto first = std::make_shared<std::string>("retry: 2000\n\n" + sse("snapshot", snapshot, offset));
  response.set_header("Cache-Control", "no-cache");
  response.set_header("X-Accel-Buffering", "no");
  response.set_chunked_content_provider(
      "text/event-stream",
      [stream, first](size_t, httplib::DataSink& sink) {
        if (!first->empty()) {
          const bool written = sink.write(first->data(), first->size());
          first->clear();
          return written;
        }
        return stream->pump(sink);
      },
      [&context](bool) { context.streams.fetch_sub(1); });
}

void run_log(ServeContext& context, const httplib::Request& request, httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  const fs::path log = launch_log(context.runs_dir, name);
  if (!fs::exists(log)) {
    send_error(response, 404, "no console log for '" + name + "' (it was not started here)");
    return;
  }
  std::string text = read_text(log);
  constexpr size_t kLogBytes = size_t{64} * 1024;
  if (text.size() > kLogBytes) text = text.substr(text.size() - kLogBytes);
  response.set_content(text, "text/plain; charset=utf-8");
}

// The newest memory profile, its samples thinned to at most 2,000.
void run_memory(ServeContext& context, const httplib::Request& request,
                httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  fs::path newest;
  std::error_code error;
  for (const auto& item :
       fs::directory_iterator(context.runs_dir / name / "logs" / "memory_profile", error)) {
    const std::string file = item.path().filename().string();
    if (file.rfind("memory_profile_", 0) == 0 && item.path().extension() == ".json" &&
        (newest.empty() || file > newest.filename().string())) {
      newest = item.path();
    }
  }
  const json profile = newest.empty() ? json() : json::parse(read_text(newest), nullptr, false);
  if (!profile.is_object()) {
    send_error(response, 404, "no memory profile in this run (run it with --profile-memory)");
    return;
  }
  const json& samples = profile.at("samples");
  const size_t count = samples.at("t_s").size();
  const size_t stride = std::max<size_t>(1, (count + 1999) / 2000);
  json thinned = json::object();
  for (const auto& [column, values] : samples.items()) {
    json kept = json::array();
    for (size_t i = 0; i < values.size(); i += stride) kept.push_back(values[i]);
    thinned[column] = kept;
  }
  send_json(response, json{{"file", newest.filename().string()},
                           {"samples", thinned},
                           {"events", profile.value("events", json::array())},
                           {"phases", profile.value("phases", json::array())},
                           {"peak", profile.value("peak", json::object())}});
}

// The HTML report of a finished run, written next to its results when they are newer.
void run_report(ServeContext& context, const httplib::Request& request,
                httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  const fs::path dir = context.runs_dir / name;
  const fs::path report = dir / "report.html";
  std::error_code error;
  if (!fs::exists(report) ||
      fs::last_write_time(report, error) < fs::last_write_time(dir / "results.json", error)) {
    try {
      tools::write_run_report(dir.string());
    } catch (const std::exception& e) {
      send_error(response, 409, e.what());
      return;
    }
  }
  response.set_content(read_text(report), "text/html; charset=utf-8");
}

// compare.html of a comparison launched here.
void comparison_page(ServeContext& context, const httplib::Request& request,
                     httplib::Response& response) {
  const std::string name = run_name_of(request, response);
  if (name.empty()) return;
  const fs::path page = context.runs_dir / name / "compare.html";
  if (!fs::exists(page)) {
    send_error(response, 404, "no compare.html in '" + name + "' (not finished?)");
    return;
  }
  response.set_content(read_text(page), "text/html; charset=utf-8");
}

// Two finished runs side by side: `clhost compare`'s statistics over them (one run per arm:
// means, no interval) and the difference of their matrices.
void compare_runs(ServeContext& context, const httplib::Request& request,
                  httplib::Response& response) {
  std::vector<tools::RunRecord> runs;
  std::vector<std::string> names;
  for (const char* arm : {"a", "b"}) {
    const std::string name = request.get_param_value(arm);
    if (!valid_run_name(name)) {
      send_error(response, 400, std::string("?") + arm + "=: not a run name");
      return;
    }
    try {
      runs.push_back(tools::load_run((context.runs_dir / name).string()));
    } catch (const std::exception& e) {
      send_error(response, 409, name + ": " + e.what());
      return;
    }
    names.push_back(name);
  }
  const tools::Evaluation evaluation = tools::evaluation_of(runs[0].results);
  if (tools::evaluation_of(runs[1].results).name != evaluation.name) {
    send_error(response, 409,
               "the runs measure different things (" + evaluation.name + " and " +
                   tools::evaluation_of(runs[1].results).name + ")");
    return;
  }
  const std::string key = evaluation.name + "_matrix";
  const json statistics =
      tools::compare_json(names, names, {{runs[0]}, {runs[1]}},
                          {runs[0].results.at("config").at("run").value("seed", int64_t{0})});
  send_json(response, json{{"a", names[0]},
                           {"b", names[1]},
                           {"metric", evaluation.name},
                           {"higher_is_better", evaluation.higher_is_better},
                           {"a_matrix", runs[0].results.at(key)},
                           {"b_matrix", runs[1].results.at(key)},
                           {"difference_b_minus_a",
                            matrix_difference(runs[0].results.at(key), runs[1].results.at(key))},
                           {"statistics", statistics}});
}

}  // namespace

void send_json(httplib::Response& response, const json& body, int status) {
  response.status = status;
  response.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace),
                       "application/json");
}

void send_error(httplib::Response& response, int status, const std::string& message,
                const json& extra) {
  json body = extra;
  body["error"] = message;
  send_json(response, body, status);
}

std::string run_name_of(const httplib::Request& request, httplib::Response& response) {
  std::string name = request.matches.size() > 1 ? request.matches[1].str() : "";
  if (!valid_run_name(name)) {
    send_error(response, 400,
               "'" + name + "' is not a run name (letters, digits, '.', '_', '-'; no path)");
    return "";
  }
  return name;
}

void add_run_routes(httplib::Server& server, ServeContext& context) {
  using Handler = void (*)(ServeContext&, const httplib::Request&, httplib::Response&);
  const auto route = [&](const std::string& pattern, Handler handler) {
    server.Get(pattern,
               [&context, handler](const httplib::Request& request, httplib::Response& response) {
                 handler(context, request, response);
               });
  };
  route("/api/runs", list_runs);
  route(R"(/api/runs/([^/]+))", run_details);
  route(R"(/api/runs/([^/]+)/stream)", run_stream);
  route(R"(/api/runs/([^/]+)/log)", run_log);
  route(R"(/api/runs/([^/]+)/memory)", run_memory);
  route(R"(/api/runs/([^/]+)/report)", run_report);
  route(R"(/api/runs/([^/]+)/compare_page)", comparison_page);
  route("/api/compare", compare_runs);
}

}  // namespace clhost::serve
