// Fisher pass samples/s on a TorchScript model: the exact batched path (Linear/Conv2d links)
// against the per-sample loop, on real Fashion-MNIST. Prints one JSON document (and writes it to
// the second argument, if given).
//
//   /usr/bin/python3 examples/torchscript/export.py /tmp/export --limit 1000
//   build/bin/bench_torchscript_fisher /tmp/export/cnn.pt
//   bench/results/bench_torchscript_fisher.json
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_args.hpp"
#include "clhost/config.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "scripted_model.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double samples_per_second(const clhost::FisherContext& context, clhost_fisher_labels_t labels,
                          clhost::FisherMethod method, int64_t samples, int repetitions) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = labels;
  request.batch_size = 64;
  request.max_samples = samples;
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = Clock::now();
    clhost::diagonal_fisher(context, request, 1000000, method,
                            [](size_t, int64_t, const torch::Tensor&) {});
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return static_cast<double>(samples) / times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: bench_torchscript_fisher MODEL.pt [OUT.json]";
  clhost::bench::check_arguments(argc, argv, usage);
  if (argc < 2) {
    std::cerr << usage << '\n';
    return 2;
  }
  at::set_num_threads(1);
  clhost::DataSection data;
  const clhost::TaskSequence sequence = clhost::build_task_sequence(data, {}, 0);
  clhost::ModelSection section;
  section.kind = clhost::ModelKind::kTorchScript;
  section.path = argv[1];
  section.input_shape = {1, 28, 28};
  const clhost::ScriptedModel model = clhost::load_scripted_model(section, 784, 10);
  clhost::FisherContext context;
  context.model = model.net;
  context.task = &sequence.tasks[0];
  context.active_classes = torch::tensor(std::vector<int64_t>{0, 1});
  context.label_map = torch::full({10}, -1, torch::kInt64);
  context.label_map[0] = 0;
  context.label_map[1] = 1;
  nlohmann::json out{{"model", argv[1]},
                     {"layers", model.layer_notes},
                     {"torch_threads", at::get_num_threads()},
                     {"task", "split Fashion-MNIST task 1 (classes 0, 1)"},
                     {"results", nlohmann::json::array()}};
  for (const auto& [labels, name] : {std::pair{CLHOST_FISHER_LABELS_TRUE, "true"},
                                     std::pair{CLHOST_FISHER_LABELS_EXPECTATION, "expectation"}}) {
    const double batched =
        samples_per_second(context, labels, clhost::FisherMethod::kAuto, 2048, 5);
    const double loop =
        samples_per_second(context, labels, clhost::FisherMethod::kPerSampleLoop, 256, 3);
    out["results"].push_back({{"labels", name},
                              {"batched_samples_per_second", batched},
                              {"per_sample_loop_samples_per_second", loop},
                              {"speedup", batched / loop}});
  }
  std::cout << out.dump(2) << "\n";
  if (argc > 2) clhost::bench::write_json(argv[2], out.dump(2));
  return 0;
}
