// Activation checkpointing for Sequential models (LibTorch C++ has no checkpoint API): the model's
// children are cut into segments; each segment runs without keeping its activations and is run
// again during backward. Trades one extra forward per segment for activation memory.
#pragma once

#include <torch/nn/modules/container/sequential.h>

namespace clhost {

// Forward of `model` on `input`. segments <= 1: a plain forward. Otherwise the children are split
// into `segments` consecutive groups, each checkpointed. Gradients equal the plain forward's.
torch::Tensor checkpointed_forward(torch::nn::Sequential& model, const torch::Tensor& input,
                                   int64_t segments);

}  // namespace clhost
