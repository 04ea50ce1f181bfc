// events.jsonl: the run's append-only event journal (docs/outputs.md → "events.jsonl"), what
// `clhost serve` tails to show a run live. One JSON object per line, appended and flushed as it
// happens and never rewritten, so a reader can follow it during the run and a reader started
// later rebuilds everything from it. A resume appends to it (its "run_begin" says from where).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace clhost {

inline constexpr const char* kEventJournalFile = "events.jsonl";
inline constexpr const char* kEventJournalSchema = "clhost.events/1";

// RUN_DIR/events.jsonl.
std::string journal_path(const std::string& run_dir);

class EventJournal {
 public:
  // An empty path writes nothing (the ranks other than 0 of a data-parallel run).
  explicit EventJournal(std::string path) : path_(std::move(path)) {}

  // Appends `event` with "t" (Unix time in seconds) added, in one write(2) on an O_APPEND
  // descriptor, so a reader never sees half a line unless the disk is full. The journal is for
  // watching: a failed write is reported once on stderr and the run goes on.
  void append(nlohmann::json event);

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool reported_failure_ = false;
};

// The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22), 0 when
// it cannot be read. A journal records it beside the pid, so a reader can tell the run's process
// from a later one that got the same pid.
int64_t process_start_ticks(pid_t pid);

}  // namespace clhost
