// The memory timeline a profile is made of: samples, events, and the phases the events delimit.
// Not thread-safe by itself; the profiler guards it with one mutex.
#pragma once

#include <clhost/clhost_plugin.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace clhost::memory_profiler {

struct Sample {
  double time_seconds = 0;     // since the run began
  int64_t rss_bytes = 0;       // VmRSS
  int64_t rss_peak_bytes = 0;  // VmHWM (the host resets it at every task start)
  int64_t tensor_bytes = -1;   // LibTorch CPU allocator, -1 unknown
  int64_t device_allocated_bytes = -1;
  int64_t device_reserved_bytes = -1;
};

struct EventRecord {
  double time_seconds = 0;
  clhost_event_kind_t kind = CLHOST_EVENT_USER;
  int32_t task_index = -1;
  std::string label;
  std::string source;
};

// A stretch of the run between two phase-changing events: "train task 2", "consolidate task 2",
// "evaluate after task 2", or "other" (setup, between phases).
struct Phase {
  std::string kind;  // train | consolidate | evaluate | other
  std::string name;
  int32_t task_index = -1;
  double begin_seconds = 0;
  double end_seconds = 0;
  int64_t samples = 0;
  int64_t peak_rss_bytes = 0;
  double peak_rss_at_seconds = 0;
  double rss_sum = 0;  // for the mean
  int64_t peak_tensor_bytes = -1;
  int64_t peak_device_allocated_bytes = -1;
};

const char* event_kind_name(clhost_event_kind_t kind);
// The inverse of event_kind_name; throws std::runtime_error for an unknown name.
clhost_event_kind_t event_kind_from_name(const std::string& name);

class Timeline {
 public:
  // Keeps at most max_samples samples: past that, neighbouring pairs merge into the one with the
  // larger RSS (peaks survive; the time resolution halves).
  explicit Timeline(size_t max_samples) : max_samples_(max_samples) {}

  void add_sample(const Sample& sample);
  // Records the event and, for phase-changing kinds, closes the current phase and opens the next.
  void add_event(const EventRecord& event);
  void finish(double end_seconds);

  [[nodiscard]] const std::vector<Sample>& samples() const { return samples_; }
  [[nodiscard]] const std::vector<EventRecord>& events() const { return events_; }
  [[nodiscard]] const std::vector<Phase>& phases() const { return phases_; }
  [[nodiscard]] int decimations() const { return decimations_; }
  // The sample with the highest RSS; nullptr when there is none.
  [[nodiscard]] const Sample* peak_rss_sample() const;
  [[nodiscard]] const Sample* peak_tensor_sample() const;

  // Peak/mean summary: overall, per phase kind, and the phase of the peak.
  [[nodiscard]] nlohmann::json summary_json() const;
  // The whole profile (schema "clhost.memory_profile/1", see docs/outputs.md).
  [[nodiscard]] nlohmann::json to_json(const nlohmann::json& run_metadata) const;
  // Reads a profile written by to_json back (for reports and comparisons); throws
  // std::runtime_error naming the first field that is missing or malformed.
  static Timeline from_json(const nlohmann::json& profile);

 private:
  void open_phase(const std::string& kind, const std::string& name, int32_t task, double at);
  void decimate();

  size_t max_samples_;
  std::vector<Sample> samples_;
  std::vector<EventRecord> events_;
  std::vector<Phase> phases_;
  int decimations_ = 0;
};

}  // namespace clhost::memory_profiler
