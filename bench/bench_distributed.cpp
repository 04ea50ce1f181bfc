// Data-parallel throughput: the real clhost at 1 and 2 ranks (1 thread each) on split
// Fashion-MNIST with EWC, same global batch, runs alternated; per setting the median over the
// repetitions of training samples/s, the share of each step spent in collectives, and the Fisher
// pass (consolidation) time. Prints JSON (and writes it to argv[1]).
//
//   build/bin/bench_distributed bench/results/bench_distributed.json [repetitions]
#include <unistd.h>

#include <cstdlib>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_args.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Setting {
  std::string name;
  std::string overrides;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0.0 : values[values.size() / 2];
}

// One run; its results.json.
json run(const std::string& overrides, int ranks, const fs::path& out) {
  const std::string command = std::string(CLHOST_BINARY) + " run --quiet --config " +
                              CLHOST_SOURCE_DIR + "/configs/split_fmnist_ewc.toml --plugin-path " +
                              CLHOST_PLUGIN_DIR + " --output " + out.string() + " " + overrides +
                              (ranks > 1 ? " --nproc " + std::to_string(ranks) : "") + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[4096];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  if (pipe == nullptr || pclose(pipe) != 0) {
    std::cerr << command << "\n" << output;
    std::exit(1);
  }
  std::ifstream in(out / "results.json");
  return json::parse(in);
}

struct Measure {
  std::vector<double> samples_per_second;
  std::vector<double> communication_share;
  std::vector<double> consolidate_seconds;
  std::vector<double> evaluation_free_wall;
};

void record(const json& results, Measure& measure) {
  double samples = 0.0;
  double train_seconds = 0.0;
  double consolidate = 0.0;
  for (const auto& task : results["tasks"]) {
    samples += task["steps"].get<double>() * task["batch_size"].get<double>();
    train_seconds += task["train_seconds"].get<double>();
    consolidate += task["consolidate_seconds"].get<double>();
  }
  measure.samples_per_second.push_back(samples / train_seconds);
  measure.consolidate_seconds.push_back(consolidate);
  double share = 0.0;
  if (results["distributed"].is_object()) {
    for (const auto& rank : results["distributed"]["ranks"]) {
      share = std::max(share, rank["communication_share"].get<double>());
    }
  }
  measure.communication_share.push_back(share);
}

}  // namespace

int main(int argc, char** argv) try {
  const char* usage = "usage: bench_distributed [OUT.json [REPETITIONS]]";
  clhost::bench::check_arguments(argc, argv, usage);
  const int repetitions = static_cast<int>(
      clhost::bench::positive_number_argument(argc, argv, 2, "REPETITIONS", 3, usage, true));
  const fs::path scratch =
      fs::temp_directory_path() / ("bench_distributed_" + std::to_string(getpid()));
  const std::vector<Setting> settings = {
      {"MLP 784-400-400, batch 128 (configs/split_fmnist_ewc.toml)",
       "--set train.iterations=300 --set ewc.fisher_samples=2000"},
      {"MLP 784-2000-2000, batch 256",
       "--set train.iterations=60 --set model.hidden=[2000,2000] --set train.batch_size=256 "
       "--set ewc.fisher_samples=1000"}};
  json report{{"what",
               "training samples/s and Fisher-pass time at 1 and 2 ranks (1 thread each), "
               "same global batch, runs alternated; medians over repetitions"},
              {"machine_hardware_threads", std::thread::hardware_concurrency()},
              {"repetitions", repetitions},
              {"settings", json::array()}};
  for (const Setting& setting : settings) {
    Measure by_ranks[2];
    for (int r = 0; r < repetitions; ++r) {
      for (int ranks : {1, 2}) {
        const fs::path out = scratch / (std::to_string(ranks) + "_" + std::to_string(r));
        record(run(setting.overrides, ranks, out), by_ranks[ranks - 1]);
        fs::remove_all(out);
      }
    }
    json entry{{"model", setting.name}, {"overrides", setting.overrides}};
    for (int ranks : {1, 2}) {
      const Measure& m = by_ranks[ranks - 1];
      entry["ranks_" + std::to_string(ranks)] = {
          {"samples_per_second", median(m.samples_per_second)},
          {"communication_share_of_train_time", median(m.communication_share)},
          {"consolidate_seconds", median(m.consolidate_seconds)},
          {"all_samples_per_second", m.samples_per_second}};
    }
    entry["training_speedup"] =
        median(by_ranks[1].samples_per_second) / median(by_ranks[0].samples_per_second);
    entry["fisher_pass_speedup"] =
        median(by_ranks[0].consolidate_seconds) / median(by_ranks[1].consolidate_seconds);
    report["settings"].push_back(entry);
  }
  fs::remove_all(scratch);
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_distributed: " << e.what() << '\n';
  return 1;
}
