// Small OS helpers. Internal to the core.
#pragma once

#include <cstdint>
#include <string>

namespace clhost {

// Writes to "<path>.tmp", fsyncs and renames over path, so readers see the old or the new file.
// Throws RunError naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& content);

struct ProcessMemory {
  int64_t rss_bytes = -1;
  int64_t peak_rss_bytes = -1;
};
// Resident set size now and its high-water mark (VmRSS, VmHWM); thread-safe, a few microseconds.
ProcessMemory read_process_memory();
// Resets VmHWM (writes 5 to /proc/self/clear_refs); false when the kernel refuses.
bool reset_peak_rss();

}  // namespace clhost
