#include "event_journal.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

namespace clhost {
namespace {

// Writes all of `line` to `fd`; false with errno set on failure.
bool write_all(int fd, const std::string& line) {
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = ::write(fd, line.data() + written, line.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    written += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

std::string journal_path(const std::string& run_dir) {
  return run_dir + "/" + kEventJournalFile;
}

int64_t process_start_ticks(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 1));
  std::string field;
  for (int index = 3; index <= 22 && (fields >> field); ++index) {
    if (index == 22) return std::stoll(field);
  }
  return 0;
}

void EventJournal::append(nlohmann::json event) {
  if (path_.empty()) return;
  event["t"] =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  // NaN and infinities (a diverged loss) become null: every line stays valid JSON.
  const std::string line =
      event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  const bool ok = fd >= 0 && write_all(fd, line);
  const int saved_errno = errno;
  if (fd >= 0) ::close(fd);
  if (!ok && !reported_failure_) {
    reported_failure_ = true;
    std::fprintf(stderr, "warning: %s: cannot append to the event journal (%s); the run goes on\n",
                 path_.c_str(), std::strerror(saved_errno));
  }
}

}  // namespace clhost
