// Runs a validated configuration: loads the pipeline's plug-ins, trains over the task sequence,
// evaluates, and writes the run directory (docs/outputs.md).
#pragma once

#include <string>

#include "clhost/config.hpp"
#include "clhost/metrics.hpp"

namespace clhost {

struct RunOptions {
  std::string run_dir;  // --output: the exact run directory; empty: <run.output_dir>/<name>_<time>
  bool quiet = false;   // no progress output
};

struct RunSummary {
  std::string run_dir;
  AccuracyMatrix accuracy;
  std::vector<double> random_init_accuracy;
  ContinualMetrics metrics;
  double wall_seconds = 0.0;
  int64_t optimizer_steps = 0;
};

// Throws ConfigError / PluginError before anything is written, RunError after.
RunSummary run_pipeline(const RunConfig& config, const RunOptions& options);

// The clhost version, "0.1.0".
const char* version();

}  // namespace clhost
