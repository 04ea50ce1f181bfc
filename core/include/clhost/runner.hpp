// Runs a validated configuration: loads the pipeline's plug-ins, trains over the task sequence,
// evaluates, and writes the run directory (docs/outputs.md).
#pragma once

#include <optional>
#include <string>

#include "clhost/config.hpp"
#include "clhost/metrics.hpp"

namespace clhost {

struct RunOptions {
  std::string run_dir;  // --output: the exact run directory; empty: <run.output_dir>/<name>_<time>
  bool quiet = false;   // no progress output
  // --resume: run_dir is an existing run to continue from its latest checkpoint.
  bool resume = false;
  bool allow_config_change = false;  // accept changes to the keys that are safe to change
  bool resume_anyway = false;        // continue even if some plug-in's state was not saved
  // --stop-after-task K: once task K (1-based) has ended and its checkpoint is written, the run
  // stops as SIGTERM would stop it, to be continued with --resume (clhost sweep's successive
  // halving); 0, or K = the last task: it runs to the end.
  int64_t stop_after_task = 0;
};

struct RunSummary {
  std::string run_dir;
  EvaluationMetric metric = kAccuracyMetric;  // what `accuracy` holds: accuracy or bits per byte
  AccuracyMatrix accuracy;
  std::vector<double> random_init_accuracy;
  ContinualMetrics metrics;
  // With data.validation: the same metrics over the validation samples (results.json validation).
  std::optional<ContinualMetrics> validation;
  double wall_seconds = 0.0;
  int64_t optimizer_steps = 0;
  // In a data-parallel run, this process's rank: only rank 0 writes outputs and reports.
  int rank = 0;
};

// Throws ConfigError / PluginError before anything is written, RunError after, Interrupted
// when SIGINT/SIGTERM (signal_number() > 0) or --stop-after-task (0) stopped the run after
// writing a checkpoint.
RunSummary run_pipeline(const RunConfig& config, const RunOptions& options);

// The configuration a resumed run continues with: RUN_DIR/config.toml (the resolved
// configuration the run started with) plus `overrides`, or `config_path` when not empty.
// Throws ConfigError.
RunConfig load_resume_config(const std::string& run_dir, const std::string& config_path,
                             const ConfigOverrides& overrides);

// The clhost version, "0.1.0".
const char* version();

}  // namespace clhost
