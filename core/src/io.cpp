#include "io.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "clhost/errors.hpp"

namespace clhost {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw RunError(temporary + ": cannot create: " + std::strerror(errno));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      ::unlink(temporary.c_str());
      throw RunError(temporary + ": write failed: " + std::strerror(saved));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int saved = errno;
    ::unlink(temporary.c_str());
    throw RunError(temporary + ": fsync/close failed: " + std::strerror(saved));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temporary.c_str());
    throw RunError(path + ": rename failed: " + std::strerror(saved));
  }
}

ProcessMemory read_process_memory() {
  // A profiler samples this every few milliseconds, so it stays cheap: statm (kept open, read
  // with pread, which is thread-safe) plus getrusage cost ~2 us, /proc/self/status 12-28 us and
  // more in a large process. getrusage's ru_maxrss is the same counter as VmHWM and follows its
  // reset through clear_refs.
  static const int statm = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  static const int64_t page_bytes = ::sysconf(_SC_PAGESIZE);
  ProcessMemory memory;
  char buffer[256];
  const ssize_t length = statm >= 0 ? ::pread(statm, buffer, sizeof(buffer) - 1, 0) : -1;
  if (length > 0) {
    buffer[length] = '\0';
    char* end = nullptr;
    std::strtoll(buffer, &end, 10);  // total program size, not needed
    memory.rss_bytes = std::strtoll(end, nullptr, 10) * page_bytes;
  }
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) == 0) memory.peak_rss_bytes = usage.ru_maxrss * 1024;
  return memory;
}

bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

}  // namespace clhost
