// `clhost sweep`: every combination of a grid of settings, trained on the same seeds and scored
// on each task's validation samples (data.validation), so the test set is never looked at while
// choosing; then the best combination's TOML and its test-set result.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compare.hpp"

namespace clhost::tools {

// One swept key and its values, each as TOML text for --set KEY=VALUE.
struct SweepAxis {
  std::string key;
  std::vector<std::string> values;
  // A range (logspace/linspace): random search draws anywhere in it.
  enum class Range { kNone, kLog, kLinear } range = Range::kNone;
  double low = 0.0;
  double high = 0.0;
  bool integers = false;
};

// --grid SPEC: KEY=[v1, v2, ...] (a TOML array), KEY=logspace(LOW, HIGH, N) or
// KEY=linspace(LOW, HIGH, N) (N values from LOW to HIGH; integers when both ends are). Throws
// ConfigError naming the spec.
SweepAxis parse_grid(const std::string& spec);

struct SweepOptions {
  std::string config;            // the base config
  std::vector<std::string> set;  // --set overrides for every run
  std::vector<SweepAxis> axes;   // their product is swept
  std::vector<int64_t> seeds;    // every combination runs every seed
  // Random search: this many combinations drawn (seeded by sample_seed) instead of the grid;
  // a range axis draws anywhere in its range (log-uniform for logspace), a list one of its values.
  int64_t samples = 0;
  uint64_t sample_seed = 0;
  // Successive halving with this ETA (>= 2; 0: off): every combination trains to the first
  // round's task, is scored on the validation samples of the tasks seen, the best 1/ETA
  // continue (--resume) to the next round, until the last trains every task.
  int halving = 0;
  std::string validation = "0.1";  // data.validation when the config holds none out
  std::string output_dir;
  int jobs = 1;
  std::vector<std::string> plugin_path;
  bool quiet = false;
  bool force = false;  // as compare's: rerun finished runs with other settings
};

// Successive halving's rule for a combination ranked below a round's cut: it goes on when its
// scores (one per seed) are not significantly worse than those of the last one kept — the 95%
// paired t-interval of the seed-by-seed difference reaches the kept one's side — or, with one
// seed, when they are equal. A cut between settings the seeds cannot tell apart is a coin toss.
bool goes_on_beside(const std::vector<double>& candidate, const std::vector<double>& last_kept,
                    bool higher_is_better);

// The values of every combination swept, one per axis: the grid's product, or with
// options.samples the drawn ones (repeats dropped).
std::vector<std::vector<std::string>> sweep_combinations(const SweepOptions& options);

// Validates every combination, runs (or reuses) every combination x seed, writes sweep.json,
// sweep.html and best.toml into output_dir and prints the table. Returns the exit code (0, or 1
// when a run failed).
int run_sweep(const SweepOptions& options);

}  // namespace clhost::tools
