// `clhost compare`: two arms over paired seeds, each run a child `clhost run` process.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost::tools {

// An arm: the base config (or its own), an optional replacement plug-in list, and overrides.
struct ArmSpec {
  std::string name;
  std::string spec;  // as the user wrote it
  std::string config;
  std::optional<std::vector<std::string>> plugins;
  std::vector<std::string> set;
  // The plug-ins this arm runs, "id version" each (filled by validate_arm): a finished run is
  // reused only when it ran the same ones.
  std::vector<std::string> plugin_versions;
};

// The --plugins, --set and --plugin-path a run of this arm gets.
ConfigOverrides arm_overrides(const ArmSpec& arm, const std::vector<std::string>& plugin_path);

// Loads the arm's configuration and plug-ins as `clhost validate` would, fills
// arm.plugin_versions and prints the arm's warnings. Errors name the arm:
// "arm B ('plugins=ewc;train.lrr=1'): --set train.lrr: unknown key ...".
void validate_arm(ArmSpec& arm, const char* label, const std::vector<std::string>& plugin_path);

// SPEC is either a TOML file (its own config) or `;`-separated items on the base config:
// `plugins=ewc,memory_profiler` (replaces the pipeline; `plugins=` for none) or `KEY=VALUE`
// (a --set override). Throws ConfigError on an empty spec or item.
ArmSpec parse_arm_spec(const std::string& spec, const std::string& base_config,
                       const std::string& name);

struct CompareOptions {
  std::vector<ArmSpec> arms;  // two
  std::vector<int64_t> seeds;
  std::string output_dir;
  int jobs = 1;
  std::vector<std::string> plugin_path;
  bool quiet = false;
  // A finished run in output_dir is reused only when its resolved configuration and plug-in
  // versions equal the arm's; otherwise compare refuses, or with force reruns it.
  bool force = false;
};

// Runs (or reuses) every arm x seed, then writes compare.json and compare.html into output_dir
// and prints the table. Returns the process exit code (0, or 1 when a run failed).
int run_compare(const CompareOptions& options);

}  // namespace clhost::tools
