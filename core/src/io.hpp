// Small OS helpers. Internal to the core.
#pragma once

#include <cstdint>
#include <string>

namespace clhost {

// Writes to "<path>.tmp", fsyncs and renames over path, so readers see the old or the new file.
// Throws RunError naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& content);
// "path: what: strerror", plus what to do when the disk is full (ENOSPC, EDQUOT).
std::string failure(const std::string& path, const char* what, int error_number);

// Writes path itself and fsyncs it (for files inside a directory that is renamed afterwards).
// A full disk's RunError says so.
void write_file_synced(const std::string& path, const std::string& content);

// A file that only grows, with a committed length: after a crash, what lies past the length the
// last checkpoint committed is cut off when the run resumes (metrics.csv).
class AppendJournal {
 public:
  // keep_bytes < 0: a new, empty file; otherwise the existing file cut to keep_bytes.
  AppendJournal(std::string path, int64_t keep_bytes);
  ~AppendJournal();
  AppendJournal(const AppendJournal&) = delete;
  AppendJournal& operator=(const AppendJournal&) = delete;
  AppendJournal(AppendJournal&&) = delete;
  AppendJournal& operator=(AppendJournal&&) = delete;
  void append(const std::string& text);
  // fsyncs and returns the length that a checkpoint may record.
  int64_t commit();

 private:
  std::string path_;
  int fd_ = -1;
  int64_t size_ = 0;
};

struct ProcessMemory {
  int64_t rss_bytes = -1;
  int64_t peak_rss_bytes = -1;
};
// Resident set size now and its high-water mark (VmRSS, VmHWM); thread-safe, a few microseconds.
ProcessMemory read_process_memory();
// Resets VmHWM (writes 5 to /proc/self/clear_refs); false when the kernel refuses.
bool reset_peak_rss();

}  // namespace clhost
