// Batch policies under a memory budget the configured batch does not fit, on split
// Fashion-MNIST with the real trainer; prints one JSON document (and writes it to argv[1]).
//
//   build/bin/bench_batch bench/results/bench_batch.json
//
// For each budget: the best fixed micro-batch found by sweeping powers of two (its throughput),
// then `dynamic` and `estimate`: micro-batch chosen, trials to settle, out-of-memory retries,
// throughput relative to the best fixed, final accuracy against the unconstrained run.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_args.hpp"
#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/runner.hpp"

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const char* const kConfig = R"(
[run]
seed = 1
threads = 1
log_every = 1
[data]
num_tasks = 2
train_samples_per_task = 8192
test_samples_per_task = 1000
[model]
hidden = [256]
[train]
batch_size = 2048
iterations = 80
eval_batch_size = 100
)";

struct Outcome {
  bool ok = false;
  json results;
  double samples_per_second = 0.0;  // training throughput over both tasks
  int64_t max_step_peak = 0;
};

Outcome run(const std::string& pipeline, int64_t budget) {
  const fs::path dir =
      fs::temp_directory_path() / ("clhost_bench_batch_" + std::to_string(std::rand()));
  fs::create_directories(dir);
  std::ofstream(dir / "c.toml") << kConfig << pipeline;
  clhost::ConfigOverrides overrides;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  if (budget > 0) overrides.set = {"run.memory_budget=" + std::to_string(budget)};
  Outcome outcome;
  try {
    clhost::RunOptions options;
    options.run_dir = (dir / "run").string();
    options.quiet = true;
    (void)clhost::run_pipeline(clhost::load_config((dir / "c.toml").string(), overrides), options);
    std::ifstream in(options.run_dir + "/results.json");
    outcome.results = json::parse(in);
    double seconds = 0.0;
    double samples = 0.0;
    for (const auto& task : outcome.results["tasks"]) {
      seconds += task["train_seconds"].get<double>();
      samples += task["steps"].get<double>() * task["batch_size"].get<double>();
    }
    outcome.samples_per_second = samples / seconds;
    std::ifstream csv(options.run_dir + "/metrics.csv");
    std::string line;
    std::getline(csv, line);
    while (std::getline(csv, line)) {
      std::vector<std::string> cells;
      std::stringstream row(line);
      for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
      if (cells.size() > 8 && !cells[8].empty())
        outcome.max_step_peak = std::max<int64_t>(outcome.max_step_peak, std::stoll(cells[8]));
    }
    outcome.ok = true;
  } catch (const clhost::RunError&) {
    outcome.ok = false;  // did not fit
  }
  fs::remove_all(dir);
  return outcome;
}

std::string fixed(int64_t micro) {
  return "[[pipeline]]\nplugin = \"fixed\"\nmicro_batch = " + std::to_string(micro) + "\n";
}

}  // namespace

int main(int argc, char** argv) {
  clhost::bench::check_arguments(argc, argv, "usage: bench_batch [OUT.json]");
  const Outcome full = run(fixed(2048), -1);
  const Outcome eighth = run(fixed(256), -1);
  json report = {
      {"protocol", "split Fashion-MNIST, 2 tasks x 80 steps, batch 2048, MLP 784-256-10, 1 thread"},
      {"unconstrained",
       {{"samples_per_second", full.samples_per_second},
        {"step_peak_bytes", full.max_step_peak},
        {"accuracy_matrix", full.results["accuracy_matrix"]}}},
      {"budgets", json::array()}};
  const int64_t low = eighth.max_step_peak;
  const int64_t high = full.max_step_peak;
  for (const double fraction : {0.25, 0.5, 0.75}) {
    const auto budget =
        static_cast<int64_t>(static_cast<double>(low) + fraction * static_cast<double>(high - low));
    json entry = {{"budget_bytes", budget}, {"fixed_sweep", json::array()}};
    double best = 0.0;
    int64_t best_micro = 0;
    for (int64_t micro = 2048; micro >= 16; micro /= 2) {
      const Outcome outcome = run(fixed(micro), budget);
      entry["fixed_sweep"].push_back({{"micro_batch", micro},
                                      {"fits", outcome.ok},
                                      {"samples_per_second", outcome.samples_per_second}});
      if (outcome.ok && outcome.samples_per_second > best) {
        best = outcome.samples_per_second;
        best_micro = micro;
      }
    }
    entry["best_fixed"] = {{"micro_batch", best_micro}, {"samples_per_second", best}};
    for (const std::string policy : {"dynamic", "estimate"}) {
      const Outcome outcome = run("[[pipeline]]\nplugin = \"" + policy + "\"\n", budget);
      json result = {{"policy", policy}, {"completed", outcome.ok}};
      if (outcome.ok) {
        const auto& memory = outcome.results["memory"];
        int64_t trials_task0 = 0;
        for (const auto& change : memory["batch_size_changes"])
          trials_task0 += change["task"] == 0 ? 1 : 0;
        double worst_accuracy_difference = 0.0;
        for (size_t i = 0; i < 2; ++i) {
          for (size_t j = 0; j < 2; ++j) {
            worst_accuracy_difference =
                std::max(worst_accuracy_difference,
                         std::abs(outcome.results["accuracy_matrix"][i][j].get<double>() -
                                  full.results["accuracy_matrix"][i][j].get<double>()));
          }
        }
        result.update(
            {{"final_micro_batch", outcome.results["tasks"][1]["final_micro_batch"]},
             {"changes_in_task_0", trials_task0},
             {"out_of_memory_retries", memory["out_of_memory_retries"]},
             {"samples_per_second", outcome.samples_per_second},
             {"throughput_vs_best_fixed", best > 0 ? outcome.samples_per_second / best : 0.0},
             {"max_accuracy_difference_vs_unconstrained", worst_accuracy_difference}});
      }
      entry["policies"].push_back(result);
    }
    report["budgets"].push_back(entry);
    std::cerr << "budget " << budget << " done\n";
  }
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
}
