#include "stop_signals.hpp"

#include <atomic>

namespace clhost {
namespace {

std::atomic<int> stop_signal{0};

extern "C" void request_stop(int signal_number) {
  stop_signal.store(signal_number);
  // A second Ctrl-C is not polite: it ends the process at once.
  std::signal(signal_number, SIG_DFL);
}

}  // namespace

StopSignals::StopSignals() {
  stop_signal.store(0);
  struct sigaction action {};
  action.sa_handler = &request_stop;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
}

int requested_stop_signal() {
  return stop_signal.load();
}

std::string signal_name(int signal_number) {
  return signal_number == SIGINT ? "SIGINT" : "SIGTERM";
}

}  // namespace clhost
