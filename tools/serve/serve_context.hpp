// What the request handlers of `clhost serve` share, and their JSON replies.
#pragma once

#include <atomic>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "run_index.hpp"
#include "serve.hpp"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace clhost::serve {

struct ServeContext {
  ServeContext(const ServeOptions& given, std::filesystem::path runs, std::filesystem::path configs,
               std::vector<std::string> plugins, std::string executable_path)
      : options(given),
        runs_dir(std::move(runs)),
        configs_dir(std::move(configs)),
        plugin_path(std::move(plugins)),
        executable(std::move(executable_path)),
        index(runs_dir) {}

  ServeOptions options;
  std::filesystem::path runs_dir;        // absolute
  std::filesystem::path configs_dir;     // absolute
  std::vector<std::string> plugin_path;  // absolute; passed to every launched run
  std::string executable;                // this clhost, for the runs it starts
  RunIndex index;
  std::atomic<size_t> streams{0};
  std::atomic<bool> stopping{false};
  std::mutex launch_mutex;  // launches and resumes check, then claim, a run name one at a time
};

void send_json(httplib::Response& response, const nlohmann::json& body, int status = 200);
// {"error": message} plus `extra`'s keys.
void send_error(httplib::Response& response, int status, const std::string& message,
                const nlohmann::json& extra = nlohmann::json::object());
// The run name in the request's first path capture, checked; on a bad name the reply is sent
// and the result is empty.
std::string run_name_of(const httplib::Request& request, httplib::Response& response);

// GET /api/runs, /api/runs/NAME, its stream, log, memory profile, report; GET /api/compare.
void add_run_routes(httplib::Server& server, ServeContext& context);
// GET /api/configs, /api/plugins; POST /api/validate, /api/launch, /api/runs/NAME/stop|resume.
void add_launch_routes(httplib::Server& server, ServeContext& context);

}  // namespace clhost::serve
