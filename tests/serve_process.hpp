// `clhost serve` as a child process, for the tests and bench_serve: started on a free loopback
// port (it prints the URL), stopped with SIGTERM when it goes out of scope.
#pragma once

#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace clhost::test {

class ServerProcess {
 public:
  // `binary` serve --port 0 --runs RUNS_DIR --configs SOURCE/configs --plugin-path PLUGINS -q
  ServerProcess(const std::string& runs_dir, std::vector<std::string> extra = {},
                const std::string& binary = CLHOST_BINARY,
                const std::string& source_dir = CLHOST_SOURCE_DIR,
                const std::string& plugin_dir = CLHOST_PLUGIN_DIR) {
    std::vector<std::string> args{binary,          "serve",    "--port",    "0",
                                  "--runs",        runs_dir,   "--configs", source_dir + "/configs",
                                  "--plugin-path", plugin_dir, "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    int out[2];
    if (::pipe(out) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::close(out[0]);
      std::vector<char*> argv;
      for (auto& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    // "open http://HOST:PORT/[?token=T]"
    std::string text;
    char buffer[256];
    while (text.find("open http://") == std::string::npos ||
           text.find('\n', text.find("open http://")) == std::string::npos) {
      const ssize_t n = ::read(out[0], buffer, sizeof(buffer));
      if (n <= 0) break;
      text.append(buffer, static_cast<size_t>(n));
    }
    output_fd_ = out[0];
    const size_t at = text.find("open http://");
    if (at == std::string::npos) {
      std::fprintf(stderr, "clhost serve did not print its URL: %s\n", text.c_str());
      return;
    }
    const std::string url = text.substr(at + 12, text.find('\n', at) - at - 12);
    const size_t colon = url.rfind(':', url.find('/'));
    port_ = std::stoi(url.substr(colon + 1));
    const size_t token = url.find("?token=");
    if (token != std::string::npos) token_ = url.substr(token + 7);
  }
  ~ServerProcess() { stop(); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ServerProcess(ServerProcess&&) = delete;
  ServerProcess& operator=(ServerProcess&&) = delete;

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    ::close(output_fd_);
    pid_ = -1;
  }
  [[nodiscard]] httplib::Client client() const {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(120, 0);
    return client;
  }
  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] const std::string& token() const { return token_; }

 private:
  pid_t pid_ = -1;
  int output_fd_ = -1;
  int port_ = 0;
  std::string token_;
};

}  // namespace clhost::test
