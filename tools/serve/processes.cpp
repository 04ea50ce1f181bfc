#include "processes.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace clhost::serve {
namespace {

// argv as execv wants it; built before fork (nothing may allocate between fork and exec).
std::vector<char*> exec_arguments(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  out.reserve(argv.size() + 1);
  for (const auto& argument : argv) out.push_back(const_cast<char*>(argument.c_str()));
  out.push_back(nullptr);
  return out;
}

std::runtime_error start_error(const std::string& what, int error_number) {
  return std::runtime_error(what + ": " + std::strerror(error_number));
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Reads exactly `size` bytes unless the pipe closes first; returns the count read.
size_t read_full(int fd, void* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, static_cast<char*>(data) + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

std::string self_executable() {
  std::error_code error;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) throw std::runtime_error("cannot find this executable: " + error.message());
  return path.string();
}

CapturedProcess run_captured(const std::vector<std::string>& argv, double timeout_seconds,
                             size_t max_output) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw start_error("pipe", errno);
  std::vector<char*> args = exec_arguments(argv);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int error_number = errno;
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    throw start_error("fork", error_number);
  }
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(pipe_fds[1], STDOUT_FILENO);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  CapturedProcess result;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds));
  char buffer[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd poll_fd{pipe_fds[0], POLLIN, 0};
    if (::poll(&poll_fd, 1, static_cast<int>(left)) < 0 && errno != EINTR) break;
    if (poll_fd.revents == 0) continue;
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // every writer closed: the process ended (or closed its output)
    if (result.output.size() < max_output) {
      result.output.append(buffer,
                           std::min(static_cast<size_t>(n), max_output - result.output.size()));
    }
  }
  ::close(pipe_fds[0]);
  result.exit_code = wait_exit_code(pid);
  return result;
}

pid_t start_detached(const std::vector<std::string>& argv, const std::filesystem::path& log) {
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw start_error(log.string(), errno);
  // The intermediate child reports the run's pid, then the run reports an exec failure (or
  // nothing: the close-on-exec pipe closes when exec succeeds).
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) {
    const int error_number = errno;
    ::close(log_fd);
    throw start_error("pipe", error_number);
  }
  std::vector<char*> args = exec_arguments(argv);
  const pid_t child = ::fork();
  if (child < 0) {
    const int error_number = errno;
    ::close(log_fd);
    ::close(report[0]);
    ::close(report[1]);
    throw start_error("fork", error_number);
  }
  if (child == 0) {
    ::setsid();  // no controlling terminal: a Ctrl-C at the server's terminal does not reach it
    const pid_t run = ::fork();
    if (run == 0) {
      const int null_fd = ::open("/dev/null", O_RDONLY);
      ::dup2(null_fd, STDIN_FILENO);
      ::dup2(log_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      // The server may have blocked or ignored signals; the run handles SIGINT/SIGTERM itself.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::signal(SIGPIPE, SIG_DFL);
      ::execv(args[0], args.data());
      const int error_number = errno;
      (void)!::write(report[1], &error_number, sizeof(error_number));
      ::_exit(127);
    }
    (void)!::write(report[1], &run, sizeof(run));
    ::_exit(run < 0 ? 1 : 0);
  }
  ::close(report[1]);
  ::close(log_fd);
  wait_exit_code(child);
  pid_t run = -1;
  int exec_error = 0;
  const bool got_pid = read_full(report[0], &run, sizeof(run)) == sizeof(run) && run > 0;
  const bool exec_failed =
      got_pid && read_full(report[0], &exec_error, sizeof(exec_error)) == sizeof(exec_error);
  ::close(report[0]);
  if (!got_pid) throw std::runtime_error("cannot start " + argv[0] + ": fork failed");
  if (exec_failed) throw start_error("cannot start " + argv[0], exec_error);
  return run;
}

}  // namespace clhost::serve
