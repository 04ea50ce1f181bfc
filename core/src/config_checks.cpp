// Checks around a configuration: input files exist, a run directory can be created, and what
// changed between two resolved configurations (clhost run --resume).
#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "data.hpp"

namespace clhost {
namespace {

void require_file(const std::string& path, const std::string& key) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    throw ConfigError(key + ": " + path + ": no such file");
  }
}

// IDX files are found as given or with ".gz", relative to data.dir unless absolute.
void require_idx_file(const DataSection& data, const std::string& name, const std::string& key) {
  const std::filesystem::path base = std::filesystem::path(name).is_absolute()
                                         ? std::filesystem::path(name)
                                         : std::filesystem::path(data.dir) / name;
  std::error_code error;
  if (std::filesystem::is_regular_file(base, error) ||
      std::filesystem::is_regular_file(base.string() + ".gz", error)) {
    return;
  }
  throw ConfigError(key + ": " + base.string() + " (or .gz): no such file (data.dir is " +
                    data.dir + ")");
}

}  // namespace

void check_input_files(const RunConfig& config) {
  const DataSection& data = config.data;
  if (data.kind == DataKind::kIdx) {
    require_idx_file(data, data.train_images, "data.train_images");
    require_idx_file(data, data.train_labels, "data.train_labels");
    require_idx_file(data, data.test_images, "data.test_images");
    require_idx_file(data, data.test_labels, "data.test_labels");
  } else if (data.kind == DataKind::kHdf5) {
    require_file(data.path, "data.path");
  } else {
    try {
      (void)text_task_files(data, config.tasks);
    } catch (const RunError& e) {
      // The language errors name data.languages themselves.
      throw ConfigError((data.languages.empty() ? "tasks[].path: " : "") + std::string(e.what()));
    }
  }
  for (size_t i = 0; i < config.tasks.size(); ++i) {
    if (data.scenario == Scenario::kSources) {
      require_file(config.tasks[i].path, "tasks[" + std::to_string(i) + "].path");
    }
  }
  if (config.model.kind == ModelKind::kTorchScript) require_file(config.model.path, "model.path");
}

void check_new_run_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(dir, error)) {
    if (!fs::is_empty(dir, error)) {
      throw ConfigError("--output " + dir +
                        ": directory exists and is not empty; choose a new directory");
    }
    return;
  }
  for (fs::path part = fs::path(dir); !part.empty(); part = part.parent_path()) {
    if (fs::exists(part, error) && !fs::is_directory(part, error)) {
      throw ConfigError("--output " + dir + ": " + part.string() +
                        " is a file, not a directory; choose another path");
    }
    if (part == part.parent_path()) break;
  }
}

namespace {

// "a.b" for tables, "a[0].b" for arrays of tables; everything else is a value.
void flatten(const nlohmann::json& value, const std::string& prefix,
             std::map<std::string, nlohmann::json>& out) {
  if (value.is_object() && !value.empty()) {
    for (const auto& [key, item] : value.items()) {
      std::string path = prefix;
      if (!path.empty()) path += ".";
      path += key;
      flatten(item, path, out);
    }
  } else if (value.is_array() && !value.empty() && value.front().is_object()) {
    for (size_t i = 0; i < value.size(); ++i) {
      std::string item_prefix = prefix;
      item_prefix.append("[").append(std::to_string(i)).append("]");
      flatten(value[i], item_prefix, out);
    }
  } else {
    out[prefix] = value;
  }
}

}  // namespace

const std::vector<std::string>& resume_safe_keys() {
  static const std::vector<std::string> keys = {
      "run.name",
      "run.output_dir",
      "run.log_every",
      "run.checkpoint_every",
      "run.plugin_path",
      "data.stream_cache",
      "data.dir",
      "data.max_resident",
      // How processes talk, not what they compute (the world size may change too).
      "distributed.backend",
      "distributed.timeout",
      "distributed.bucket_size",
  };
  return keys;
}

std::vector<ConfigChange> config_changes(const std::string& before_json,
                                         const std::string& after_json) {
  std::map<std::string, nlohmann::json> before;
  std::map<std::string, nlohmann::json> after;
  flatten(nlohmann::json::parse(before_json), "", before);
  flatten(nlohmann::json::parse(after_json), "", after);
  std::set<std::string> keys;
  for (const auto& [key, value] : before) keys.insert(key);
  for (const auto& [key, value] : after) keys.insert(key);
  std::vector<ConfigChange> changes;
  const auto& safe = resume_safe_keys();
  for (const auto& key : keys) {
    const nlohmann::json old_value = before.count(key) ? before[key] : nlohmann::json(nullptr);
    const nlohmann::json new_value = after.count(key) ? after[key] : nlohmann::json(nullptr);
    if (old_value == new_value) continue;
    changes.push_back({key, old_value.dump(), new_value.dump(),
                       std::find(safe.begin(), safe.end(), key) != safe.end()});
  }
  return changes;
}

}  // namespace clhost
