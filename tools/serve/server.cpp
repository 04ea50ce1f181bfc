#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "access.hpp"
#include "files.hpp"
#include "processes.hpp"
#include "serve_context.hpp"
#include "web_assets.hpp"

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Where Debian's libjs-chart.js puts Chart.js (the page's charts).
constexpr const char* kChartJs = "/usr/share/javascript/chart.js/chart.min.js";

// Handlers run on a pool; each live run page holds one worker for its stream.
constexpr size_t kWorkersBesideStreams = 8;

std::string content_type_of(const std::string& file) {
  if (file.size() > 5 && file.substr(file.size() - 5) == ".html") return "text/html; charset=utf-8";
  if (file.size() > 3 && file.substr(file.size() - 3) == ".js") return "text/javascript";
  if (file.size() > 4 && file.substr(file.size() - 4) == ".css") return "text/css";
  return "application/octet-stream";
}

void add_static_routes(httplib::Server& server, const AccessPolicy& policy) {
  for (const WebAsset& asset : kWebAssets) {
    const std::string file = asset.file;
    const std::string route = file == "index.html" ? "/" : "/" + file;
    const std::string type = content_type_of(file);
    const char* text = asset.text;
    server.Get(route,
               [&policy, type, text](const httplib::Request& request, httplib::Response& response) {
                 response.set_content(text, type);
                 response.set_header("Cache-Control", "no-cache");
                 // Opened with ?token=: the page's own requests then carry it as a cookie.
                 if (!policy.token().empty() && request.has_param("token")) {
                   response.set_header("Set-Cookie", "clhost_token=" + policy.token() +
                                                         "; Path=/; HttpOnly; SameSite=Strict");
                 }
               });
  }
  // Browsers ask for it on every page (the report's too); there is none.
  server.Get("/favicon.ico",
             [](const httplib::Request&, httplib::Response& response) { response.status = 204; });
  const std::string chart = read_text(kChartJs);
  if (chart.empty()) {
    std::fprintf(stderr,
                 "warning: %s not found (Debian package libjs-chart.js): the run pages show no "
                 "curves\n",
                 kChartJs);
  }
  server.Get("/vendor/chart.js", [chart](const httplib::Request&, httplib::Response& response) {
    if (chart.empty()) {
      send_error(response, 404, std::string(kChartJs) + " is not installed (libjs-chart.js)");
      return;
    }
    response.set_content(chart, "text/javascript");
    response.set_header("Cache-Control", "max-age=86400");
  });
}

void configure(httplib::Server& server, const ServeContext& context, const AccessPolicy& policy) {
  const size_t workers = context.options.max_streams + kWorkersBesideStreams;
  server.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  server.set_payload_max_length(context.options.max_request_bytes);
  // SO_REUSEADDR (restart at once) but not httplib's default SO_REUSEPORT, with which a second
  // server would silently share the port and take half the requests.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.set_default_headers({{"X-Content-Type-Options", "nosniff"},
                              {"X-Frame-Options", "SAMEORIGIN"},
                              {"Referrer-Policy", "no-referrer"}});
  server.set_pre_routing_handler(
      [&policy](const httplib::Request& request, httplib::Response& response) {
        const auto refusal = policy.check(request);
        if (!refusal) return httplib::Server::HandlerResponse::Unhandled;
        send_error(response, refusal->status, refusal->message);
        return httplib::Server::HandlerResponse::Handled;
      });
  server.set_exception_handler([](const httplib::Request& /*request*/, httplib::Response& response,
                                  const std::exception_ptr& error) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {  // NOLINT(bugprone-empty-catch): the generic message stands
    }
    send_error(response, 500, message);
  });
  server.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    if (response.status == 413) {
      send_error(response, 413, "request too large (limit: clhost serve --max-request-bytes)");
    } else if (response.status == 404) {
      send_error(response, 404, "no such page: " + request.path);
    }
  });
  if (!context.options.quiet) {
    server.set_logger([](const httplib::Request& request, const httplib::Response& response) {
      if (request.path.rfind("/api/", 0) == 0 || response.status >= 400) {
        std::fprintf(stderr, "%s %s -> %d\n", request.method.c_str(), request.path.c_str(),
                     response.status);
      }
    });
  }
}

fs::path absolute_directory(const std::string& dir, const char* option, bool create) {
  std::error_code error;
  if (create) fs::create_directories(dir, error);
  if (!fs::is_directory(dir)) {
    throw std::runtime_error(std::string(option) + " " + dir + ": not a directory");
  }
  return fs::canonical(dir);
}

// SIGINT/SIGTERM stop the server (not the runs it started: they are in their own sessions).
void stop_on_signals(httplib::Server& server, ServeContext& context) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  std::thread([signals, &server, &context] {
    int received = 0;
    sigwait(&signals, &received);
    context.stopping = true;
    server.stop();
  }).detach();
}

}  // namespace

int run_server(ServeOptions options) {
  if (!is_loopback_host(options.host) && options.token.empty()) {
    options.token = random_token();
  }
  // Blocked here, before any thread starts, so every thread inherits it and sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::vector<std::string> plugin_path;
  for (const auto& dir : options.plugin_path)
    plugin_path.push_back(absolute_directory(dir, "--plugin-path", false).string());
  fs::path configs;
  if (!options.configs_dir.empty()) {
    configs = absolute_directory(options.configs_dir, "--configs", false);
  } else if (fs::is_directory("configs")) {
    configs = fs::canonical("configs");
  } else {
    std::fprintf(stderr,
                 "note: no configs/ directory here: the launch form offers none (paste a config, "
                 "or pass --configs DIR)\n");
  }
  ServeContext context(options, absolute_directory(options.runs_dir, "--runs", true), configs,
                       plugin_path, self_executable());
  AccessPolicy policy(options.host, options.port, options.token);
  httplib::Server server;
  configure(server, context, policy);
  add_static_routes(server, policy);
  add_run_routes(server, context);
  add_launch_routes(server, context);

  int port = options.port;
  if (port == 0) {
    port = server.bind_to_any_port(options.host);
  } else if (!server.bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port < 0) {
    throw std::runtime_error("cannot listen on " + options.host + ":" +
                             std::to_string(options.port) +
                             " (in use? pick another with --port, or --port 0 for any)");
  }
  policy.set_port(port);
  const std::string shown_host =
      options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
  std::printf("clhost serve: runs in %s, configs in %s\n", context.runs_dir.c_str(),
              context.configs_dir.empty() ? "(none)" : context.configs_dir.c_str());
  std::printf("open http://%s:%d/%s\n", shown_host.c_str(), port,
              options.token.empty() ? "" : ("?token=" + options.token).c_str());
  std::fflush(stdout);
  stop_on_signals(server, context);
  server.listen_after_bind();
  std::printf("clhost serve: stopped (runs it started go on)\n");
  return 0;
}

}  // namespace clhost::serve
