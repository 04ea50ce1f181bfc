// EWC and Fisher-store benchmarks on real Fashion-MNIST with the real parts; prints one JSON
// document (and writes it to the path given as the first argument, if any).
//
//   build/bin/bench_ewc bench/results/bench_ewc.json
//
// 1. Fisher pass samples/s: exact batched vs the batch-of-1 loop (MLP 784-400-400-10).
// 2. EWC penalty + gradient time as a share of a training step, per state layout, and each
//    layout's penalty kernel against the memory-traffic floor of the same pass.
// 3. Fisher store save/load MB/s and file size per codec and level, on a real Fisher.
// 4. Resident EWC state bytes/param (allocator-measured) after 1, 5 and 10 tasks, per layout.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_timing.hpp"
#include "penalty_timing.hpp"
#include "clhost/config.hpp"
#include "clhost/fisher_store.hpp"
#include "clhost/runner.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "model.hpp"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

using clhost::bench::median_seconds;

struct Setup {
  clhost::TaskSequence sequence;
  torch::nn::Sequential model;
  clhost::FisherContext context;
};

Setup make_setup() {
  Setup setup;
  clhost::DataSection data;
  setup.sequence = clhost::build_task_sequence(data, {}, 0);
  torch::manual_seed(0);
  setup.model = clhost::make_model(clhost::ModelSection{}, 784, 28, 10);
  setup.context.model = setup.model;
  setup.context.task = &setup.sequence.tasks[0];
  setup.context.active_classes = torch::tensor(std::vector<int64_t>{0, 1});
  setup.context.label_map = torch::full({10}, -1, torch::kInt64);
  setup.context.label_map[0] = 0;
  setup.context.label_map[1] = 1;
  return setup;
}

json bench_fisher_pass(Setup& setup) {
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

json bench_store(Setup& setup) {
  // A real diagonal Fisher: the untrained MLP on task 0 would be unrepresentative, so train
  // briefly.
  torch::optim::Adam optimizer(setup.model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto& task = setup.sequence.tasks[0];
  for (int step = 0; step < 300; ++step) {
    const auto rows = torch::randint(0, task.train_x.size(0), {128}, torch::kInt64);
    optimizer.zero_grad();
    const auto logits = setup.model->forward(task.train_x.index_select(0, rows))
                            .index_select(1, setup.context.active_classes);
    torch::nn::functional::cross_entropy(
        logits, setup.context.label_map.index_select(0, task.train_y.index_select(0, rows)))
        .backward();
    optimizer.step();
  }
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_EXPECTATION;
  request.batch_size = 256;
  const auto parameters = setup.model->parameters();
  std::vector<std::vector<float>> fisher(parameters.size());
  std::vector<clhost::ParameterInfo> model;
  const auto named = setup.model->named_parameters();
  for (size_t p = 0; p < parameters.size(); ++p) {
    fisher[p].resize(static_cast<size_t>(parameters[p].numel()));
    model.push_back({named[p].key(), parameters[p].sizes().vec()});
  }
  clhost::diagonal_fisher(setup.context, request, 1000000, clhost::FisherMethod::kAuto,
                          [&](size_t p, int64_t offset, const torch::Tensor& values) {
                            std::copy_n(values.data_ptr<float>(), values.numel(),
                                        fisher[p].begin() + offset);
                          });
  int64_t raw_bytes = 0;
  int64_t zeros = 0;
  for (const auto& values : fisher) {
    raw_bytes += static_cast<int64_t>(values.size() * sizeof(float));
    zeros += std::count(values.begin(), values.end(), 0.0F);
  }
  const fs::path dir = fs::temp_directory_path() / "clhost_bench_store";
  fs::create_directories(dir);
  json out = {{"raw_bytes", raw_bytes},
              {"exact_zero_fraction", static_cast<double>(zeros) / (raw_bytes / 4.0)},
              {"codecs", json::array()}};
  const std::vector<std::pair<std::string, int>> codecs = {
      {"gzip", 1}, {"gzip", 6},  {"gzip", 9},      {"none", 0},
      {"lz4", 0},  {"bzip2", 0}, {"blosc-lz4", 5}, {"blosc-zstd", 5}};
  for (const auto& [codec, level] : codecs) {
    for (const std::string dtype : {"fp32", "bf16"}) {
      if (dtype == "bf16" && !(codec == "gzip" && level == 6)) continue;
      clhost::StoreOptions options;
      options.codec = codec;
      options.level = std::max(level, 1);
      options.dtype = dtype;
      const std::string path =
          (dir / ("store_" + codec + std::to_string(level) + dtype + ".h5")).string();
      std::error_code ignored;
      int group = 0;
      const double save = median_seconds(3, [&] {
        fs::remove(path, ignored);
        clhost::FisherStore store(path, options, model, "bench");
        store.begin_group("task_" + std::to_string(group++), "bench");
        for (size_t p = 0; p < fisher.size(); ++p)
          store.write_block(p, 0, fisher[p].data(), static_cast<int64_t>(fisher[p].size()));
        store.commit_group();
      });
      clhost::FisherStore store(path, options, model, "bench");
      std::vector<float> buffer;
      const double load = median_seconds(3, [&] {
        for (size_t p = 0; p < fisher.size(); ++p) {
          buffer.resize(fisher[p].size());
          store.read_block("task_" + std::to_string(group - 1), p, 0, buffer.data(),
                           static_cast<int64_t>(buffer.size()));
        }
      });
      const auto file_bytes = static_cast<int64_t>(fs::file_size(path));
      out["codecs"].push_back(
          {{"codec", codec},
           {"level", level},
           {"dtype", dtype},
           {"file_bytes", file_bytes},
           {"ratio", static_cast<double>(raw_bytes) / static_cast<double>(file_bytes)},
           {"save_mb_per_second", raw_bytes / 1e6 / save},
           {"load_mb_per_second", raw_bytes / 1e6 / load}});
    }
  }
  fs::remove_all(dir);
  return out;
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
      {"efficient_int8_fp16 (default)",
       {"fisher_computation.use_memory_efficient=true",
        "pipeline.0.state_dtype=\"int8_fp16\""}}};
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
  at::set_num_threads(1);
  Setup setup = make_setup();
  json report;
  report["machine"] = {{"torch_threads", at::get_num_threads()},
                       {"note", "medians of 3 runs, one process"}};
  report["fisher_pass"] = bench_fisher_pass(setup);
  std::cerr << "fisher pass done\n";
  report["store"] = bench_store(setup);
  std::cerr << "store done\n";
  // The penalty kernels at this MLP's size (its state stays in cache) and at the 12-layer
  // transformer's (bench_sequence; in main memory), against the traffic floor.
  report["penalty_kernels"] = {{"mlp_478410", clhost::bench::time_penalty_kernels(478410, 201)},
                               {"transformer_9641472",
                                clhost::bench::time_penalty_kernels(9641472, 21)}};
  std::cerr << "penalty kernels done\n";
  const json state = bench_state_and_penalty();
  report["state_bytes_per_parameter"] = state["state"];
  report["penalty_step_time"] = state["penalty_step_time"];
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) std::ofstream(argv[1]) << text << '\n';
  return 0;
}
