// The processes `clhost serve` starts: `clhost validate` (waited for, output captured) and
// `clhost run` / `clhost compare` (detached: a session of their own that outlives the server).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace clhost::serve {

struct CapturedProcess {
  int exit_code = -1;  // 128 + signal when killed
  bool timed_out = false;
  std::string output;  // stdout and stderr interleaved, at most `max_output` bytes
};

// Runs `argv` (argv[0] a path) to its end or `timeout_seconds`, then kills it. Throws
// std::runtime_error when it cannot be started.
CapturedProcess run_captured(const std::vector<std::string>& argv, double timeout_seconds,
                             size_t max_output = 1 << 20);

// Starts `argv` in a new session, not a child of the server (it is reparented to init), with
// stdin from /dev/null and stdout/stderr appended to `log`; stopping or restarting the server
// leaves it running. Returns its pid; throws std::runtime_error naming the cause when it
// cannot be started (exec failed included).
pid_t start_detached(const std::vector<std::string>& argv, const std::filesystem::path& log);

// This executable (/proc/self/exe), to start `clhost run` of the same build.
std::string self_executable();

}  // namespace clhost::serve
