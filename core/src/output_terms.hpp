// The output loss terms of a training step (clhost.output_loss/1, ABI 1.7): each micro-batch's
// logits handed to the plug-ins that add a term on them, with their snapshot's logits on the
// same samples (clhost.snapshot/1); the terms' gradients are back-propagated with the data loss.
#pragma once

#include <clhost/clhost_plugin.h>
#include <torch/nn/modules/container/sequential.h>

#include <string>
#include <vector>

namespace clhost {

class PluginSet;
struct PluginInstance;

class OutputTerms {
 public:
  OutputTerms(PluginSet& plugins, torch::nn::Sequential model);

  // No plug-in adds a term: the step is the plain data loss.
  [[nodiscard]] bool empty() const { return plugins_.empty(); }
  // Before a task's steps: its index and the output columns it trains ([columns] uint8).
  void begin_task(uint32_t task, const torch::Tensor& active_columns);
  // Before each step's micro-batches; also clears the step's accumulated penalty.
  void begin_step(int64_t step);

  // Before a micro-batch's forward pass: the snapshots' logits on `x`. They run first because a
  // snapshot's forward swaps the model's tensors, which a recorded graph must never see.
  void before_forward(const torch::Tensor& x);
  // After the forward pass: the sum of every plug-in's term as a tensor whose gradient with
  // respect to `output` is the plug-ins' gradients times `share` (add it to the loss before
  // backward). `targets`: each sample's label column; `tasks`: each sample's task (int32).
  torch::Tensor after_forward(const torch::Tensor& output, const torch::Tensor& targets,
                              const torch::Tensor& tasks, double share);

  // The step's weighted sum of the plug-ins' values so far (the penalty they add).
  [[nodiscard]] double step_penalty() const { return step_penalty_; }
  // The first non-finite term of the step, named for the user; empty when all were finite.
  [[nodiscard]] const std::string& non_finite() const { return non_finite_; }

 private:
  struct Entry {
    PluginInstance* instance;
    const clhost_output_loss_v1_t* table;
    torch::Tensor snapshot_logits;  // this micro-batch's; undefined without a snapshot
  };
  torch::Tensor snapshot_forward(const std::vector<torch::Tensor>& snapshot,
                                 const torch::Tensor& x);

  std::vector<Entry> plugins_;
  torch::nn::Sequential model_;
  uint32_t task_ = 0;
  int64_t step_ = 0;
  torch::Tensor active_;
  double step_penalty_ = 0.0;
  std::string non_finite_;
};

}  // namespace clhost
