// What memory_profiler costs the training it watches: split Fashion-MNIST (MLP 784-400-400,
// batch 128) with no profiler, and with memory_profiler sampling every 10 ms and every 50 ms,
// arms interleaved over several rounds, on two cores and pinned to one core (where the sampler
// competes with the trainer for the same CPU: the worst case). Prints JSON, writes it to argv[1].
//
//   build/bin/bench_profiler bench/results/bench_profiler.json [rounds]
#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "bench_args.hpp"
#include "clhost/config.hpp"
#include "clhost/runner.hpp"

namespace {

using nlohmann::json;

struct Arm {
  std::string name;
  std::string pipeline;  // TOML appended to the config
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n == 0 ? 0.0 : n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

bool pin_to(int cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu = 0; cpu < cpus; ++cpu) CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const char* usage = "usage: bench_profiler [OUT.json [ROUNDS]]";
  clhost::bench::check_arguments(argc, argv, usage);
  const int rounds = static_cast<int>(
      clhost::bench::positive_number_argument(argc, argv, 2, "ROUNDS", 5, usage, true));
  const std::string config_path = std::string(CLHOST_SOURCE_DIR) + "/configs/split_fmnist.toml";
  const std::vector<Arm> arms{
      {"no profiler", ""},
      {"memory_profiler 10 ms", "[[pipeline]]\nplugin = \"memory_profiler\"\ninterval_ms = 10.0\n"},
      {"memory_profiler 50 ms", "[[pipeline]]\nplugin = \"memory_profiler\"\ninterval_ms = 50.0\n"},
  };
  const auto scratch = std::filesystem::temp_directory_path() /
                       ("clhost-bench-profiler-" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(scratch);
  std::vector<std::string> configs;
  const std::string base{std::istreambuf_iterator<char>(std::ifstream(config_path).rdbuf()), {}};
  for (size_t a = 0; a < arms.size(); ++a) {
    configs.push_back((scratch / ("arm" + std::to_string(a) + ".toml")).string());
    std::ofstream(configs.back()) << base << "\n" << arms[a].pipeline;
  }
  json modes = json::array();
  for (const int cpus : {2, 1}) {
    if (!pin_to(cpus)) std::cerr << "could not pin to " << cpus << " CPU(s)\n";
    std::vector<std::vector<double>> step_ms(arms.size());
    std::vector<std::vector<double>> sampler_us(arms.size());
    std::vector<std::vector<double>> sampler_share(arms.size());
    for (int round = 0; round < rounds; ++round) {
      for (size_t a = 0; a < arms.size(); ++a) {
        clhost::ConfigOverrides overrides;
        overrides.set = {"train.iterations=150"};
        overrides.plugin_path = {CLHOST_PLUGIN_DIR};
        clhost::RunOptions options;
        options.run_dir = (scratch / (std::to_string(cpus) + "-" + std::to_string(round) + "-" +
                                      std::to_string(a)))
                              .string();
        options.quiet = true;
        clhost::run_pipeline(clhost::load_config(configs[a], overrides), options);
        const json results = json::parse(std::ifstream(options.run_dir + "/results.json"));
        double seconds = 0;
        int64_t steps = 0;
        for (const auto& task : results["tasks"]) {
          seconds += task["train_seconds"].get<double>();
          steps += task["steps"].get<int64_t>();
        }
        step_ms[a].push_back(1e3 * seconds / static_cast<double>(steps));
        if (!arms[a].pipeline.empty()) {
          const json& sampler = results["plugins"][0]["report"]["sampler"];
          sampler_us[a].push_back(sampler["cpu_per_sample_us"]);
          sampler_share[a].push_back(sampler["cpu_share_of_one_core"]);
        }
      }
    }
    json mode{{"cpus", cpus}, {"rounds", rounds}, {"arms", json::array()}};
    const double baseline = median(step_ms[0]);
    for (size_t a = 0; a < arms.size(); ++a) {
      json arm{{"arm", arms[a].name},
               {"step_ms_median", median(step_ms[a])},
               {"step_ms_runs", step_ms[a]},
               {"step_time_vs_no_profiler", median(step_ms[a]) / baseline}};
      if (!sampler_us[a].empty()) {
        arm["sampler_cpu_per_sample_us_median"] = median(sampler_us[a]);
        arm["sampler_cpu_share_of_one_core_median"] = median(sampler_share[a]);
      }
      mode["arms"].push_back(arm);
    }
    modes.push_back(mode);
  }
  std::filesystem::remove_all(scratch);
  const json report{{"benchmark", "memory_profiler overhead on split Fashion-MNIST training"},
                    {"workload", "MLP 784-400-400, Adam, batch 128, 5 tasks x 150 steps"},
                    {"metric",
                     "training time per optimizer step (evaluation excluded), median "
                     "over rounds; arms interleaved within each round"},
                    {"modes", modes}};
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_profiler: " << e.what() << '\n';
  return 1;
}
