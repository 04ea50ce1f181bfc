// The 784-400-400-10 MLP on split Fashion-MNIST's first task, shared by bench_ewc (the Fisher
// pass) and bench_store (a real Fisher to save).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/fisher_store.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "model.hpp"

namespace clhost::bench {

struct MlpSetup {
  TaskSequence sequence;
  torch::nn::Sequential model;
  FisherContext context;
};

inline MlpSetup make_mlp_setup() {
  MlpSetup setup;
  setup.sequence = build_task_sequence(DataSection{}, {}, 0);
  torch::manual_seed(0);
  setup.model = make_model(ModelSection{}, 784, 28, 10);
  setup.context.model = setup.model;
  setup.context.task = &setup.sequence.tasks[0];
  setup.context.active_classes = torch::tensor(std::vector<int64_t>{0, 1});
  setup.context.label_map = torch::full({10}, -1, torch::kInt64);
  setup.context.label_map[0] = 0;
  setup.context.label_map[1] = 1;
  return setup;
}

struct RealFisher {
  std::vector<ParameterInfo> model;
  std::vector<std::vector<float>> values;  // per parameter
};

// A real diagonal Fisher (exact, expectation labels): the untrained MLP would be
// unrepresentative, so it trains 300 steps first.
inline RealFisher trained_mlp_fisher(MlpSetup& setup) {
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
  const auto named = setup.model->named_parameters();
  RealFisher fisher;
  fisher.values.resize(parameters.size());
  for (size_t p = 0; p < parameters.size(); ++p) {
    fisher.values[p].resize(static_cast<size_t>(parameters[p].numel()));
    fisher.model.push_back({named[p].key(), parameters[p].sizes().vec()});
  }
  diagonal_fisher(setup.context, request, 1000000, FisherMethod::kAuto,
                  [&](size_t p, int64_t offset, const torch::Tensor& values) {
                    std::copy_n(values.data_ptr<float>(), values.numel(),
                                fisher.values[p].begin() + offset);
                  });
  return fisher;
}

}  // namespace clhost::bench
