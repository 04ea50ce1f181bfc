// The cost of the plug-ins that see outputs and data (ABI 1.7) with the real trainer on split
// Fashion-MNIST (the protocol's MLP 784-400-400, Adam, batch 128, one thread); prints one JSON
// document (and writes it to argv[1]).
//
//   build/bin/bench_output_plugins bench/results/bench_output_plugins.json
//
// Per arm (none, lwf, mas, replay, and ewc for reference), run alternately `repetitions` times:
// the median time per optimizer step of task 2 (where every plug-in acts), its ratio to none
// and the plug-in's share of a step, the median consolidation after task 1 (MAS's importance
// pass, LwF's snapshot, the replay buffer's update, EWC's Fisher) and the memory the host holds
// for the plug-in. The bound: the step is GEMMs (about 6 * weights FLOP per sample), so a step
// costs in proportion to the samples it pushes through; the achieved GFLOP/s are reported.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench_args.hpp"
#include "clhost/config.hpp"
#include "clhost/runner.hpp"

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kRepetitions = 3;
constexpr int64_t kSteps = 300;

const char* const kConfig = R"(
[run]
seed = 1
threads = 1
log_every = 100
[data]
num_tasks = 2
test_samples_per_task = 1000
[model]
hidden = [400, 400]
[train]
optimizer = "adam"
lr = 1e-3
batch_size = 128
iterations = 300
eval_batch_size = 1000
)";

struct Arm {
  std::string name;
  std::string pipeline;
};

const std::vector<Arm> kArms = {
    {"none", ""},
    {"lwf", "[[pipeline]]\nplugin = \"lwf\"\n"},
    {"mas", "[[pipeline]]\nplugin = \"mas\"\n"},
    {"replay", "[[pipeline]]\nplugin = \"replay\"\ncapacity = 1000\nbatch_size = 128\n"},
    {"ewc", "[[pipeline]]\nplugin = \"ewc\"\nlambda = 1000.0\n"},
};

json run(const Arm& arm) {
  const fs::path dir = fs::temp_directory_path() / ("clhost_bench_outputs_" + arm.name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "c.toml") << kConfig << arm.pipeline;
  clhost::ConfigOverrides overrides;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  clhost::RunOptions options;
  options.run_dir = (dir / "run").string();
  options.quiet = true;
  (void)clhost::run_pipeline(clhost::load_config((dir / "c.toml").string(), overrides), options);
  std::ifstream in(options.run_dir + "/results.json");
  json results = json::parse(in);
  fs::remove_all(dir);
  return results;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  clhost::bench::check_arguments(argc, argv, "usage: bench_output_plugins [OUT.json]");
  std::map<std::string, std::vector<double>> step_seconds;
  std::map<std::string, std::vector<double>> consolidate_seconds;
  std::map<std::string, json> last;
  for (int repetition = 0; repetition < kRepetitions; ++repetition) {
    for (const Arm& arm : kArms) {
      const json results = run(arm);
      step_seconds[arm.name].push_back(results["tasks"][1]["train_seconds"].get<double>() /
                                       static_cast<double>(kSteps));
      consolidate_seconds[arm.name].push_back(
          results["tasks"][0]["consolidate_seconds"].get<double>());
      last[arm.name] = results;
      std::cerr << arm.name << " repetition " << repetition + 1 << " done\n";
    }
  }
  const int64_t parameters = last["none"]["model"]["parameters"].get<int64_t>();
  // Forward and backward of a Linear layer: about 6 FLOP per weight and sample.
  const double flop_per_sample = 6.0 * static_cast<double>(parameters);
  const double none = median(step_seconds["none"]);
  json report = {
      {"protocol", "split Fashion-MNIST, 2 tasks x 300 steps, MLP 784-400-400-10 (" +
                       std::to_string(parameters) +
                       " parameters), Adam, batch 128, 1 thread; medians of " +
                       std::to_string(kRepetitions) + " alternating runs; task 2's steps"},
      {"arms", json::array()}};
  for (const Arm& arm : kArms) {
    const double step = median(step_seconds[arm.name]);
    const json& plugin =
        last[arm.name]["plugins"].empty() ? json::object() : last[arm.name]["plugins"][0];
    // A replay step pushes its own batch and the replayed samples through the model.
    const double samples = arm.name == "replay" ? 256.0 : 128.0;
    json entry = {{"arm", arm.name},
                  {"step_ms", 1e3 * step},
                  {"ratio_to_none", step / none},
                  {"plugin_share_of_step", 1.0 - none / step},
                  {"samples_per_step", samples},
                  {"model_gflop_per_second", samples * flop_per_sample / step / 1e9},
                  {"consolidate_seconds_after_task_1", median(consolidate_seconds[arm.name])},
                  {"average_accuracy", last[arm.name]["metrics"]["average_accuracy"]}};
    if (plugin.contains("held_by_host")) entry["held_by_host"] = plugin["held_by_host"];
    const json& held = entry.value("held_by_host", json::object());
    if (held.value("replay_samples", 0) > 0) {
      entry["replay_bytes_per_sample"] =
          held["replay_bytes"].get<double>() / held["replay_samples"].get<double>();
    }
    if (plugin.contains("report")) entry["report"] = plugin["report"];
    report["arms"].push_back(entry);
  }
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
}
