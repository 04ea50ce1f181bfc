// Runs the real pipeline in-process for the tests, with the build tree's plug-ins.
#pragma once

#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/runner.hpp"

namespace clhost::test {

inline RunSummary run_quietly(const std::string& config_path, const std::string& run_dir,
                              const std::vector<std::string>& set = {}) {
  ConfigOverrides overrides;
  overrides.set = set;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  RunOptions options;
  options.run_dir = run_dir;
  options.quiet = true;
  return run_pipeline(load_config(config_path, overrides), options);
}

}  // namespace clhost::test
