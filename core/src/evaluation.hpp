// Which output columns a task trains and is evaluated on (task-, domain- or class-incremental),
// and the evaluation of every task's test set: accuracy, or bits per byte for text tasks.
#pragma once

#include <torch/nn/modules/container/sequential.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "clhost/config.hpp"
#include "data.hpp"
#include "distributed.hpp"

namespace clhost {

// Columns of the model's output a task uses, and the label -> column map.
struct ClassView {
  torch::Tensor active;     // int64 column indices
  torch::Tensor label_map;  // [num_classes] global label -> index into active (-1 if absent)
};

// The view task `task` trains on (class-incremental: every class seen so far; text: every byte).
ClassView training_view(const RunConfig& config, const TaskSequence& sequence, size_t task);

// The samples an evaluation scores: each task's test set, or its data.validation samples.
enum class EvalSplit { kTest, kValidation };

// Accuracy (text: bits per byte) on every task's test (or validation) samples, in task order
// (the model is left in training mode). In a data-parallel run each rank scores a share of every
// task's samples and the counts are added up: every rank gets the same result.
std::vector<double> evaluate_all_tasks(torch::nn::Sequential& model, const RunConfig& config,
                                       const TaskSequence& sequence,
                                       Collective& collective = single_process(),
                                       EvalSplit split = EvalSplit::kTest);

}  // namespace clhost
