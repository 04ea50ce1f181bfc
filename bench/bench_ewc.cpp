// EWC benchmarks on real Fashion-MNIST with the real parts; prints one JSON
// document (and writes it to the path given as the first argument, if any).
//
//   build/bin/bench_ewc bench/results/bench_ewc.json
//
// 1. Fisher pass samples/s: exact batched vs the batch-of-1 loop (MLP 784-400-400-10).
// 2. EWC penalty + gradient time as a share of a training step, per state layout, and each
//    layout's penalty kernel against the memory-traffic floor of the same pass.
// 3. Peak temporary memory of the Fisher pass per block size on a 108M-parameter MLP.
// 4. Resident EWC state bytes/param (allocator-measured) after 1, 5 and 10 tasks, per layout.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_args.hpp"
#include "bench_timing.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/runner.hpp"
#include "mlp_fisher.hpp"
#include "penalty_timing.hpp"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

using clhost::bench::median_seconds;

json bench_fisher_pass(clhost::bench::MlpSetup& setup) {
  json out = json::array();
  for (const auto labels : {CLHOST_FISHER_LABELS_TRUE, CLHOST_FISHER_LABELS_EXPECTATION}) {
    clhost_fisher_request_t request{};
    request.struct_size = sizeof(request);
    request.labels = labels;
    request.batch_size = 256;
    const auto sink = [](size_t, int64_t, const torch::Tensor&) {};
    request.max_samples = 4096;
    const double batched = median_seconds(3, [&] {
      clhost::diagonal_fisher(setup.context, request, 1000000, clhost::FisherMethod::kAuto, sink);
    });
    const double batched_rate = static_cast<double>(request.max_samples) / batched;
    request.max_samples = 256;
    const double loop = median_seconds(3, [&] {
      clhost::diagonal_fisher(setup.context, request, 1000000, clhost::FisherMethod::kPerSampleLoop,
                              sink);
    });
    const double loop_rate = static_cast<double>(request.max_samples) / loop;
    out.push_back({{"labels", labels == CLHOST_FISHER_LABELS_TRUE ? "true" : "expectation"},
                   {"batched_exact_samples_per_second", batched_rate},
                   {"batch_of_one_loop_samples_per_second", loop_rate},
                   {"speedup", batched_rate / loop_rate}});
  }
  return out;
}

// Peak temporary memory of the exact Fisher pass (LibTorch tensor bytes above what was live
// before it, by clhost's counting allocator) on a 108M-parameter MLP, per fisher block size:
// it must follow the block, not the model.
json bench_fisher_block_memory(clhost::bench::MlpSetup& setup) {
  clhost::memory::install_counting_allocator();
  clhost::ModelSection wide;
  wide.hidden = {10000, 10000};
  torch::manual_seed(0);
  torch::nn::Sequential model = clhost::make_model(wide, 784, 28, 10);
  int64_t parameters = 0;
  for (const auto& parameter : model->parameters()) parameters += parameter.numel();
  clhost::FisherContext context = setup.context;
  context.model = model;
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = 8;
  request.max_samples = 16;
  json rows = json::array();
  for (const int64_t block :
       {int64_t{500000}, int64_t{1000000}, int64_t{10000000}, int64_t{100000000}}) {
    clhost::memory::reset_peak();
    const int64_t before = clhost::memory::current_bytes();
    const auto start = Clock::now();
    clhost::diagonal_fisher(context, request, block, clhost::FisherMethod::kAuto,
                            [](size_t, int64_t, const torch::Tensor&) {});
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const int64_t peak = clhost::memory::peak_bytes() - before;
    rows.push_back({{"block_size", block},
                    {"peak_temporary_bytes", peak},
                    {"peak_over_block_fp32_bytes", static_cast<double>(peak) / (4.0 * block)},
                    {"seconds", seconds}});
    std::cerr << "block " << block << ": peak " << peak << " bytes\n";
  }
  return {{"parameters", parameters},
          {"model_fp32_bytes", parameters * 4},
          {"samples", request.max_samples},
          {"batch", request.batch_size},
          {"blocks", rows}};
}

// Runs the real pipeline on permuted Fashion-MNIST (few steps) and reads the EWC plug-in's report.
json run_pipeline_with(const std::string& config_text, const std::vector<std::string>& set) {
  const fs::path dir =
      fs::temp_directory_path() / ("clhost_bench_run_" + std::to_string(std::rand()));
  fs::create_directories(dir);
  const std::string config_path = (dir / "c.toml").string();
  std::ofstream(config_path) << config_text;
  clhost::ConfigOverrides overrides;
  overrides.set = set;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  const auto config = clhost::load_config(config_path, overrides);
  clhost::RunOptions options;
  options.run_dir = (dir / "run").string();
  options.quiet = true;
  (void)clhost::run_pipeline(config, options);
  std::ifstream in(options.run_dir + "/results.json");
  json results = json::parse(in);
  fs::remove_all(dir);
  return results;
}

const char* const kSmallPermuted = R"(
[run]
threads = 1
[data]
scenario = "permuted"
train_samples_per_task = 2000
test_samples_per_task = 500
[train]
batch_size = 128
)";

json bench_state_and_penalty() {
  const std::vector<std::pair<std::string, std::vector<std::string>>> layouts = {
      {"separate",
       {"fisher_computation.use_memory_efficient=false", "pipeline.0.mode=\"separate\""}},
      {"online", {"fisher_computation.use_memory_efficient=false", "pipeline.0.mode=\"online\""}},
      {"efficient_fp32",
       {"fisher_computation.use_memory_efficient=true", "pipeline.0.state_dtype=\"fp32\""}},
      {"efficient_int8",
       {"fisher_computation.use_memory_efficient=true", "pipeline.0.state_dtype=\"int8\""}},
      {"efficient_int8_fp16",
       {"fisher_computation.use_memory_efficient=true", "pipeline.0.state_dtype=\"int8_fp16\""}},
      {"efficient_int4_int8 (default)",
       {"fisher_computation.use_memory_efficient=true", "pipeline.0.state_dtype=\"int4_int8\""}}};
  json state = json::array();
  for (const auto& [name, set] : layouts) {
    json entry = {{"layout", name}};
    for (int tasks : {1, 5, 10}) {
      auto overrides = set;
      overrides.push_back("data.num_tasks=" + std::to_string(tasks));
      overrides.push_back("train.iterations=20");
      const json results = run_pipeline_with(
          std::string(kSmallPermuted) +
              "[[pipeline]]\nplugin = \"ewc\"\nstore = false\nfisher_samples = 200\n",
          overrides);
      const json& report = results["plugins"][0]["report"];
      entry["bytes_per_parameter_after_" + std::to_string(tasks) + "_tasks"] =
          report["state_bytes_measured"].get<double>() / report["parameters"].get<double>();
    }
    state.push_back(entry);
  }
  // Step time with the penalty active (task 2 onwards) against plain fine-tuning.
  json penalty = json::array();
  const std::string two_tasks = std::string(kSmallPermuted);
  auto second_task_seconds_per_step = [](const json& results) {
    return results["tasks"][1]["train_seconds"].get<double>() /
           results["tasks"][1]["steps"].get<double>();
  };
  std::vector<double> baseline;
  for (int repetition = 0; repetition < 3; ++repetition) {
    baseline.push_back(second_task_seconds_per_step(
        run_pipeline_with(two_tasks, {"data.num_tasks=2", "train.iterations=300"})));
  }
  std::sort(baseline.begin(), baseline.end());
  for (const auto& [name, set] : layouts) {
    std::vector<double> times;
    for (int repetition = 0; repetition < 3; ++repetition) {
      auto overrides = set;
      overrides.push_back("data.num_tasks=2");
      overrides.push_back("train.iterations=300");
      times.push_back(second_task_seconds_per_step(run_pipeline_with(
          two_tasks + "[[pipeline]]\nplugin = \"ewc\"\nstore = false\nfisher_samples = 200\n",
          overrides)));
    }
    std::sort(times.begin(), times.end());
    penalty.push_back({{"layout", name},
                       {"step_ms_with_ewc", times[1] * 1e3},
                       {"step_ms_plain", baseline[1] * 1e3},
                       {"penalty_share_of_step", (times[1] - baseline[1]) / times[1]}});
  }
  return {{"state", state}, {"penalty_step_time", penalty}};
}

}  // namespace

int main(int argc, char** argv) {
  clhost::bench::check_arguments(argc, argv, "usage: bench_ewc [OUT.json]");
  at::set_num_threads(1);
  clhost::bench::MlpSetup setup = clhost::bench::make_mlp_setup();
  json report;
  report["machine"] = {{"torch_threads", at::get_num_threads()},
                       {"note", "medians of 3 runs, one process"}};
  report["fisher_pass"] = bench_fisher_pass(setup);
  std::cerr << "fisher pass done\n";
  report["fisher_pass_temporary_memory"] = bench_fisher_block_memory(setup);
  // The penalty kernels at this MLP's size (its state stays in cache) and at the 12-layer
  // transformer's (bench_sequence; in main memory), against the traffic floor.
  report["penalty_kernels"] = {
      {"mlp_478410", clhost::bench::time_penalty_kernels(478410, 201)},
      {"transformer_9641472", clhost::bench::time_penalty_kernels(9641472, 21)}};
  std::cerr << "penalty kernels done\n";
  const json state = bench_state_and_penalty();
  report["state_bytes_per_parameter"] = state["state"];
  report["penalty_step_time"] = state["penalty_step_time"];
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
}
