// Finds, loads and checks plug-ins (Boost.DLL). A plug-in with id X is the file clhost_X.so in
// the first search directory that has it. Loaded libraries are never unloaded: a plug-in that
// touched LibTorch must not be dlclose'd before exit.
#pragma once

#include <clhost/clhost_plugin.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost {

struct LoadedPlugin {
  std::string id;
  std::string path;  // absolute
  const clhost_plugin_entry_t* entry = nullptr;
  const clhost_plugin_descriptor_t* descriptor = nullptr;
  const void* interface = nullptr;  // the table of the descriptor's kind
};

// A plug-in's validated configuration in the ABI's form; owns the strings it points to.
class ResolvedPluginConfig {
 public:
  ResolvedPluginConfig() = default;
  ~ResolvedPluginConfig() = default;
  ResolvedPluginConfig(const ResolvedPluginConfig&) = delete;
  ResolvedPluginConfig& operator=(const ResolvedPluginConfig&) = delete;
  ResolvedPluginConfig(ResolvedPluginConfig&&) = default;
  ResolvedPluginConfig& operator=(ResolvedPluginConfig&&) = default;

  [[nodiscard]] const clhost_config_t* abi() const { return &config_; }
  [[nodiscard]] const std::vector<clhost_config_value_t>& values() const { return values_; }

 private:
  friend ResolvedPluginConfig resolve_plugin_config(const LoadedPlugin& plugin,
                                                    const PluginSpec& spec, size_t pipeline_index);
  std::vector<std::unique_ptr<std::string>> strings_;
  std::vector<clhost_config_value_t> values_;
  clhost_config_t config_{sizeof(clhost_config_t), nullptr, 0};
};

// Checks spec's settings against the plug-in's schema (unknown key, type, range, choices) and
// fills defaults. Throws ConfigError naming "file:line:column: pipeline[i] (id).key: reason".
ResolvedPluginConfig resolve_plugin_config(const LoadedPlugin& plugin, const PluginSpec& spec,
                                           size_t pipeline_index);

const char* kind_name(clhost_plugin_kind_t kind);
const char* kind_interface_id(clhost_plugin_kind_t kind);
const char* config_type_name(clhost_config_type_t type);

class PluginLoader {
 public:
  explicit PluginLoader(std::vector<std::string> search_path);

  // Search order: --plugin-path, then $CLHOST_PLUGIN_PATH (':'-separated), then the config's
  // run.plugin_path, then the directories next to the executable (build tree and install tree).
  static std::vector<std::string> search_path_for(const std::vector<std::string>& cli,
                                                  const std::vector<std::string>& config);

  // Throws PluginError with the reason (not found: what was found and where it looked).
  const LoadedPlugin& load(const std::string& id);
  // Loads a given file (used by load and by listing).
  const LoadedPlugin& load_file(const std::string& path, const std::string& expected_id);

  struct Candidate {
    std::string id;
    std::string path;
    const LoadedPlugin* plugin = nullptr;  // null when it failed to load
    std::string error;
    bool shadowed = false;  // an earlier directory has the same id
  };
  // Every clhost_*.so in the search path, each loaded and checked.
  std::vector<Candidate> discover();

  [[nodiscard]] const std::vector<std::string>& search_path() const { return search_path_; }

 private:
  std::vector<std::string> search_path_;
  std::vector<std::unique_ptr<LoadedPlugin>> loaded_;
};

// Loads every plug-in of the pipeline and validates its settings, in order: schema, keys without
// effect, one batch policy at most. Errors name the pipeline entry (or the CLI switch that asked
// for the plug-in); all are ConfigError (exit 2) except a plug-in that cannot load (PluginError).
struct UnusedKey {
  std::string key;
  std::string reason;
};
struct LoadedPipeline {
  std::vector<const LoadedPlugin*> plugins;
  std::vector<ResolvedPluginConfig> configs;
  // Per plug-in, its defaulted keys without effect here (clhost.config_use/1); a key the user set
  // without effect is refused instead. `reports_use[i]` is false for a plug-in without the
  // interface (built before ABI 1.4), which cannot say.
  std::vector<std::vector<UnusedKey>> not_in_effect;
  std::vector<bool> reports_use;
  // Harmless settings without effect in this pipeline, named for the user (printed, recorded).
  std::vector<std::string> warnings;
};
LoadedPipeline load_pipeline(PluginLoader& loader, const RunConfig& config);

// What one plug-in says it will hold (clhost.memory_plan/1).
struct PluginMemoryPlan {
  int64_t state_bytes = 0;
  int64_t consolidation_bytes = 0;
  std::string advice;
  // Samples per pass of the host's Fisher services (0: none); nullopt: not said (before ABI 1.8).
  std::optional<int64_t> fisher_samples_per_pass;
  // A replay plug-in's stored samples in every training step and its buffer's capacity in
  // samples; nullopt: not said (before ABI 1.9, or not a replay plug-in).
  std::optional<int64_t> replay_samples_per_step;
  std::optional<int64_t> replay_capacity;
};
// Asks pipeline plug-in `index` for its plan, for a model with tensors of `numels` and `tasks`
// tasks; nullopt when the plug-in has no clhost.memory_plan/1 (built before ABI 1.5, or holding
// memory it cannot plan). Throws PluginError with the plug-in's message when it refuses.
std::optional<PluginMemoryPlan> plan_plugin_memory(const LoadedPipeline& pipeline, size_t index,
                                                   const RunConfig& config,
                                                   const std::vector<int64_t>& numels,
                                                   int64_t tasks);

}  // namespace clhost
