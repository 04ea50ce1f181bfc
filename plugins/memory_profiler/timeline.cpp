#include "timeline.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace clhost::memory_profiler {

using nlohmann::json;

const char* event_kind_name(clhost_event_kind_t kind) {
  switch (kind) {
    case CLHOST_EVENT_RUN_BEGIN: return "run_begin";
    case CLHOST_EVENT_RUN_END: return "run_end";
    case CLHOST_EVENT_TASK_BEGIN: return "task_begin";
    case CLHOST_EVENT_TASK_END: return "task_end";
    case CLHOST_EVENT_EVAL_BEGIN: return "eval_begin";
    case CLHOST_EVENT_EVAL_END: return "eval_end";
    case CLHOST_EVENT_CONSOLIDATE_BEGIN: return "consolidate_begin";
    case CLHOST_EVENT_CONSOLIDATE_END: return "consolidate_end";
    case CLHOST_EVENT_OUT_OF_MEMORY: return "out_of_memory";
    case CLHOST_EVENT_BATCH_SIZE_CHANGE: return "batch_size_change";
    case CLHOST_EVENT_CHECKPOINT: return "checkpoint";
    case CLHOST_EVENT_USER: return "user";
  }
  return "unknown";
}

clhost_event_kind_t event_kind_from_name(const std::string& name) {
  for (const clhost_event_kind_t kind :
       {CLHOST_EVENT_RUN_BEGIN, CLHOST_EVENT_RUN_END, CLHOST_EVENT_TASK_BEGIN,
        CLHOST_EVENT_TASK_END, CLHOST_EVENT_EVAL_BEGIN, CLHOST_EVENT_EVAL_END,
        CLHOST_EVENT_CONSOLIDATE_BEGIN, CLHOST_EVENT_CONSOLIDATE_END, CLHOST_EVENT_OUT_OF_MEMORY,
        CLHOST_EVENT_BATCH_SIZE_CHANGE, CLHOST_EVENT_CHECKPOINT, CLHOST_EVENT_USER}) {
    if (name == event_kind_name(kind)) return kind;
  }
  throw std::runtime_error("unknown event kind '" + name + "'");
}

void Timeline::add_sample(const Sample& sample) {
  // The sampler thread reads the clock before it takes the lock, so a sample can arrive just
  // after an event's own, later sample: keep time order, and credit the phase it fell in.
  auto position = samples_.end();
  while (position != samples_.begin() && (position - 1)->time_seconds > sample.time_seconds) {
    --position;
  }
  samples_.insert(position, sample);
  auto phase = phases_.rbegin();
  while (phase != phases_.rend() && phase->begin_seconds > sample.time_seconds) ++phase;
  if (phase != phases_.rend()) {
    ++phase->samples;
    phase->rss_sum += static_cast<double>(sample.rss_bytes);
    if (sample.rss_bytes > phase->peak_rss_bytes) {
      phase->peak_rss_bytes = sample.rss_bytes;
      phase->peak_rss_at_seconds = sample.time_seconds;
    }
    phase->peak_tensor_bytes = std::max(phase->peak_tensor_bytes, sample.tensor_bytes);
    phase->peak_device_allocated_bytes =
        std::max(phase->peak_device_allocated_bytes, sample.device_allocated_bytes);
  }
  if (samples_.size() > max_samples_) decimate();
}

void Timeline::decimate() {
  std::vector<Sample> kept;
  kept.reserve(samples_.size() / 2 + 1);
  for (size_t i = 0; i < samples_.size(); i += 2) {
    if (i + 1 == samples_.size()) {
      kept.push_back(samples_[i]);
    } else {
      const Sample& a = samples_[i];
      const Sample& b = samples_[i + 1];
      kept.push_back(a.rss_bytes >= b.rss_bytes ? a : b);
      kept.back().tensor_bytes = std::max(a.tensor_bytes, b.tensor_bytes);
    }
  }
  samples_ = std::move(kept);
  ++decimations_;
}

void Timeline::open_phase(const std::string& kind, const std::string& name, int32_t task,
                          double at) {
  if (!phases_.empty()) phases_.back().end_seconds = at;
  Phase phase;
  phase.kind = kind;
  phase.name = name;
  phase.task_index = task;
  phase.begin_seconds = at;
  phase.end_seconds = at;
  phases_.push_back(std::move(phase));
}

void Timeline::add_event(const EventRecord& event) {
  events_.push_back(event);
  const std::string task = std::to_string(event.task_index + 1);
  switch (event.kind) {
    case CLHOST_EVENT_TASK_BEGIN:
      open_phase("train", "train task " + task, event.task_index, event.time_seconds);
      break;
    case CLHOST_EVENT_CONSOLIDATE_BEGIN:
      open_phase("consolidate", "consolidate task " + task, event.task_index, event.time_seconds);
      break;
    case CLHOST_EVENT_EVAL_BEGIN:
      open_phase("evaluate",
                 event.task_index < 0 ? "evaluate untrained model" : "evaluate after task " + task,
                 event.task_index, event.time_seconds);
      break;
    case CLHOST_EVENT_RUN_BEGIN:
    case CLHOST_EVENT_TASK_END:
    case CLHOST_EVENT_CONSOLIDATE_END:
    case CLHOST_EVENT_EVAL_END:
      open_phase("other", "other", event.task_index, event.time_seconds);
      break;
    default: break;  // point events: no phase change
  }
}

void Timeline::finish(double end_seconds) {
  if (!phases_.empty()) phases_.back().end_seconds = end_seconds;
  // Zero-length "other" stretches between back-to-back events say nothing.
  phases_.erase(std::remove_if(
                    phases_.begin(), phases_.end(),
                    [](const Phase& phase) { return phase.kind == "other" && phase.samples == 0; }),
                phases_.end());
}

const Sample* Timeline::peak_rss_sample() const {
  const auto peak =
      std::max_element(samples_.begin(), samples_.end(),
                       [](const Sample& a, const Sample& b) { return a.rss_bytes < b.rss_bytes; });
  return peak == samples_.end() ? nullptr : &*peak;
}

const Sample* Timeline::peak_tensor_sample() const {
  const auto peak = std::max_element(
      samples_.begin(), samples_.end(),
      [](const Sample& a, const Sample& b) { return a.tensor_bytes < b.tensor_bytes; });
  return peak == samples_.end() || peak->tensor_bytes < 0 ? nullptr : &*peak;
}

namespace {

json phase_json(const Phase& phase) {
  return json{{"kind", phase.kind},
              {"name", phase.name},
              {"task", phase.task_index},
              {"begin_s", phase.begin_seconds},
              {"end_s", phase.end_seconds},
              {"samples", phase.samples},
              {"peak_rss_bytes", phase.peak_rss_bytes},
              {"peak_rss_at_s", phase.peak_rss_at_seconds},
              {"mean_rss_bytes",
               phase.samples > 0 ? phase.rss_sum / static_cast<double>(phase.samples) : 0.0},
              {"peak_tensor_bytes", phase.peak_tensor_bytes},
              {"peak_device_allocated_bytes", phase.peak_device_allocated_bytes}};
}

}  // namespace

json Timeline::summary_json() const {
  json by_kind = json::object();
  for (const Phase& phase : phases_) {
    if (phase.samples == 0) continue;
    json& entry = by_kind[phase.kind];
    if (entry.is_null() || phase.peak_rss_bytes > entry["peak_rss_bytes"].get<int64_t>()) {
      entry["peak_rss_bytes"] = phase.peak_rss_bytes;
      entry["phase"] = phase.name;
    }
    const int64_t tensor_so_far = entry.value("peak_tensor_bytes", int64_t{-1});
    entry["peak_tensor_bytes"] = std::max(tensor_so_far, phase.peak_tensor_bytes);
    entry["seconds"] = entry.value("seconds", 0.0) + (phase.end_seconds - phase.begin_seconds);
  }
  json peak = json::object();
  if (const Sample* top = peak_rss_sample()) {
    peak["rss_bytes"] = top->rss_bytes;
    peak["rss_at_s"] = top->time_seconds;
    for (const Phase& phase : phases_) {
      if (top->time_seconds >= phase.begin_seconds && top->time_seconds <= phase.end_seconds) {
        peak["rss_phase"] = phase.name;
      }
    }
  }
  if (const Sample* top = peak_tensor_sample()) {
    peak["tensor_bytes"] = top->tensor_bytes;
    peak["tensor_at_s"] = top->time_seconds;
  }
  int64_t high_water = 0;
  double rss_sum = 0;
  double tensor_sum = 0;
  for (const Sample& sample : samples_) {
    high_water = std::max(high_water, sample.rss_peak_bytes);
    rss_sum += static_cast<double>(sample.rss_bytes);
    tensor_sum += static_cast<double>(std::max<int64_t>(sample.tensor_bytes, 0));
  }
  peak["rss_high_water_bytes"] = high_water;
  const double count = samples_.empty() ? 1.0 : static_cast<double>(samples_.size());
  return json{{"peak", peak},
              {"mean", {{"rss_bytes", rss_sum / count}, {"tensor_bytes", tensor_sum / count}}},
              {"by_phase_kind", by_kind}};
}

json Timeline::to_json(const json& run_metadata) const {
  json times = json::array();
  json rss = json::array();
  json rss_peak = json::array();
  json tensor = json::array();
  json device_allocated = json::array();
  json device_reserved = json::array();
  bool has_device = false;
  for (const Sample& sample : samples_) {
    times.push_back(sample.time_seconds);
    rss.push_back(sample.rss_bytes);
    rss_peak.push_back(sample.rss_peak_bytes);
    tensor.push_back(sample.tensor_bytes);
    device_allocated.push_back(sample.device_allocated_bytes);
    device_reserved.push_back(sample.device_reserved_bytes);
    has_device = has_device || sample.device_allocated_bytes >= 0;
  }
  json samples{{"t_s", times},
               {"rss_bytes", rss},
               {"rss_high_water_bytes", rss_peak},
               {"tensor_bytes", tensor}};
  if (has_device) {
    samples["device_allocated_bytes"] = device_allocated;
    samples["device_reserved_bytes"] = device_reserved;
  }
  json events = json::array();
  for (const EventRecord& event : events_) {
    events.push_back(json{{"t_s", event.time_seconds},
                          {"kind", event_kind_name(event.kind)},
                          {"task", event.task_index},
                          {"label", event.label},
                          {"source", event.source}});
  }
  json phases = json::array();
  for (const Phase& phase : phases_) phases.push_back(phase_json(phase));
  json profile{{"schema", "clhost.memory_profile/1"},
               {"run", run_metadata},
               {"units", {{"time", "s"}, {"memory", "bytes"}}},
               {"samples", samples},
               {"events", events},
               {"phases", phases}};
  profile.update(summary_json());
  return profile;
}

Timeline Timeline::from_json(const json& profile) {
  auto field = [](const json& object, const char* key) -> const json& {
    if (!object.is_object() || !object.contains(key)) {
      throw std::runtime_error(std::string("memory profile: missing field '") + key + "'");
    }
    return object.at(key);
  };
  if (field(profile, "schema") != "clhost.memory_profile/1") {
    throw std::runtime_error("memory profile: schema is not clhost.memory_profile/1");
  }
  Timeline timeline(std::numeric_limits<size_t>::max());
  const json& samples = field(profile, "samples");
  const json& times = field(samples, "t_s");
  const json& rss = field(samples, "rss_bytes");
  const json& high_water = field(samples, "rss_high_water_bytes");
  const json& tensor = field(samples, "tensor_bytes");
  const bool has_device = samples.contains("device_allocated_bytes");
  for (size_t i = 0; i < times.size(); ++i) {
    Sample sample;
    sample.time_seconds = times.at(i).get<double>();
    sample.rss_bytes = rss.at(i).get<int64_t>();
    sample.rss_peak_bytes = high_water.at(i).get<int64_t>();
    sample.tensor_bytes = tensor.at(i).get<int64_t>();
    if (has_device) {
      sample.device_allocated_bytes = samples.at("device_allocated_bytes").at(i).get<int64_t>();
      sample.device_reserved_bytes = field(samples, "device_reserved_bytes").at(i).get<int64_t>();
    }
    timeline.samples_.push_back(sample);
  }
  for (const json& event : field(profile, "events")) {
    timeline.events_.push_back(
        EventRecord{field(event, "t_s").get<double>(), event_kind_from_name(field(event, "kind")),
                    field(event, "task").get<int32_t>(), field(event, "label").get<std::string>(),
                    field(event, "source").get<std::string>()});
  }
  for (const json& entry : field(profile, "phases")) {
    Phase phase;
    phase.kind = field(entry, "kind").get<std::string>();
    phase.name = field(entry, "name").get<std::string>();
    phase.task_index = field(entry, "task").get<int32_t>();
    phase.begin_seconds = field(entry, "begin_s").get<double>();
    phase.end_seconds = field(entry, "end_s").get<double>();
    phase.samples = field(entry, "samples").get<int64_t>();
    phase.peak_rss_bytes = field(entry, "peak_rss_bytes").get<int64_t>();
    phase.peak_rss_at_seconds = field(entry, "peak_rss_at_s").get<double>();
    phase.rss_sum =
        field(entry, "mean_rss_bytes").get<double>() * static_cast<double>(phase.samples);
    phase.peak_tensor_bytes = field(entry, "peak_tensor_bytes").get<int64_t>();
    phase.peak_device_allocated_bytes = field(entry, "peak_device_allocated_bytes").get<int64_t>();
    timeline.phases_.push_back(std::move(phase));
  }
  return timeline;
}

}  // namespace clhost::memory_profiler
