// Low-rank + diagonal Fisher against diagonal EWC on the real MLP 784-400-400-10 and split
// Fashion-MNIST task 1: the consolidation pass (host Fisher pass + factor) and the penalty with
// its gradient per optimizer step, as a function of the rank. Prints one JSON document (and
// writes it to the first argument, if given).
//
//   build/bin/bench_lowrank bench/results/bench_lowrank.json
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_args.hpp"
#include "bench_timing.hpp"
#include "clhost/config.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "lowrank.hpp"
#include "model.hpp"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

using clhost::bench::median_seconds;

}  // namespace

int main(int argc, char** argv) {
  clhost::bench::check_arguments(argc, argv, "usage: bench_lowrank [OUT.json]");
  at::set_num_threads(1);
  clhost::DataSection data;
  const clhost::TaskSequence sequence = clhost::build_task_sequence(data, {}, 0);
  torch::manual_seed(0);
  auto model = clhost::make_model(clhost::ModelSection{}, 784, 28, 10);
  clhost::FisherContext context;
  context.model = model;
  context.task = &sequence.tasks[0];
  context.active_classes = torch::tensor(std::vector<int64_t>{0, 1});
  context.label_map = torch::full({10}, -1, torch::kInt64);
  context.label_map[0] = 0;
  context.label_map[1] = 1;
  int64_t parameters = 0;
  for (const auto& parameter : model->parameters()) parameters += parameter.numel();

  // The plug-ins' defaults: EWC uses every task sample (12,000) with batches of 256; the low-rank
  // Fisher 500 samples (1,000 rows with 2 classes) in chunks of 32.
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_EXPECTATION;
  request.batch_size = 256;
  const double diagonal_seconds = median_seconds(3, [&] {
    clhost::diagonal_fisher(context, request, 1000000, clhost::FisherMethod::kAuto,
                            [](size_t, int64_t, const torch::Tensor&) {});
  });
  json out{{"model", "MLP 784-400-400-10, one Fisher block"},
           {"parameters", parameters},
           {"torch_threads", at::get_num_threads()},
           {"diagonal_ewc",
            {{"fisher_samples", sequence.tasks[0].train_size()},
             {"fisher_pass_seconds", diagonal_seconds}}},
           {"lowrank", json::array()}};

  request.batch_size = 32;
  request.max_samples = 500;
  const torch::Tensor d = torch::randn({parameters}) * 1e-3;
  const torch::Tensor diagonal = torch::rand({parameters});
  torch::Tensor gradient;
  const double diagonal_penalty = median_seconds(51, [&] {
    gradient = diagonal * d;
    (void)gradient.dot(d).item<double>();
  });
  out["diagonal_ewc"]["penalty_seconds_per_step"] = diagonal_penalty;
  for (const int64_t rank : {2, 10, 50, 100}) {
    clhost::lowrank::Factor factor;
    double rows_seconds = 0.0;
    const double pass_seconds = median_seconds(3, [&] {
      std::unique_ptr<clhost::lowrank::FactorBuilder> builder;
      double in_rows = 0.0;
      auto last = Clock::now();
      clhost::per_sample_gradients(context, request, 1000000, clhost::FisherMethod::kAuto,
                                   [&](size_t, size_t, const clhost::FisherBlock&,
                                       const torch::Tensor& rows, int64_t samples, bool is_last) {
                                     in_rows +=
                                         std::chrono::duration<double>(Clock::now() - last).count();
                                     if (!builder) {
                                       builder = std::make_unique<clhost::lowrank::FactorBuilder>(
                                           rows.size(1), rank, 1000, 7);
                                     }
                                     builder->add(rows);
                                     if (is_last) factor = builder->finish(samples);
                                     last = Clock::now();
                                   });
      rows_seconds = in_rows;
    });
    const double penalty =
        median_seconds(51, [&] { (void)clhost::lowrank::quadratic(factor, d, &gradient); });
    out["lowrank"].push_back({{"rank", rank},
                              {"fisher_samples", 500},
                              {"gradient_rows", 1000},
                              {"consolidation_seconds", pass_seconds},
                              {"of_which_host_gradient_rows_seconds", rows_seconds},
                              {"penalty_seconds_per_step", penalty},
                              {"penalty_vs_diagonal", penalty / diagonal_penalty},
                              {"state_bytes_per_parameter", 4.0 * static_cast<double>(rank + 2)}});
    std::cerr << "rank " << rank << ": consolidation " << pass_seconds << " s, penalty "
              << penalty * 1e3 << " ms/step\n";
  }
  std::cout << out.dump(2) << "\n";
  if (argc > 1) clhost::bench::write_json(argv[1], out.dump(2));
  return 0;
}
