// Run events to the profiler plug-ins, in order. A mark a plug-in raises while an event is being
// delivered (a profiler's own on_event) waits until that event has reached every profiler.
#pragma once

#include <clhost/clhost_plugin.h>

#include <chrono>
#include <deque>
#include <string>
#include <utility>

namespace clhost {

class PluginSet;
class Runtime;

class EventBus {
 public:
  // Binds the clhost.events/1 service (Runtime::mark) to this bus until the bus goes, so a
  // plug-in's destroy during unwinding cannot reach it afterwards.
  EventBus(PluginSet& plugins, Runtime& runtime, std::string run_dir,
           std::chrono::steady_clock::time_point run_start);
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;
  EventBus(EventBus&&) = delete;
  EventBus& operator=(EventBus&&) = delete;

  // A host event; `task` is the 0-based task index, -1 for run-wide events.
  void emit(clhost_event_kind_t kind, int32_t task, const std::string& label);
  // A plug-in's named event (clhost.events/1), from `source` (its id).
  void mark(const std::string& source, const std::string& label);

 private:
  void deliver(clhost_event_kind_t kind, const std::string& source, const std::string& label);
  void drain(clhost_event_kind_t kind, const std::string& source, const std::string& label);

  PluginSet& plugins_;
  Runtime& runtime_;
  std::string run_dir_;
  std::chrono::steady_clock::time_point run_start_;
  int32_t current_task_ = -1;
  bool delivering_ = false;
  std::deque<std::pair<std::string, std::string>> pending_marks_;  // (source, label)
};

}  // namespace clhost
