#include "output_terms.hpp"

#include <torch/torch.h>

#include <cmath>

#include "host_services.hpp"
#include "plugin_set.hpp"

namespace clhost {
namespace {

// Puts the snapshot's tensors into the model for one forward pass and the live ones back on every
// exit. set_data swaps storage without copying; no graph may hold the parameters meanwhile.
class SnapshotSwap {
 public:
  SnapshotSwap(torch::nn::Sequential& model, const std::vector<torch::Tensor>& snapshot)
      : model_(model), was_training_(model->is_training()) {
    for (const auto& parameter : model->parameters()) tensors_.push_back(parameter);
    for (const auto& buffer : model->buffers()) tensors_.push_back(buffer);
    if (tensors_.size() != snapshot.size()) {
      throw std::logic_error("a snapshot of another model");
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      live_.push_back(tensors_[i].data());
      tensors_[i].set_data(snapshot[i]);
    }
    model_->eval();
  }
  ~SnapshotSwap() {
    for (size_t i = 0; i < live_.size(); ++i) tensors_[i].set_data(live_[i]);
    if (was_training_) model_->train();
  }
  SnapshotSwap(const SnapshotSwap&) = delete;
  SnapshotSwap& operator=(const SnapshotSwap&) = delete;
  SnapshotSwap(SnapshotSwap&&) = delete;
  SnapshotSwap& operator=(SnapshotSwap&&) = delete;

 private:
  torch::nn::Sequential& model_;
  bool was_training_;
  std::vector<torch::Tensor> tensors_;
  std::vector<torch::Tensor> live_;
};

}  // namespace

OutputTerms::OutputTerms(PluginSet& plugins, torch::nn::Sequential model)
    : model_(std::move(model)) {
  for (size_t i = 0; i < plugins.size(); ++i) {
    PluginInstance& instance = plugins.at(i);
    if (instance.kind() != CLHOST_PLUGIN_KIND_REGULARIZER) continue;
    const auto* table = static_cast<const clhost_output_loss_v1_t*>(
        instance.plugin->entry->get_interface(CLHOST_INTERFACE_OUTPUT_LOSS_V1));
    if (table != nullptr && table->output_loss != nullptr) {
      plugins_.push_back(Entry{&instance, table, {}});
    }
  }
}

void OutputTerms::begin_task(uint32_t task, const torch::Tensor& active_columns) {
  task_ = task;
  active_ = active_columns.to(torch::kUInt8).contiguous();
}

void OutputTerms::begin_step(int64_t step) {
  step_ = step;
  step_penalty_ = 0.0;
  non_finite_.clear();
}

torch::Tensor OutputTerms::snapshot_forward(const std::vector<torch::Tensor>& snapshot,
                                            const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const SnapshotSwap swap(model_, snapshot);
  return model_->forward(x).to(torch::kFloat32).to(torch::kCPU).contiguous();
}

void OutputTerms::before_forward(const torch::Tensor& x) {
  for (Entry& entry : plugins_) {
    const auto& snapshot = entry.instance->context.snapshot;
    entry.snapshot_logits = snapshot.empty() ? torch::Tensor() : snapshot_forward(snapshot, x);
  }
}

torch::Tensor OutputTerms::after_forward(const torch::Tensor& output, const torch::Tensor& targets,
                                         const torch::Tensor& tasks, double share) {
  const torch::Tensor logits = output.detach().to(torch::kFloat32).to(torch::kCPU).contiguous();
  const torch::Tensor target_columns = targets.to(torch::kInt64).contiguous();
  const torch::Tensor sample_tasks =
      tasks.defined() ? tasks.to(torch::kInt32).contiguous()
                      : torch::full({logits.size(0)}, static_cast<int64_t>(task_), torch::kInt32);
  std::vector<int64_t> logit_shape;
  std::vector<int64_t> target_shape;
  std::vector<int64_t> task_shape;
  std::vector<int64_t> active_shape;
  std::vector<int64_t> snapshot_shape;
  std::vector<int64_t> gradient_shape;
  clhost_output_batch_t batch{};
  batch.struct_size = sizeof(batch);
  batch.task_index = task_;
  batch.step = step_;
  batch.samples = logits.size(0);
  batch.logits = dltensor_of(logits, logit_shape);
  batch.targets = dltensor_of(target_columns, target_shape);
  batch.sample_tasks = dltensor_of(sample_tasks, task_shape);
  batch.active = dltensor_of(active_, active_shape);
  torch::Tensor total = torch::zeros_like(logits);
  for (Entry& entry : plugins_) {
    batch.snapshot_logits = DLTensor{};
    if (entry.snapshot_logits.defined()) {
      batch.snapshot_logits = dltensor_of(entry.snapshot_logits, snapshot_shape);
    }
    torch::Tensor gradient = torch::zeros_like(logits);
    DLTensor gradient_view = dltensor_of(gradient, gradient_shape);
    double value = 0.0;
    clhost_error_t error{};
    entry.instance->check(
        entry.table->output_loss(entry.instance->instance, &batch, &value, &gradient_view, &error),
        error, "output_loss (clhost.output_loss/1)");
    if (!std::isfinite(value) && non_finite_.empty()) {
      non_finite_ = "the output loss term of plug-in '" + entry.instance->plugin->id + "' is " +
                    std::to_string(value);
    }
    step_penalty_ += share * value;
    total.add_(gradient);
  }
  // d/d(output) of sum(output * G) is G: the plug-ins' gradients reach the parameters through
  // the same backward pass as the data loss.
  return (output * total.to(output.device()).to(output.scalar_type())).sum() * share;
}

}  // namespace clhost
