#include "launch.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace clhost::tools {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> received_signal{0};

extern "C" void remember_signal(int signal_number) {
  received_signal.store(signal_number);
}

// A port the kernel says is free now (rank 0 binds it a moment later, as torchrun's does).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("--nproc: cannot open a socket to find a free port");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("--nproc: cannot find a free port on 127.0.0.1");
  return ntohs(address.sin_port);
}

pid_t start_rank(int rank, int nproc, int port, const std::vector<std::string>& run_args) {
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) throw std::runtime_error("--nproc: fork failed: " + std::string(strerror(errno)));
  if (child > 0) return child;
  // A rank never outlives its launcher, even when the launcher is killed with SIGKILL.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  // Out of the terminal's process group: Ctrl-C reaches the launcher alone, which passes it on
  // once (a rank takes a second SIGINT as "stop now, without a checkpoint").
  ::setpgid(0, 0);
  const std::string rank_text = std::to_string(rank);
  const std::string world = std::to_string(nproc);
  ::setenv("RANK", rank_text.c_str(), 1);
  ::setenv("LOCAL_RANK", rank_text.c_str(), 1);
  ::setenv("WORLD_SIZE", world.c_str(), 1);
  ::setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  std::vector<std::string> words{"clhost", "run"};
  words.insert(words.end(), run_args.begin(), run_args.end());
  std::vector<char*> argv;
  argv.reserve(words.size() + 1);
  for (auto& word : words) argv.push_back(word.data());
  argv.push_back(nullptr);
  ::execv("/proc/self/exe", argv.data());
  std::perror("clhost run --nproc: execv");
  ::_exit(127);
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "exited with code " + std::to_string(WEXITSTATUS(status));
}

int exit_code(int status) {
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

// The launcher's own SIGINT/SIGTERM handlers for as long as the ranks run.
class ForwardSignals {
 public:
  ForwardSignals() {
    received_signal.store(0);
    struct sigaction action {};
    action.sa_handler = &remember_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~ForwardSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  ForwardSignals(const ForwardSignals&) = delete;
  ForwardSignals& operator=(const ForwardSignals&) = delete;
  ForwardSignals(ForwardSignals&&) = delete;
  ForwardSignals& operator=(ForwardSignals&&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

// The ranks while they run: who is alive, how each ended, and the first failure.
struct Ranks {
  std::vector<pid_t> pids;
  std::vector<int> status;  // waitpid status; -1: running
  int first_failure = -1;
  int interrupted_by = 0;

  [[nodiscard]] bool any_running() const {
    return std::any_of(status.begin(), status.end(), [](int value) { return value == -1; });
  }
  void signal_running(int signal_number) const {
    for (size_t r = 0; r < pids.size(); ++r) {
      if (status[r] == -1) ::kill(pids[r], signal_number);
    }
  }
  // Records one rank that ended; false when none had.
  bool reap() {
    int value = 0;
    const pid_t pid = ::waitpid(-1, &value, WNOHANG);
    if (pid <= 0) return false;
    for (size_t r = 0; r < pids.size(); ++r) {
      if (pids[r] != pid) continue;
      status[r] = value;
      const bool stopped_as_asked = interrupted_by != 0 && exit_code(value) == 128 + interrupted_by;
      if (exit_code(value) != 0 && !stopped_as_asked && first_failure < 0) {
        first_failure = static_cast<int>(r);
      }
    }
    return true;
  }
};

// Waits for every rank. After the first failure the others get `grace_seconds` to stop by
// themselves (a collective with a dead peer fails at once), then SIGTERM, then SIGKILL.
void supervise(Ranks& ranks, double grace_seconds) {
  const auto grace = std::chrono::duration<double>(grace_seconds);
  Clock::time_point failed_at{};
  int escalation = 0;  // 0: waiting, 1: SIGTERM sent, 2: SIGKILL sent
  while (ranks.any_running()) {
    if (const int signal_number = received_signal.exchange(0); signal_number != 0) {
      ranks.interrupted_by = signal_number;
      ranks.signal_running(signal_number);
    }
    const bool had_failed = ranks.first_failure >= 0;
    if (ranks.reap()) {
      if (!had_failed && ranks.first_failure >= 0) failed_at = Clock::now();
      continue;
    }
    if (ranks.first_failure >= 0 && escalation < 2 &&
        Clock::now() - failed_at > grace * (escalation + 1)) {
      ranks.signal_running(escalation == 0 ? SIGTERM : SIGKILL);
      ++escalation;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

int run_local_ranks(int nproc, const std::vector<std::string>& run_args, double grace_seconds) {
  const ForwardSignals forward;
  Ranks ranks;
  const int port = free_port();
  for (int rank = 0; rank < nproc; ++rank) {
    ranks.pids.push_back(start_rank(rank, nproc, port, run_args));
    ranks.status.push_back(-1);
  }
  supervise(ranks, grace_seconds);
  if (ranks.first_failure >= 0) {
    const auto failed = static_cast<size_t>(ranks.first_failure);
    std::string others;
    for (size_t r = 0; r < ranks.pids.size(); ++r) {
      if (r != failed) others += "; rank " + std::to_string(r) + " " + describe(ranks.status[r]);
    }
    std::fprintf(stderr, "clhost run --nproc %d: rank %d %s (first to fail)%s\n", nproc,
                 ranks.first_failure, describe(ranks.status[failed]).c_str(), others.c_str());
    return exit_code(ranks.status[failed]);
  }
  if (ranks.interrupted_by != 0) return 128 + ranks.interrupted_by;
  for (const int value : ranks.status) {
    if (exit_code(value) != 0) return exit_code(value);
  }
  return 0;
}

}  // namespace clhost::tools
