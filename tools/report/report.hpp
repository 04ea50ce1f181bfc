// `clhost report RUN_DIR` and `clhost compare`: self-contained HTML pages (inline SVG charts, no
// scripts, no network) and the comparison's statistics.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "stats.hpp"

namespace clhost::tools {

// One finished run directory, read back.
struct RunRecord {
  std::string dir;
  nlohmann::json results;
  std::vector<double> global_step, loss, penalty;  // metrics.csv step rows
  std::vector<double> batch_step, micro_batch;     // micro-batch at each logged step
  std::string memory_svg;                          // the profiler's timeline, when it ran
};

// Throws std::runtime_error naming the file when results.json is missing or unreadable.
RunRecord load_run(const std::string& dir);

// What a run's evaluation matrix holds (results.json "evaluation"): accuracy, or bits per byte
// for text tasks, and which way is better.
struct Evaluation {
  std::string name = "accuracy";  // results.json keys <name>_matrix, metrics.average_<name>
  std::string label = "accuracy";
  bool higher_is_better = true;
};
Evaluation evaluation_of(const nlohmann::json& results);

// The per-run metrics a comparison reports, in display order: key, label, direction.
struct MetricSpec {
  std::string key;
  std::string label;
  bool higher_is_better;
};
std::vector<MetricSpec> compared_metrics(const Evaluation& evaluation);
double metric_value(const RunRecord& run, const std::string& key);

// Writes RUN_DIR/report.html (atomically); returns its path.
std::string write_run_report(const std::string& run_dir);

// The comparison of two arms over paired seeds: statistics as JSON (see docs/cli.md).
nlohmann::json compare_json(const std::vector<std::string>& arm_names,
                            const std::vector<std::string>& arm_specs,
                            const std::vector<std::vector<RunRecord>>& runs,
                            const std::vector<int64_t>& seeds);
// The console table for compare_json's result.
std::string compare_table(const nlohmann::json& comparison);
// The compare page.
std::string compare_html(const nlohmann::json& comparison,
                         const std::vector<std::vector<RunRecord>>& runs);

std::string html_escape(const std::string& text);
// {"mean", "low", "high", "n"}: null where not finite (no interval with fewer than two values).
nlohmann::json interval_json(const Interval& interval);
// A self-contained page in the reports' style: TITLE as its heading, then BODY (HTML).
std::string html_page(const std::string& title, const std::string& body);

}  // namespace clhost::tools
