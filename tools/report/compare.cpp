#include "compare.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "io.hpp"
#include "report.hpp"
#include "run_jobs.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// What each arm ran, from its first run's results.json: the resolved settings and, per
// plug-in, its configuration and the keys it reported without effect.
json arm_settings(const RunRecord& run) {
  json config = run.results.value("config", json::object());
  if (config.contains("run")) config["run"].erase("seed");
  json plugins = json::array();
  for (const auto& plugin : run.results.value("plugins", json::array())) {
    plugins.push_back(json{{"id", plugin.value("id", "")},
                           {"version", plugin.value("version", "")},
                           {"config", plugin.value("config", json::object())},
                           {"not_in_effect", plugin.value("not_in_effect", json(nullptr))}});
  }
  return json{{"config", config}, {"plugins", plugins}};
}

}  // namespace

ConfigOverrides arm_overrides(const ArmSpec& arm, const std::vector<std::string>& plugin_path) {
  ConfigOverrides overrides;
  overrides.set = arm.set;
  overrides.plugins = arm.plugins;
  overrides.plugin_path = plugin_path;
  return overrides;
}

void validate_arm(ArmSpec& arm, const char* label, const std::vector<std::string>& plugin_path) {
  const std::string prefix = std::string("arm ") + label + " ('" + arm.spec + "'): ";
  try {
    const RunConfig config = load_config(arm.config, arm_overrides(arm, plugin_path));
    check_input_files(config);
    PluginLoader loader(
        PluginLoader::search_path_for(config.cli_plugin_path, config.run.plugin_path));
    const LoadedPipeline pipeline = load_pipeline(loader, config);
    arm.plugin_versions.clear();
    for (const auto* plugin : pipeline.plugins) {
      arm.plugin_versions.push_back(plugin->id + " " + plugin->descriptor->version);
    }
    for (const auto& warning : pipeline.warnings) {
      std::fprintf(stderr, "warning: %s%s\n", prefix.c_str(), warning.c_str());
    }
  } catch (const ConfigError& e) {
    throw ConfigError(prefix + e.what());
  } catch (const PluginError& e) {
    throw PluginError(prefix + e.what());
  }
}

ArmSpec parse_arm_spec(const std::string& spec, const std::string& base_config,
                       const std::string& name) {
  ArmSpec arm;
  arm.spec = spec;
  arm.config = base_config;
  arm.name = name.empty() ? spec : name;
  if (spec.size() > 5 && spec.substr(spec.size() - 5) == ".toml") {
    if (!fs::exists(spec)) throw ConfigError("arm '" + spec + "': no such config file");
    arm.config = spec;
    if (name.empty()) arm.name = fs::path(spec).stem().string();
    return arm;
  }
  if (base_config.empty()) {
    throw ConfigError("arm '" + spec + "': overrides need a base config (--config FILE)");
  }
  std::stringstream items(spec);
  for (std::string item; std::getline(items, item, ';');) {
    if (item.empty()) continue;
    const size_t equals = item.find('=');
    if (equals == std::string::npos || equals == 0) {
      std::string message = "arm '" + spec + "': item '";
      message += item;
      message += "' is neither plugins=ID,ID... nor KEY=VALUE";
      throw ConfigError(message);
    }
    const std::string key = item.substr(0, equals);
    const std::string value = item.substr(equals + 1);
    if (key == "plugins") {
      arm.plugins = std::vector<std::string>{};
      std::stringstream ids(value);
      for (std::string id; std::getline(ids, id, ',');) {
        if (!id.empty()) arm.plugins->push_back(id);
      }
    } else {
      arm.set.push_back(item);
    }
  }
  if (spec.empty()) arm.name = name.empty() ? "base config" : name;
  return arm;
}

int run_compare(const CompareOptions& options) {
  if (options.arms.size() != 2) throw ConfigError("compare needs two arms (--a and --b)");
  if (options.seeds.empty()) throw ConfigError("--seeds: at least one seed");
  fs::create_directories(options.output_dir);
  std::vector<RunJob> jobs;
  std::vector<std::vector<std::string>> dirs(2);
  for (const int64_t seed : options.seeds) {
    for (size_t a = 0; a < 2; ++a) {
      const char* label = a == 0 ? "arm A" : "arm B";
      const std::string dir =
          (fs::path(options.output_dir) / (a == 0 ? "a" : "b") / ("seed_" + std::to_string(seed)))
              .string();
      dirs[a].push_back(dir);
      jobs.push_back({&options.arms[a], seed, dir, label});
    }
  }
  const int failed = report_failures(
      run_jobs(jobs, {"compare", options.jobs, options.plugin_path, options.quiet, options.force}),
      "compare");
  if (failed != 0) return failed;

  std::vector<std::vector<RunRecord>> runs(2);
  for (size_t a = 0; a < 2; ++a) {
    for (const auto& dir : dirs[a]) runs[a].push_back(load_run(dir));
  }
  json comparison = compare_json({options.arms[0].name, options.arms[1].name},
                                 {options.arms[0].spec, options.arms[1].spec}, runs, options.seeds);
  for (size_t a = 0; a < 2; ++a) comparison["arms"][a]["ran"] = arm_settings(runs[a].front());
  const fs::path json_path = fs::path(options.output_dir) / "compare.json";
  const fs::path html_path = fs::path(options.output_dir) / "compare.html";
  write_file_atomic(json_path.string(), comparison.dump(2) + "\n");
  write_file_atomic(html_path.string(), compare_html(comparison, runs));
  std::cout << compare_table(comparison) << "\nwrote " << json_path.string() << "\n      "
            << html_path.string() << "\n";
  return 0;
}

}  // namespace clhost::tools
