// Diagonal Fisher information of the model on one task's training data. Internal to the core;
// plug-ins reach it through the clhost.gradstats/1 service.
#pragma once

#include <clhost/clhost_plugin.h>
#include <torch/nn/modules/container/sequential.h>

#include <vector>

#include "data.hpp"

namespace clhost {

struct FisherContext {
  torch::nn::Sequential model;
  const TaskData* task = nullptr;
  torch::Tensor active_classes;  // output columns the task trains on
  torch::Tensor label_map;       // global label -> column in active_classes
  uint64_t seed = 0;             // for LABELS_SAMPLE
};

// Mean over samples of the squared per-sample gradient (or of squared mini-batch gradients when
// request.batched), one float32 tensor per model parameter. Throws RunError on bad requests.
std::vector<torch::Tensor> diagonal_fisher(const FisherContext& context,
                                           const clhost_fisher_request_t& request);

}  // namespace clhost
