// The runs behind `clhost compare` and `clhost sweep`: child `clhost run` processes, a few at a
// time, each in its own directory; a run that finished earlier with the same settings is reused,
// an interrupted one starts again.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compare.hpp"

namespace clhost::tools {

struct RunJob {
  const ArmSpec* arm = nullptr;  // what it runs; must outlive run_jobs
  int64_t seed = 0;
  std::string dir;    // the run directory; its log is dir + ".log"
  std::string label;  // for messages, before " seed N": "arm A", "pipeline.0.lambda=100"
  // > 0: the run stops after this task (clhost run --stop-after-task) and counts as done there;
  // a run stopped earlier with the same settings is continued (--resume) instead of restarted.
  int64_t stop_after_task = 0;
};

struct RunJobsOptions {
  std::string tool;  // "compare", "sweep": the prefix of progress lines
  int jobs = 1;      // runs at the same time
  std::vector<std::string> plugin_path;
  bool quiet = false;
  // A finished run is reused only when its resolved configuration and plug-in versions equal the
  // arm's; otherwise the runs are refused (ConfigError naming the directory), or with force
  // rerun.
  bool force = false;
};

// Runs every job that has not finished (or reached its stop_after_task) with the same settings.
// Returns one description per failed run (label, log file and the end of its log); empty when all
// finished.
std::vector<std::string> run_jobs(const std::vector<RunJob>& jobs, const RunJobsOptions& options);

// Prints the failures of run_jobs with what to do next; returns the exit code (0 when none).
int report_failures(const std::vector<std::string>& failures, const std::string& tool);

}  // namespace clhost::tools
