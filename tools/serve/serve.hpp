// `clhost serve`: the web UI to launch, watch, stop, resume and compare runs (docs/web-ui.md).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace clhost::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (printed)
  // Required off loopback; generated (and printed in the URL) when not given there.
  std::string token;
  std::string runs_dir = "runs";
  std::string configs_dir;  // empty: ./configs when there is one, else none (paste a config)
  std::vector<std::string> plugin_path;  // the only plug-in directories a launch may use
  size_t max_streams = 32;               // live run pages at once
  size_t max_request_bytes = 1 << 20;
  bool quiet = false;  // no request log
};

// Serves until SIGINT or SIGTERM; returns the exit code. Throws std::runtime_error when the
// address cannot be bound or the options are unusable (a non-loopback host without a token is
// given one instead).
int run_server(ServeOptions options);

}  // namespace clhost::serve
