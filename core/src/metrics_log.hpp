// metrics.csv (an append journal a checkpoint can cut back to), the console lines of events, and
// the same rows as "progress" and "batch" events in events.jsonl.
// Numbering: steps count from 1 in every output; an event belongs to the step it happens in or
// comes before. Tasks are 0-based indices in the file, 1-based on the console.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "event_journal.hpp"
#include "io.hpp"

namespace clhost {

class MetricsLog {
 public:
  // keep_bytes < 0: a new file with its header; otherwise the journal cut to what a checkpoint
  // committed.
  MetricsLog(const std::string& path, int64_t keep_bytes, bool quiet, EventJournal& events);

  // Called when a task begins: `steps_done` global steps were completed before its first step.
  void begin_task(int64_t steps_done) { task_first_global_ = steps_done; }
  // A row for a completed step (1-based `step` within the task, `global_step` over the run).
  void step_row(size_t task, int64_t step, int64_t global_step, double loss, double penalty,
                int64_t batch, int64_t micro_batch, double samples_per_second, int64_t peak_bytes);
  // An event row and console line; `steps_done`: global steps completed when it happened;
  // `kind`: "batch_size_change" or "out_of_memory". Returns the event's step within the task.
  int64_t event(size_t task, int64_t steps_done, int64_t batch, int64_t micro_batch,
                const char* kind, const std::string& what);
  // fsyncs; returns the length a checkpoint records.
  int64_t commit() { return journal_.commit(); }

 private:
  AppendJournal journal_;
  EventJournal& events_;
  bool quiet_;
  bool terminal_;
  int64_t task_first_global_ = 0;
};

// "%.{digits}f", as the outputs print numbers.
std::string format_double(double value, int digits);

}  // namespace clhost
