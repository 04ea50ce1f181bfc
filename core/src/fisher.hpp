// Diagonal Fisher information of the model on one task's training data, block by block.
// Internal to the core; plug-ins reach it through the clhost.gradstats/1 service.
#pragma once

#include <clhost/clhost_plugin.h>
#include <torch/nn/modules/container/sequential.h>

#include <functional>
#include <string>
#include <vector>

#include "data.hpp"
#include "distributed.hpp"

namespace clhost {

struct FisherContext {
  torch::nn::Sequential model;
  const TaskData* task = nullptr;
  torch::Tensor active_classes;  // output columns the task trains on
  torch::Tensor label_map;       // global label -> column in active_classes
  uint64_t seed = 0;             // for LABELS_SAMPLE
  // The ranks that share the pass: each computes its chunks of the samples (docs/distributed.md).
  Collective* collective = &single_process();
  // When set, counts the samples this rank pushed through the Fisher passes (once per pass, not
  // per block; label passes of a sample count once).
  int64_t* samples_computed = nullptr;
  // Told where a long pass is (about every 10 s); empty: silent.
  std::function<void(const std::string&)> progress;
};

// A contiguous range of whole rows (dim 0) of one parameter.
struct FisherSegment {
  size_t parameter = 0;
  int64_t row_begin = 0;
  int64_t row_end = 0;
};
using FisherBlock = std::vector<FisherSegment>;

// Groups parameters, in order, into blocks of at most block_size elements that follow layer
// boundaries; a parameter larger than block_size is cut into blocks of whole rows.
std::vector<FisherBlock> plan_fisher_blocks(const std::vector<torch::Tensor>& parameters,
                                            int64_t block_size);
// The same plan from the parameters' shapes alone (memory planning, before a model exists).
std::vector<FisherBlock> plan_fisher_blocks(const std::vector<std::vector<int64_t>>& shapes,
                                            int64_t block_size);
// Elements of the plan's largest block.
int64_t largest_block_elements(const std::vector<FisherBlock>& blocks,
                               const std::vector<std::vector<int64_t>>& shapes);

enum class FisherMethod {
  kAuto,           // batched exact for Linear/Conv2d, per-sample loop for anything else
  kPerSampleLoop,  // batch-of-1 loop for every parameter (the reference)
};

// Receives the Fisher of flat elements [offset, offset + values.numel()) of a parameter;
// values is 1-D, float32 for float32 models.
using FisherSink =
    std::function<void(size_t parameter, int64_t offset, const torch::Tensor& values)>;

// Mean over samples of the squared per-sample gradient (or, with request.batched, of squared
// mini-batch gradients), computed one block at a time. In a data-parallel run each rank sums its
// share of the chunks and the sums and counts are all-reduced: every rank's sink gets the same
// values. Throws RunError on bad requests.
void diagonal_fisher(const FisherContext& context, const clhost_fisher_request_t& request,
                     int64_t block_size, FisherMethod method, const FisherSink& sink);

// In place of the log-likelihood (clhost.output_grads/1): a function f of the scores (the active
// classes' logits) given by its gradient df/dscores [N, classes] for scores [N, classes] and
// targets [N] (indices into the scores); accumulated as |g_i| (absolute) or g_i^2.
struct OutputFunction {
  std::function<torch::Tensor(const torch::Tensor& scores, const torch::Tensor& targets)> gradient;
  bool absolute = false;
};

// Mean over samples of |g_i| or g_i^2, g_i the gradient of f on sample i, exactly as
// diagonal_fisher walks samples and blocks (request.labels and .batched are ignored).
// Classification tasks only.
void diagonal_output_gradients(const FisherContext& context, const clhost_fisher_request_t& request,
                               int64_t block_size, const OutputFunction& function,
                               const FisherSink& sink);

// Receives, block after block, the per-sample gradient rows R of a chunk of samples: the
// block's Fisher is (1/samples) * sum over the block's chunks of R^T R. R: [rows, block elements],
// columns in segment order; `last` marks the block's final chunk.
using SampleGradientSink =
    std::function<void(size_t block_index, size_t block_count, const FisherBlock& block,
                       const torch::Tensor& rows, int64_t samples, bool last)>;

// The per-sample gradients behind diagonal_fisher (same samples, labels and label draws): one
// row per sample, or per (class, sample) scaled by sqrt(p) for EXPECTATION. In a data-parallel
// run the ranks compute a chunk each and gather the rows: every rank's sink gets every chunk, in
// sample order.
void per_sample_gradients(const FisherContext& context, const clhost_fisher_request_t& request,
                          int64_t block_size, FisherMethod method, const SampleGradientSink& sink);

}  // namespace clhost
