#include "event_bus.hpp"

#include "host_services.hpp"
#include "plugin_set.hpp"

namespace clhost {

EventBus::EventBus(PluginSet& plugins, Runtime& runtime, std::string run_dir,
                   std::chrono::steady_clock::time_point run_start)
    : plugins_(plugins), runtime_(runtime), run_dir_(std::move(run_dir)), run_start_(run_start) {
  runtime_.mark = [this](const std::string& source, const std::string& label) {
    mark(source, label);
  };
}

EventBus::~EventBus() {
  runtime_.mark = nullptr;
}

void EventBus::emit(clhost_event_kind_t kind, int32_t task, const std::string& label) {
  current_task_ = task;
  drain(kind, "clhost", label);
}

void EventBus::mark(const std::string& source, const std::string& label) {
  if (delivering_) {
    pending_marks_.emplace_back(source, label);
  } else {
    drain(CLHOST_EVENT_USER, source, label);
  }
}

void EventBus::deliver(clhost_event_kind_t kind, const std::string& source,
                       const std::string& label) {
  const bool run_wide = kind == CLHOST_EVENT_RUN_BEGIN || kind == CLHOST_EVENT_RUN_END;
  const clhost_event_t event{
      sizeof(clhost_event_t),
      kind,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start_).count(),
      run_wide ? -1 : current_task_,
      label.c_str(),
      run_dir_.c_str(),
      source.c_str()};
  plugins_.on_event(event);
}

void EventBus::drain(clhost_event_kind_t kind, const std::string& source,
                     const std::string& label) {
  delivering_ = true;
  try {
    deliver(kind, source, label);
    while (!pending_marks_.empty()) {
      const auto [mark_source, mark_label] = pending_marks_.front();
      pending_marks_.pop_front();
      deliver(CLHOST_EVENT_USER, mark_source, mark_label);
    }
  } catch (...) {
    delivering_ = false;
    pending_marks_.clear();
    throw;
  }
  delivering_ = false;
}

}  // namespace clhost
