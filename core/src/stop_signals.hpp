// SIGINT and SIGTERM during a run: the first asks the run to stop (at the next step, after a
// checkpoint; during start-up, before anything is written); a second ends the process at once.
#pragma once

#include <csignal>
#include <string>

namespace clhost {

// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  StopSignals(StopSignals&&) = delete;
  StopSignals& operator=(StopSignals&&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

// The signal that asked the run to stop, or 0.
int requested_stop_signal();
// "SIGINT" or "SIGTERM".
std::string signal_name(int signal_number);

}  // namespace clhost
