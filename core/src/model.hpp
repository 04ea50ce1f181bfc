// The built-in models. Internal to the core.
#pragma once

#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/optimizer.h>

#include <memory>

#include "clhost/config.hpp"

namespace clhost {

// MLP: input -> hidden[0] -> ... -> classes, ReLU between layers.
// CNN: two 5x5 conv layers (16, 32 channels) with ReLU and 2x2 max-pooling, then the MLP head
// over hidden sizes. Both take flat [N, side*side] inputs and return logits over all classes.
// Transformer: transformer.hpp.
torch::nn::Sequential make_model(const ModelSection& model, int64_t input_size, int64_t image_side,
                                 int64_t num_classes);

// The optimizer of train.optimizer over `params`.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const RunConfig& config,
                                                        const std::vector<torch::Tensor>& params);

// The shapes of the parameters make_model would create, in its parameters() order, without
// allocating them (memory planning for models larger than this machine). Built-in kinds only.
std::vector<std::vector<int64_t>> model_parameter_shapes(const ModelSection& model,
                                                         int64_t input_size, int64_t image_side,
                                                         int64_t num_classes);

}  // namespace clhost
