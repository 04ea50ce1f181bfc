// Sequence-model benchmarks on real text (Debian's English fortunes) with the real parts; prints
// one JSON document (and writes it to the path given as the first argument, if any).
//
//   build/bin/bench_sequence bench/results/bench_sequence.json
//
// 1. Fisher pass samples/s on a ~10M-parameter transformer at context 128: the batched exact
//    per-sample Fisher (one forward and backward per chunk and block, per-sample products of
//    captured inputs and output gradients) against the per-sample loop (one backward per sample).
// 2. Training tokens/s (forward, backward, Adam step) of the same model.
// 3. The EWC penalty's share of a training step, from the real pipeline (two languages).
// 4. run.keep_freed_memory: training steps and the batched Fisher pass with glibc's own
//    thresholds, with 0 and with the default 1 GiB, one after the other in this process; the
//    benchmarks 1-3 then run with the default, as clhost run does.
// With --fisher-block-memory CONFIG [out.json] it only measures the Fisher pass's temporary memory
// per block size on CONFIG's model (bench/results/fisher_block_memory_billion.json).
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "bench_args.hpp"
#include "bench_timing.hpp"
#include "clhost/config.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/runner.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "model.hpp"
#include "penalty_timing.hpp"

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using clhost::bench::median_seconds;

clhost::ModelSection ten_million() {
  clhost::ModelSection model;
  model.kind = clhost::ModelKind::kTransformer;
  model.layers = 12;
  model.heads = 8;
  model.d_model = 256;
  model.context = 128;
  model.mlp_ratio = 4;
  return model;
}

clhost::TaskSequence english(int64_t windows, int64_t context) {
  clhost::DataSection data;
  data.kind = clhost::DataKind::kText;
  data.languages = {"en"};
  data.num_tasks = 1;
  data.train_samples_per_task = windows;
  data.test_samples_per_task = 1;
  return clhost::build_text_tasks(data, context, {}, 0);
}

int64_t parameter_count(torch::nn::Sequential& model) {
  int64_t count = 0;
  for (const auto& parameter : model->parameters()) count += parameter.numel();
  return count;
}

// Samples/s of one Fisher pass; the loop and the batched pass both run one forward (and a backward
// to the block's layers) per block, so the block plan multiplies both costs alike.
double fisher_samples_per_second(const clhost::FisherContext& context, clhost::FisherMethod method,
                                 int64_t samples, int64_t block_size) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = 16;
  request.max_samples = samples;
  const double seconds = median_seconds(1, [&] {
    clhost::diagonal_fisher(context, request, block_size, method,
                            [](size_t, int64_t, const torch::Tensor&) {});
  });
  return static_cast<double>(samples) / seconds;
}

// The Fisher pass over the first text task, every byte an output class.
clhost::FisherContext byte_fisher_context(torch::nn::Sequential& model,
                                          const clhost::TaskSequence& sequence) {
  clhost::FisherContext context;
  context.model = model;
  context.task = sequence.tasks.data();
  context.active_classes = torch::arange(256, torch::kInt64);
  context.label_map = torch::arange(256, torch::kInt64);
  return context;
}

json bench_fisher(torch::nn::Sequential& model, const clhost::TaskSequence& sequence) {
  const clhost::FisherContext context = byte_fisher_context(model, sequence);
  const int64_t whole = parameter_count(model);
  json out = json::array();
  // (block size, samples for the batched pass, samples for the loop)
  for (const auto& [block_size, batched_samples, loop_samples] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{whole, 32, 4}, {1000000, 16, 2}}) {
    const double batched = fisher_samples_per_second(context, clhost::FisherMethod::kAuto,
                                                     batched_samples, block_size);
    const double loop = fisher_samples_per_second(context, clhost::FisherMethod::kPerSampleLoop,
                                                  loop_samples, block_size);
    std::cerr << "block " << block_size << ": batched " << batched << ", loop " << loop
              << " samples/s\n";
    const auto blocks =
        static_cast<int64_t>(clhost::plan_fisher_blocks(model->parameters(), block_size).size());
    out.push_back(
        {{"block_size", block_size},
         {"blocks", blocks},
         {"labels", "true"},
         {"chunk", 16},
         {"batched_exact_samples_per_second", batched},
         {"per_sample_loop_samples_per_second", loop},
         {"speedup", batched / loop},
         {"samples", {{"batched_exact", batched_samples}, {"per_sample_loop", loop_samples}}}});
  }
  return out;
}

json bench_training(torch::nn::Sequential& model, const clhost::TaskSequence& sequence) {
  const clhost::TaskData& task = sequence.tasks[0];
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-4));
  model->train();
  const int64_t batch = 16;
  int64_t cursor = 0;
  const double seconds = median_seconds(3, [&] {
    const torch::Tensor x = task.train_x.narrow(0, cursor, batch).to(torch::kInt64);
    const torch::Tensor y = task.train_y.narrow(0, cursor, batch).to(torch::kInt64);
    cursor = (cursor + batch) % (task.train_size() - batch);
    optimizer.zero_grad();
    const torch::Tensor logits = model->forward(x);
    torch::nn::functional::cross_entropy(logits.reshape({-1, 256}), y.reshape({-1})).backward();
    optimizer.step();
  });
  const double tokens = static_cast<double>(batch * 128);
  // Forward + backward of a decoder: ~6 FLOPs per parameter and token (attention scores aside).
  const double flops = 6.0 * static_cast<double>(parameter_count(model)) * tokens;
  return {{"batch", batch},
          {"context", 128},
          {"step_ms", seconds * 1e3},
          {"tokens_per_second", tokens / seconds},
          {"gflops_per_second_6nd", flops / seconds / 1e9}};
}

const char* const kTwoLanguages = R"(
[run]
threads = 1
checkpoint_every = 0
[data]
kind = "text"
languages = ["en", "de"]
train_samples_per_task = 4000
test_samples_per_task = 50
[model]
kind = "transformer"
layers = 4
heads = 4
d_model = 128
context = 128
[train]
batch_size = 16
iterations = 60
eval_batch_size = 50
)";

// Seconds per step of the second task (where EWC's penalty is active), from the real pipeline.
double second_task_step_seconds(const std::string& pipeline) {
  const fs::path dir =
      fs::temp_directory_path() / ("clhost_bench_seq_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string config_path = (dir / "c.toml").string();
  std::ofstream(config_path) << kTwoLanguages << pipeline;
  clhost::ConfigOverrides overrides;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR};
  clhost::RunOptions options;
  options.run_dir = (dir / "run").string();
  options.quiet = true;
  (void)clhost::run_pipeline(clhost::load_config(config_path, overrides), options);
  std::ifstream in(options.run_dir + "/results.json");
  const json results = json::parse(in);
  fs::remove_all(dir);
  return results["tasks"][1]["train_seconds"].get<double>() /
         results["tasks"][1]["steps"].get<double>();
}

json bench_penalty() {
  std::vector<double> plain;
  std::vector<double> ewc;
  for (int repetition = 0; repetition < 3; ++repetition) {
    plain.push_back(second_task_step_seconds(""));
    ewc.push_back(second_task_step_seconds(
        "[[pipeline]]\nplugin = \"ewc\"\nlabels = \"true\"\nstore = false\nfisher_samples = 64\n"
        "fisher_batch_size = 16\n"));
  }
  std::sort(plain.begin(), plain.end());
  std::sort(ewc.begin(), ewc.end());
  return {{"model", "4 layers, d_model 128, context 128, batch 16"},
          {"step_ms_plain", plain[1] * 1e3},
          {"step_ms_with_ewc", ewc[1] * 1e3},
          {"penalty_share_of_step", (ewc[1] - plain[1]) / ewc[1]}};
}

// What handing freed memory back to the operating system costs: the same work with glibc's own
// (adaptive) thresholds, with run.keep_freed_memory = 0 and with the default.
json bench_allocator(torch::nn::Sequential& model, const clhost::TaskSequence& sequence) {
  const clhost::FisherContext context = byte_fisher_context(model, sequence);
  const int64_t whole = parameter_count(model);
  json out = json::array();
  const int64_t default_bytes = clhost::RunSection{}.keep_freed_memory;
  for (const int64_t keep : {int64_t{-1}, int64_t{0}, default_bytes}) {
    if (keep >= 0) clhost::memory::keep_freed_memory(keep);
    const double fisher =
        fisher_samples_per_second(context, clhost::FisherMethod::kAuto, 16, whole);
    const json training = bench_training(model, sequence);
    std::cerr << "keep_freed_memory " << keep << ": fisher " << fisher << " samples/s, step "
              << training["step_ms"] << " ms\n";
    out.push_back({{"keep_freed_memory", keep < 0 ? json("glibc default (adaptive)") : json(keep)},
                   {"fisher_batched_samples_per_second", fisher},
                   {"training_step_ms", training["step_ms"]},
                   {"training_tokens_per_second", training["tokens_per_second"]}});
  }
  return out;
}

// Stops a Fisher pass once enough of it has been measured.
struct EnoughMeasured {};

// Peak temporary memory of the Fisher pass on the model of a config (the billion-parameter
// transformer) per block size: LibTorch tensor bytes above the weights, by clhost's counting
// allocator, over the pass's first blocks — those of the first layers, whose backward runs through
// the whole model, so the pass's largest transient — with the run's own samples per pass. The
// first two blocks' worth of elements is measured at every size (a whole pass at 0.5M-parameter
// blocks would run about 2,000 forward passes of the model).
json bench_fisher_block_memory(const std::string& config_path) {
  const clhost::RunConfig config = clhost::load_config(config_path);
  clhost::memory::install_counting_allocator();
  torch::manual_seed(0);
  auto model = clhost::make_model(config.model, config.model.context, 0, 256);
  const int64_t parameters = parameter_count(model);
  const int64_t samples = 32;  // the config's fisher_samples, all in one pass (its batch is 256)
  const clhost::TaskSequence sequence = english(samples, config.model.context);
  const clhost::FisherContext context = byte_fisher_context(model, sequence);
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = samples;
  request.max_samples = samples;
  json rows = json::array();
  for (const int64_t block :
       {int64_t{500000}, int64_t{1000000}, int64_t{10000000}, int64_t{100000000}}) {
    clhost::memory::reset_peak();
    const int64_t before = clhost::memory::current_bytes();
    int64_t emitted = 0;
    const auto start = std::chrono::steady_clock::now();
    try {
      clhost::diagonal_fisher(context, request, block, clhost::FisherMethod::kAuto,
                              [&](size_t, int64_t, const torch::Tensor& values) {
                                emitted += values.numel();
                                if (emitted >= 2 * block) throw EnoughMeasured{};
                              });
    } catch (const EnoughMeasured&) {
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t peak = clhost::memory::peak_bytes() - before;
    rows.push_back({{"block_size", block},
                    {"parameters_measured", emitted},
                    {"peak_temporary_bytes", peak},
                    {"seconds", seconds}});
    std::cerr << "block " << block << ": peak " << peak << " bytes over " << emitted
              << " parameters, " << seconds << " s\n";
  }
  return {{"config", config_path},
          {"parameters", parameters},
          {"model_fp32_bytes", parameters * 4},
          {"samples_per_pass", samples},
          {"blocks", rows}};
}

}  // namespace

int main(int argc, char** argv) try {
  clhost::bench::check_arguments(argc, argv,
                                 "usage: bench_sequence [OUT.json]\n       bench_sequence "
                                 "--fisher-block-memory CONFIG.toml [OUT.json]",
                                 {"--fisher-block-memory"});
  at::set_num_threads(1);
  if (argc > 1 && std::string(argv[1]) == "--fisher-block-memory") {
    if (argc < 3) {
      std::cerr << "bench_sequence: --fisher-block-memory needs a config (CONFIG.toml)\n";
      return 2;
    }
    // bench_sequence --fisher-block-memory configs/billion_transformer.toml [out.json]
    at::set_num_threads(2);
    const std::string text =
        json{{"fisher_pass_temporary_memory", bench_fisher_block_memory(argv[2])}}.dump(2);
    std::cout << text << '\n';
    if (argc > 3) clhost::bench::write_json(argv[3], text);
    return 0;
  }
  torch::manual_seed(0);
  auto model = clhost::make_model(ten_million(), 128, 0, 256);
  const clhost::TaskSequence sequence = english(512, 128);
  json report;
  report["machine"] = {{"torch_threads", at::get_num_threads()},
                       {"note", "medians of repeated runs in one process (the loop: one run)"}};
  report["model"] = {{"layers", 12},
                     {"heads", 8},
                     {"d_model", 256},
                     {"context", 128},
                     {"parameters", parameter_count(model)}};
  report["allocator"] = bench_allocator(model, sequence);
  report["fisher_pass"] = bench_fisher(model, sequence);
  report["training"] = bench_training(model, sequence);
  std::cerr << "training done\n";
  report["ewc_penalty"] = bench_penalty();
  report["ewc_penalty"]["kernels_at_this_model"] =
      clhost::bench::time_penalty_kernels(parameter_count(model), 11);
  for (auto& row : report["ewc_penalty"]["kernels_at_this_model"]) {
    row["share_of_training_step"] =
        row["kernel_ms"].get<double>() / report["training"]["step_ms"].get<double>();
  }
  const std::string text = report.dump(2);
  std::cout << text << '\n';
  if (argc > 1) clhost::bench::write_json(argv[1], text);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_sequence: " << e.what() << '\n';
  return 1;
}
