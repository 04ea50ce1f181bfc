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

// One optimizer step's forward/backward: the samples `rows` of (x, labels) in micro-batches of
// `micro_batch`, each micro-batch's mean loss weighted by its share of the batch, so the
// accumulated gradients equal the whole batch's mean-loss gradient. Labels are mapped to output
// columns by `label_map`; logits are restricted to `active`. Adds the samples it pushed through
// to *samples_processed as each forward starts (so a micro-batch that then fails counts) and
// returns the batch's loss. Throws LibTorch's errors, out-of-memory included; the caller zeroes
// gradients and retries.
double accumulate_batch_gradients(torch::nn::Sequential& model, const torch::Tensor& x,
                                  const torch::Tensor& labels, const torch::Tensor& label_map,
                                  const torch::Tensor& active, const torch::Tensor& rows,
                                  int64_t micro_batch, int64_t checkpoint_segments,
                                  int64_t* samples_processed);

}  // namespace clhost
