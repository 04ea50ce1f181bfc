#include "io.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

#include "clhost/errors.hpp"

namespace clhost {

std::string failure(const std::string& path, const char* what, int error_number) {
  std::string message = path + ": " + what + ": " + std::strerror(error_number);
  if (error_number == ENOSPC || error_number == EDQUOT) {
    message += " (the disk is full: free space, then resume the run)";
  }
  return message;
}

void write_file_synced(const std::string& path, const std::string& content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw RunError(failure(path, "cannot create", errno));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      ::unlink(path.c_str());
      throw RunError(failure(path, "write failed", saved));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int saved = errno;
    ::close(fd);
    ::unlink(path.c_str());
    throw RunError(failure(path, "fsync failed", saved));
  }
  if (::close(fd) != 0) {
    const int saved = errno;
    ::unlink(path.c_str());
    throw RunError(failure(path, "close failed", saved));
  }
}

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string temporary = path + ".tmp";
  write_file_synced(temporary, content);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temporary.c_str());
    throw RunError(failure(path, "rename failed", saved));
  }
}

AppendJournal::AppendJournal(std::string path, int64_t keep_bytes) : path_(std::move(path)) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (keep_bytes < 0 ? O_TRUNC : 0);
  fd_ = ::open(path_.c_str(), flags, 0644);
  if (fd_ < 0) throw RunError(failure(path_, "cannot open", errno));
  if (keep_bytes >= 0) {
    const off_t size = ::lseek(fd_, 0, SEEK_END);
    if (size < keep_bytes) {
      ::close(fd_);
      fd_ = -1;
      throw RunError(path_ + ": " + std::to_string(size) + " bytes, shorter than the " +
                     std::to_string(keep_bytes) + " bytes the checkpoint committed");
    }
    // What was appended after the last commit belongs to steps that will be redone.
    if (::ftruncate(fd_, keep_bytes) != 0) {
      const int saved = errno;
      ::close(fd_);
      fd_ = -1;
      throw RunError(failure(path_, "cannot truncate to the committed length", saved));
    }
  }
  size_ = keep_bytes < 0 ? 0 : keep_bytes;
  if (::lseek(fd_, size_, SEEK_SET) < 0) throw RunError(failure(path_, "seek failed", errno));
}

AppendJournal::~AppendJournal() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendJournal::append(const std::string& text) {
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + written, text.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw RunError(failure(path_, "append failed", errno));
    }
    written += static_cast<size_t>(n);
  }
  size_ += static_cast<int64_t>(text.size());
}

int64_t AppendJournal::commit() {
  if (::fsync(fd_) != 0) throw RunError(failure(path_, "fsync failed", errno));
  return size_;
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
