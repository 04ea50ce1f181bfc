// The plug-ins of a run, created: each instance with its host table and resolved configuration.
#pragma once

#include <clhost/clhost_plugin.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "host_services.hpp"
#include "training_checkpoint.hpp"

namespace clhost {

// One created plug-in; destroys its instance when it goes (the library stays loaded).
struct PluginInstance {
  const LoadedPlugin* plugin = nullptr;
  ResolvedPluginConfig config;
  PluginContext context;
  clhost_host_t host{};
  void* instance = nullptr;

  PluginInstance() = default;
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;
  PluginInstance(PluginInstance&&) = delete;
  PluginInstance& operator=(PluginInstance&&) = delete;
  ~PluginInstance() {
    if (instance != nullptr) plugin->entry->destroy(instance);
  }
  [[nodiscard]] clhost_plugin_kind_t kind() const { return plugin->descriptor->kind; }
  template <class Table>
  [[nodiscard]] const Table& table() const {
    return *static_cast<const Table*>(plugin->interface);
  }
  // Turns a non-OK status into a RunError naming the plug-in and hook.
  void check(clhost_status_t status, const clhost_error_t& error, const char* hook) const {
    if (status != CLHOST_STATUS_OK) {
      throw RunError("plug-in '" + plugin->id + "' failed in " + hook + " (status " +
                     std::to_string(status) + "): " + error.message);
    }
  }
};

// The inverse of what a checkpoint keeps for a plug-in the host holds data for (its snapshot, its
// replay buffer), checked against this run's model: a snapshot of another model or a buffer whose
// parts disagree is refused with a RunError naming `file`.
void restore_held(PluginContext& context, const std::string& bytes, const std::string& file);

// The created plug-ins of a run, in pipeline order, with one typed dispatch per hook.
class PluginSet {
 public:
  // Creates every plug-in of `pipeline` (moving its resolved configurations) on `runtime`.
  // Throws PluginError naming the pipeline entry when a plug-in refuses to start.
  PluginSet(LoadedPipeline& pipeline, const RunConfig& config, Runtime& runtime, bool quiet);

  [[nodiscard]] size_t size() const { return instances_.size(); }
  [[nodiscard]] PluginInstance& at(size_t index) { return *instances_.at(index); }
  // The batch policy (load_pipeline allows one at most), or null.
  [[nodiscard]] PluginInstance* batch_policy() const { return batch_policy_; }
  // The replay plug-in (one at most), or null.
  [[nodiscard]] PluginInstance* replay() const { return replay_; }

  // Regularizer hooks, in pipeline order.
  void task_begin(const clhost_task_info_t& task);
  void task_end(const clhost_task_info_t& task);
  // Sum of the regularizers' penalties; `non_finite` names the first that is NaN or infinite.
  double after_backward(const clhost_step_info_t& step, std::string& non_finite);
  // Profiler hook.
  void on_event(const clhost_event_t& event);

  // Checkpoints: one file per plug-in with clhost.state/1 and one per plug-in for which the host
  // holds a snapshot or a replay buffer (added to `files`), and the list trainer.json keeps
  // ({id, version, resumable, file, held}).
  nlohmann::json add_state_files(std::vector<CheckpointFile>& files);
  // Gives each plug-in its saved state when it has one (others were accepted to restart).
  void restore_states(const nlohmann::json& saved_plugins, const LoadedCheckpoint& checkpoint);
  // results.json's plugins[]: id, kind, version, path, config, not_in_effect, variant, report.
  [[nodiscard]] nlohmann::json reports(const LoadedPipeline& pipeline) const;

 private:
  template <class Table, class Call>
  void for_each(clhost_plugin_kind_t kind, Call&& call);

  std::vector<std::unique_ptr<PluginInstance>> instances_;
  PluginInstance* batch_policy_ = nullptr;
  PluginInstance* replay_ = nullptr;
};

}  // namespace clhost
