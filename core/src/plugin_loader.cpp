#include "clhost/plugin_loader.hpp"

#define BOOST_DLL_USE_STD_FS
#include <torch/version.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>

#include "clhost/errors.hpp"
#include "settings_service.hpp"

namespace clhost {
namespace fs = std::filesystem;

const char* kind_name(clhost_plugin_kind_t kind) {
  switch (kind) {
    case CLHOST_PLUGIN_KIND_REGULARIZER: return "regularizer";
    case CLHOST_PLUGIN_KIND_BATCH_POLICY: return "batch_policy";
    case CLHOST_PLUGIN_KIND_PROFILER: return "profiler";
    case CLHOST_PLUGIN_KIND_REPLAY: return "replay";
  }
  return "unknown";
}

const char* kind_interface_id(clhost_plugin_kind_t kind) {
  switch (kind) {
    case CLHOST_PLUGIN_KIND_REGULARIZER: return CLHOST_INTERFACE_REGULARIZER_V1;
    case CLHOST_PLUGIN_KIND_BATCH_POLICY: return CLHOST_INTERFACE_BATCH_POLICY_V1;
    case CLHOST_PLUGIN_KIND_PROFILER: return CLHOST_INTERFACE_PROFILER_V1;
    case CLHOST_PLUGIN_KIND_REPLAY: return CLHOST_INTERFACE_REPLAY_V1;
  }
  return nullptr;
}

const char* config_type_name(clhost_config_type_t type) {
  switch (type) {
    case CLHOST_CONFIG_TYPE_BOOL: return "bool";
    case CLHOST_CONFIG_TYPE_INT: return "int";
    case CLHOST_CONFIG_TYPE_FLOAT: return "float";
    case CLHOST_CONFIG_TYPE_STRING: return "string";
  }
  return "unknown";
}

namespace {

constexpr const char* kFilePrefix = "clhost_";
constexpr const char* kFileSuffix = ".so";

std::string file_name_for(const std::string& id) {
  return kFilePrefix + id + kFileSuffix;
}

std::vector<std::string> split_path_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ':');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// Checks the entry's version and fields before anything else in it is trusted.
void check_entry(const clhost_plugin_entry_t* entry, const std::string& path,
                 const std::string& expected_id) {
  if (entry == nullptr) {
    throw PluginError(path + ": clhost_plugin_entry() returned NULL");
  }
  const auto& version = entry->abi_version;
  if (version.major != CLHOST_ABI_VERSION_MAJOR || version.minor > CLHOST_ABI_VERSION_MINOR) {
    std::ostringstream message;
    message << path << ": plug-in built for clhost ABI " << version.major << '.' << version.minor
            << ", this host implements ABI " << CLHOST_ABI_VERSION_MAJOR << '.'
            << CLHOST_ABI_VERSION_MINOR
            << " (the major must match and the minor must not be newer); rebuild the plug-in "
               "against this clhost's SDK";
    throw PluginError(message.str());
  }
  if (entry->struct_size < sizeof(clhost_plugin_entry_t) || entry->descriptor == nullptr ||
      entry->create == nullptr || entry->destroy == nullptr || entry->get_interface == nullptr) {
    throw PluginError(path + ": malformed plug-in entry (struct too small or a NULL member)");
  }
  const auto* descriptor = entry->descriptor;
  if (descriptor->struct_size < sizeof(clhost_plugin_descriptor_t) || descriptor->id == nullptr ||
      descriptor->version == nullptr) {
    throw PluginError(path + ": malformed plug-in descriptor");
  }
  if (!expected_id.empty() && expected_id != descriptor->id) {
    throw PluginError(path + ": the file name says id '" + expected_id +
                      "' but the plug-in declares id '" + descriptor->id + "'");
  }
  if (kind_interface_id(descriptor->kind) == nullptr) {
    throw PluginError(path + ": unknown plug-in kind " + std::to_string(descriptor->kind));
  }
  if (const auto* fingerprint = entry->fingerprint) {
    const int host_abi = _GLIBCXX_USE_CXX11_ABI;
    const std::string plugin_torch = fingerprint->torch_version ? fingerprint->torch_version : "?";
    if (plugin_torch != TORCH_VERSION || fingerprint->cxx11_abi != host_abi) {
      std::ostringstream message;
      message << path << ": build fingerprint mismatch: plug-in uses LibTorch " << plugin_torch
              << " with _GLIBCXX_USE_CXX11_ABI=" << fingerprint->cxx11_abi
              << ", this host uses LibTorch " << TORCH_VERSION
              << " with _GLIBCXX_USE_CXX11_ABI=" << host_abi
              << "; two LibTorch builds cannot share a process";
      throw PluginError(message.str());
    }
  }
}

}  // namespace

PluginLoader::PluginLoader(std::vector<std::string> search_path)
    : search_path_(std::move(search_path)) {}

std::vector<std::string> PluginLoader::search_path_for(const std::vector<std::string>& cli,
                                                       const std::vector<std::string>& config) {
  std::vector<std::string> out;
  for (const auto& entry : cli) {
    for (const auto& dir : split_path_list(entry)) out.push_back(dir);
  }
  if (const char* env = std::getenv("CLHOST_PLUGIN_PATH")) {
    for (const auto& dir : split_path_list(env)) out.push_back(dir);
  }
  out.insert(out.end(), config.begin(), config.end());
  std::error_code error;
  const fs::path exe_dir = boost::dll::program_location(error).parent_path();
  if (!error) {
    out.push_back((exe_dir.parent_path() / "plugins").string());                     // build tree
    out.push_back((exe_dir.parent_path() / "lib" / "clhost" / "plugins").string());  // install
  }
  return out;
}

const LoadedPlugin& PluginLoader::load_file(const std::string& path,
                                            const std::string& expected_id) {
  const std::string absolute = fs::absolute(path).lexically_normal().string();
  for (const auto& plugin : loaded_) {
    if (plugin->path == absolute) return *plugin;
  }
  // Plug-ins stay loaded until the process exits (no dlclose: their code may still run from
  // static destructors); the handles stay reachable from a static list, never destroyed.
  static auto* const kept_loaded = new std::vector<std::unique_ptr<boost::dll::shared_library>>();
  auto owned = std::make_unique<boost::dll::shared_library>();
  boost::dll::shared_library* library = owned.get();
  try {
    library->load(absolute, boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now);
    kept_loaded->push_back(std::move(owned));
  } catch (const std::exception& e) {
    // Boost wraps the dynamic loader's message ("... (dlerror system message: X): <errno>");
    // X is the useful part (missing dependency, invalid ELF header, file too short...).
    std::string reason = e.what();
    const std::string marker = "dlerror system message: ";
    if (const size_t at = reason.find(marker); at != std::string::npos) {
      reason = reason.substr(at + marker.size());
      reason = reason.substr(0, reason.rfind("):"));
      if (reason.rfind(absolute + ": ", 0) == 0) reason = reason.substr(absolute.size() + 2);
    }
    throw PluginError(absolute + ": cannot load shared library: " + reason);
  }
  if (!library->has(CLHOST_ENTRY_SYMBOL)) {
    throw PluginError(absolute + ": not a clhost plug-in (it does not export '" +
                      CLHOST_ENTRY_SYMBOL + "')");
  }
  const auto entry_fn = library->get<const clhost_plugin_entry_t*()>(CLHOST_ENTRY_SYMBOL);
  const clhost_plugin_entry_t* entry = entry_fn();
  check_entry(entry, absolute, expected_id);
  const void* interface = entry->get_interface(kind_interface_id(entry->descriptor->kind));
  if (interface == nullptr) {
    throw PluginError(absolute + ": declares kind " + kind_name(entry->descriptor->kind) +
                      " but does not provide interface " +
                      kind_interface_id(entry->descriptor->kind));
  }
  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->id = entry->descriptor->id;
  plugin->path = absolute;
  plugin->entry = entry;
  plugin->descriptor = entry->descriptor;
  plugin->interface = interface;
  loaded_.push_back(std::move(plugin));
  return *loaded_.back();
}

const LoadedPlugin& PluginLoader::load(const std::string& id) {
  for (const auto& plugin : loaded_) {
    if (plugin->id == id) return *plugin;
  }
  const std::string file = file_name_for(id);
  for (const auto& dir : search_path_) {
    const fs::path candidate = fs::path(dir) / file;
    if (fs::exists(candidate)) return load_file(candidate.string(), id);
  }
  std::ostringstream message;
  message << "plug-in '" << id << "' not found: no " << file << " in the search path";
  std::vector<std::string> found;
  for (const auto& dir : search_path_) {
    message << "\n  looked in " << dir;
    std::error_code error;
    for (const auto& item : fs::directory_iterator(dir, error)) {
      const std::string name = item.path().filename().string();
      if (name.rfind(kFilePrefix, 0) == 0 && item.path().extension() == kFileSuffix) {
        found.push_back(
            name.substr(std::strlen(kFilePrefix),
                        name.size() - std::strlen(kFilePrefix) - std::strlen(kFileSuffix)));
      }
    }
  }
  std::sort(found.begin(), found.end());
  found.erase(std::unique(found.begin(), found.end()), found.end());
  message << "\n  plug-ins found: ";
  if (found.empty()) message << "(none)";
  for (size_t i = 0; i < found.size(); ++i) message << (i ? ", " : "") << found[i];
  message << "\n  add a directory with --plugin-path, CLHOST_PLUGIN_PATH or run.plugin_path";
  throw PluginError(message.str());
}

std::vector<PluginLoader::Candidate> PluginLoader::discover() {
  std::vector<Candidate> out;
  std::vector<std::string> seen;
  for (const auto& dir : search_path_) {
    std::error_code error;
    std::vector<fs::path> files;
    for (const auto& item : fs::directory_iterator(dir, error)) {
      const std::string name = item.path().filename().string();
      if (name.rfind(kFilePrefix, 0) == 0 && item.path().extension() == kFileSuffix) {
        files.push_back(item.path());
      }
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      const std::string name = file.filename().string();
      Candidate candidate;
      candidate.id = name.substr(std::strlen(kFilePrefix),
                                 name.size() - std::strlen(kFilePrefix) - std::strlen(kFileSuffix));
      candidate.path = fs::absolute(file).lexically_normal().string();
      candidate.shadowed = std::find(seen.begin(), seen.end(), candidate.id) != seen.end();
      seen.push_back(candidate.id);
      try {
        candidate.plugin = &load_file(candidate.path, candidate.id);
      } catch (const PluginError& e) {
        candidate.error = e.what();
      }
      out.push_back(std::move(candidate));
    }
  }
  return out;
}

namespace {

using RawSetting = std::variant<bool, int64_t, double, std::string>;

// A key the plug-in's schema does not have is refused with the keys it does have.
void refuse_unknown_keys(const LoadedPlugin& plugin, const PluginSpec& spec,
                         const std::string& prefix) {
  const auto* descriptor = plugin.descriptor;
  for (const auto& setting : spec.settings) {
    bool known = false;
    for (uint32_t i = 0; i < descriptor->config_schema_count; ++i) {
      known = known || setting.key == descriptor->config_schema[i].key;
    }
    if (known) continue;
    std::string keys;
    for (uint32_t i = 0; i < descriptor->config_schema_count; ++i) {
      keys += (i ? ", " : "") + std::string(descriptor->config_schema[i].key);
    }
    throw ConfigError(
        setting.location + ": " + prefix + "." + setting.key +
        ": unknown key for this plug-in (its keys: " + (keys.empty() ? "none" : keys) +
        "; see `clhost plugins show " + plugin.id + "`)");
  }
}

// Defaults are TOML literals in the schema: parse the few forms allowed.
RawSetting schema_default(const clhost_config_key_t& schema) {
  const std::string text = schema.default_value ? schema.default_value : "";
  switch (schema.type) {
    case CLHOST_CONFIG_TYPE_BOOL: return text == "true";
    case CLHOST_CONFIG_TYPE_INT:
      return static_cast<int64_t>(std::strtoll(text.c_str(), nullptr, 10));
    case CLHOST_CONFIG_TYPE_FLOAT: return std::strtod(text.c_str(), nullptr);
    default:
      return (text.size() >= 2 && text.front() == '"') ? text.substr(1, text.size() - 2) : text;
  }
}

// `raw` as the schema's type into `value` (strings through `keep`, which owns them); `where`
// starts every error.
void set_typed_value(const clhost_config_key_t& schema, const RawSetting& raw,
                     const std::string& where,
                     const std::function<const char*(const std::string&)>& keep,
                     clhost_config_value_t& value) {
  switch (schema.type) {
    case CLHOST_CONFIG_TYPE_BOOL:
      if (!std::holds_alternative<bool>(raw)) throw ConfigError(where + "expected a boolean");
      value.bool_value = std::get<bool>(raw) ? 1 : 0;
      return;
    case CLHOST_CONFIG_TYPE_INT:
      if (!std::holds_alternative<int64_t>(raw)) throw ConfigError(where + "expected an integer");
      value.int_value = std::get<int64_t>(raw);
      value.float_value = static_cast<double>(value.int_value);
      return;
    case CLHOST_CONFIG_TYPE_FLOAT:
      if (std::holds_alternative<int64_t>(raw)) {
        value.float_value = static_cast<double>(std::get<int64_t>(raw));
      } else if (std::holds_alternative<double>(raw)) {
        value.float_value = std::get<double>(raw);
      } else {
        throw ConfigError(where + "expected a number");
      }
      return;
    default: {
      if (!std::holds_alternative<std::string>(raw)) throw ConfigError(where + "expected a string");
      const std::string& text = std::get<std::string>(raw);
      if (schema.choices != nullptr) {
        std::vector<std::string> choices;
        std::stringstream stream(schema.choices);
        for (std::string item; std::getline(stream, item, '|');) choices.push_back(item);
        if (std::find(choices.begin(), choices.end(), text) == choices.end()) {
          throw ConfigError(where + "\"" + text + "\" is not one of: " + schema.choices);
        }
      }
      value.string_value = keep(text);
      return;
    }
  }
}

void check_range(const clhost_config_key_t& schema, const clhost_config_value_t& value,
                 const std::string& where) {
  if (schema.has_range == 0 ||
      (schema.type != CLHOST_CONFIG_TYPE_INT && schema.type != CLHOST_CONFIG_TYPE_FLOAT)) {
    return;
  }
  if (!std::isfinite(value.float_value) || value.float_value < schema.min_value ||
      value.float_value > schema.max_value) {
    std::ostringstream message;
    message << where << "value " << value.float_value << " is out of range [" << schema.min_value
            << ", " << schema.max_value << "]";
    throw ConfigError(message.str());
  }
}

}  // namespace

ResolvedPluginConfig resolve_plugin_config(const LoadedPlugin& plugin, const PluginSpec& spec,
                                           size_t pipeline_index) {
  const auto* descriptor = plugin.descriptor;
  const std::string prefix = "pipeline[" + std::to_string(pipeline_index) + "] (" + plugin.id + ")";
  refuse_unknown_keys(plugin, spec, prefix);
  ResolvedPluginConfig resolved;
  const auto keep = [&resolved](const std::string& text) {
    resolved.strings_.push_back(std::make_unique<std::string>(text));
    return resolved.strings_.back()->c_str();
  };
  for (uint32_t i = 0; i < descriptor->config_schema_count; ++i) {
    const clhost_config_key_t& schema = descriptor->config_schema[i];
    clhost_config_value_t value{};
    value.key = keep(schema.key);
    value.type = schema.type;
    const PluginSetting* setting = nullptr;
    for (const auto& candidate : spec.settings) {
      if (candidate.key == schema.key) setting = &candidate;
    }
    const std::string location =
        setting ? setting->location : std::string(plugin.path) + " (default)";
    std::string where = location;
    where.append(": ").append(prefix).append(".").append(schema.key).append(": ");
    set_typed_value(schema, setting ? RawSetting(setting->value) : schema_default(schema), where,
                    keep, value);
    check_range(schema, value, where);
    resolved.values_.push_back(value);
  }
  resolved.config_.values = resolved.values_.data();
  resolved.config_.count = static_cast<uint32_t>(resolved.values_.size());
  return resolved;
}

namespace {

// The host handed to clhost.config_use/1: the resolved settings and a log, no instance services.
struct ValidationHost {
  nlohmann::json settings;
};
const nlohmann::json& validation_settings(const clhost_host_t* host) {
  return static_cast<const ValidationHost*>(host->host_data)->settings;
}
using ValidationSettings = SettingsService<&validation_settings>;
void validation_log(const clhost_host_t* /*host*/, clhost_log_level_t /*level*/,
                    const char* message) {
  std::fprintf(stderr, "plug-in: %s\n", message);
}
const clhost_log_service_v1_t kValidationLog{sizeof(clhost_log_service_v1_t), &validation_log};
const void* validation_service(const clhost_host_t* /*host*/, const char* id) {
  if (std::strcmp(id, CLHOST_SERVICE_SETTINGS_V1) == 0) return &ValidationSettings::table;
  if (std::strcmp(id, CLHOST_SERVICE_LOG_V1) == 0) return &kValidationLog;
  return nullptr;
}

// Asks the plug-in which of its keys have no effect; refuses those the user set.
std::vector<UnusedKey> check_config_use(const LoadedPlugin& plugin, const PluginSpec& spec,
                                        size_t index, const ResolvedPluginConfig& resolved,
                                        const clhost_host_t& host) {
  std::vector<UnusedKey> unused;
  const auto* use = static_cast<const clhost_config_use_v1_t*>(
      plugin.entry->get_interface(CLHOST_INTERFACE_CONFIG_USE_V1));
  use->unused_keys(
      &host, resolved.abi(),
      [](void* data, const char* key, const char* reason) {
        static_cast<std::vector<UnusedKey>*>(data)->push_back(
            {key != nullptr ? key : "", reason != nullptr ? reason : ""});
      },
      &unused);
  for (const auto& entry : unused) {
    for (const auto& setting : spec.settings) {
      if (setting.key != entry.key) continue;
      throw ConfigError(setting.location + ": pipeline[" + std::to_string(index) + "] (" +
                        plugin.id + ")." + entry.key + ": has no effect here: " + entry.reason +
                        "; remove it, or change that setting");
    }
  }
  return unused;
}

// One batch policy chooses the micro-batch and one replay plug-in fills the buffer: two of a kind
// would overrule each other.
void check_one_of_kind(const LoadedPipeline& pipeline, const RunConfig& config,
                       clhost_plugin_kind_t kind, const char* what, const char* why) {
  std::string first;
  for (size_t i = 0; i < pipeline.plugins.size(); ++i) {
    if (pipeline.plugins[i]->descriptor->kind != kind) continue;
    const std::string here = "pipeline[" + std::to_string(i) + "] (" + pipeline.plugins[i]->id +
                             ", " + config.pipeline[i].location + ")";
    if (!first.empty()) {
      throw ConfigError(config.pipeline[i].location + ": two " + what + ", " + first + " and " +
                        here + ": " + why + "; keep one");
    }
    first = here;
  }
}

bool has_plugin(const LoadedPipeline& pipeline, const std::string& id) {
  return std::any_of(pipeline.plugins.begin(), pipeline.plugins.end(),
                     [&](const LoadedPlugin* plugin) { return plugin->id == id; });
}

// fisher_computation keys act through the plug-ins that compute a Fisher; given without one,
// they change nothing. Harmless (nothing else is computed differently), so a named warning.
std::vector<std::string> fisher_warnings(const RunConfig& config, const LoadedPipeline& pipeline) {
  // l2 and lwf are the built-in regularizers known to need no Fisher pass; any other may run
  // one (mas's importance pass uses the same blocks).
  const bool any_regularizer =
      std::any_of(pipeline.plugins.begin(), pipeline.plugins.end(), [](const LoadedPlugin* p) {
        return p->descriptor->kind == CLHOST_PLUGIN_KIND_REGULARIZER && p->id != "l2" &&
               p->id != "lwf";
      });
  std::vector<std::string> warnings;
  for (const auto& key : config.given_keys) {
    if (key.rfind("fisher_computation.", 0) != 0) continue;
    if (!any_regularizer) {
      warnings.push_back(key +
                         " has no effect: no plug-in in the pipeline computes a Fisher (ewc, "
                         "lowrank_fisher and mas do)");
    } else if (key == "fisher_computation.use_memory_efficient" && !has_plugin(pipeline, "ewc")) {
      warnings.push_back(key +
                         " has no effect unless a plug-in reads it (of the built-in ones, "
                         "only ewc does; it is not in the pipeline)");
    } else if (key == "fisher_computation.compression_ratio" &&
               !has_plugin(pipeline, "lowrank_fisher")) {
      warnings.push_back(key +
                         " has no effect unless a plug-in reads it (of the built-in ones, "
                         "only lowrank_fisher does; it is not in the pipeline)");
    }
  }
  return warnings;
}

}  // namespace

LoadedPipeline load_pipeline(PluginLoader& loader, const RunConfig& config) {
  LoadedPipeline pipeline;
  ValidationHost validation{nlohmann::json::parse(config.resolved_json)};
  const clhost_host_t host{sizeof(clhost_host_t),
                           {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                           CLHOST_VERSION,
                           &validation_service,
                           &validation};
  for (size_t i = 0; i < config.pipeline.size(); ++i) {
    const PluginSpec& spec = config.pipeline[i];
    try {
      pipeline.plugins.push_back(&loader.load(spec.id));
    } catch (const PluginError& e) {
      const bool from_switch = spec.location.rfind("--", 0) == 0;
      if (from_switch) {
        throw PluginError(std::string(e.what()) + "\n  (" + spec.location + " needs plug-in '" +
                          spec.id + "')");
      }
      throw PluginError(spec.location + ": pipeline[" + std::to_string(i) + "]: " + e.what());
    }
    const LoadedPlugin& plugin = *pipeline.plugins.back();
    pipeline.configs.push_back(resolve_plugin_config(plugin, spec, i));
    const bool reports = plugin.entry->get_interface(CLHOST_INTERFACE_CONFIG_USE_V1) != nullptr;
    pipeline.reports_use.push_back(reports);
    pipeline.not_in_effect.push_back(
        reports ? check_config_use(plugin, spec, i, pipeline.configs.back(), host)
                : std::vector<UnusedKey>{});
  }
  check_one_of_kind(pipeline, config, CLHOST_PLUGIN_KIND_BATCH_POLICY, "batch policies",
                    "one chooses the micro-batch");
  check_one_of_kind(pipeline, config, CLHOST_PLUGIN_KIND_REPLAY, "replay plug-ins",
                    "one holds the buffer of earlier tasks' samples");
  pipeline.warnings = config.warnings;
  for (auto& warning : fisher_warnings(config, pipeline)) pipeline.warnings.push_back(warning);
  return pipeline;
}

std::optional<PluginMemoryPlan> plan_plugin_memory(const LoadedPipeline& pipeline, size_t index,
                                                   const RunConfig& config,
                                                   const std::vector<int64_t>& numels,
                                                   int64_t tasks) {
  const LoadedPlugin& plugin = *pipeline.plugins.at(index);
  const auto* table = static_cast<const clhost_memory_plan_v1_t*>(
      plugin.entry->get_interface(CLHOST_INTERFACE_MEMORY_PLAN_V1));
  if (table == nullptr || table->struct_size < sizeof(clhost_memory_plan_v1_t) ||
      table->plan == nullptr) {
    return std::nullopt;
  }
  ValidationHost validation{nlohmann::json::parse(config.resolved_json)};
  const clhost_host_t host{sizeof(clhost_host_t),
                           {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                           CLHOST_VERSION,
                           &validation_service,
                           &validation};
  const clhost_memory_plan_request_t request{sizeof(clhost_memory_plan_request_t), numels.data(),
                                             static_cast<int64_t>(numels.size()), tasks,
                                             config.fisher.block_size};
  clhost_memory_plan_answer_t answer{};
  answer.struct_size = sizeof(answer);
  answer.fisher_samples_per_pass = -1;  // a plug-in built before ABI 1.8 leaves it
  answer.replay_samples_per_step = -1;  // and before 1.9 these
  answer.replay_capacity = -1;
  clhost_error_t error{};
  if (table->plan(&host, pipeline.configs.at(index).abi(), &request, &answer, &error) !=
      CLHOST_STATUS_OK) {
    throw PluginError(plugin.id + ": memory plan refused: " + std::string(error.message));
  }
  PluginMemoryPlan plan;
  plan.state_bytes = answer.state_bytes;
  plan.consolidation_bytes = answer.consolidation_bytes;
  if (answer.advice != nullptr) plan.advice = answer.advice;
  if (answer.fisher_samples_per_pass >= 0) {
    plan.fisher_samples_per_pass = answer.fisher_samples_per_pass;
  }
  if (answer.replay_samples_per_step >= 0 && answer.replay_capacity >= 0) {
    plan.replay_samples_per_step = answer.replay_samples_per_step;
    plan.replay_capacity = answer.replay_capacity;
  }
  return plan;
}

}  // namespace clhost
