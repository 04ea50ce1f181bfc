// Exception types used inside the host. They never cross the plug-in ABI: the CLI catches them
// at its edge and maps each to an exit code (see docs/cli.md).
#pragma once

#include <stdexcept>
#include <string>

namespace clhost {

// Bad configuration (file or --set override). The message starts with "file:line:column:" and
// names the key path. Exit code 2; nothing is written.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A plug-in could not be found, loaded, validated or created. Exit code 3.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Anything that stops a run once it started (data file unreadable, a hook failed). Exit code 1.
class RunError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// SIGINT or SIGTERM stopped the run after a checkpoint. Exit code 128 + signal (130, 143).
class Interrupted : public std::runtime_error {
 public:
  Interrupted(const std::string& message, int signal_number)
      : std::runtime_error(message), signal_number_(signal_number) {}
  [[nodiscard]] int signal_number() const noexcept { return signal_number_; }

 private:
  int signal_number_;
};

}  // namespace clhost
