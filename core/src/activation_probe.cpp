#include "activation_probe.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <functional>
#include <mutex>

#include "activation_checkpoint.hpp"
#include "clhost/memory_budget.hpp"
#include "fisher.hpp"
#include "micro_batcher.hpp"
#include "model.hpp"

namespace clhost {
namespace {

// Restores LibTorch's default generator on exit: the probe's initialisation and dropout must not
// change the run's draws.
class DefaultGeneratorGuard {
 public:
  DefaultGeneratorGuard() : generator_(at::detail::getDefaultCPUGenerator()) {
    const std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~DefaultGeneratorGuard() {
    const std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }
  DefaultGeneratorGuard(const DefaultGeneratorGuard&) = delete;
  DefaultGeneratorGuard& operator=(const DefaultGeneratorGuard&) = delete;

 private:
  at::Generator generator_;
  at::Tensor state_;
};

// `n` samples of the first task as the task holds them (its first ones, repeated when it has
// fewer).
TaskData probe_task(const TaskSequence& sequence, int64_t n) {
  const TaskData& first = sequence.tasks.front();
  const int64_t available = std::max<int64_t>(1, std::min(first.train_size(), n));
  const Samples samples = first.train_range(0, available);
  const torch::Tensor rows = torch::arange(n, torch::kInt64).remainder(available);
  TaskData task;
  task.next_byte = first.next_byte;
  task.classes = first.classes;
  task.train_x = samples.x.index_select(0, rows);
  task.train_y = (samples.y.defined() ? samples.y : first.train_y.slice(0, 0, available))
                     .index_select(0, rows);
  return task;
}

// Peak growth of LibTorch's tensor bytes while `work` runs.
int64_t peak_growth(const std::function<void()>& work) {
  memory::reset_peak();
  const int64_t before = memory::current_bytes();
  work();
  return memory::peak_bytes() - before;
}

// One training step's forward and backward, with the gradients already allocated.
int64_t train_step_peak(torch::nn::Sequential& model, const TaskData& task, int64_t classes,
                        int64_t checkpoint_segments) {
  model->train();
  for (auto& parameter : model->parameters()) {
    parameter.mutable_grad() = torch::zeros_like(parameter);
  }
  const torch::Tensor x = task.next_byte ? task.train_x : task.train_x.to(torch::kFloat32);
  const torch::Tensor all = torch::arange(classes, torch::kInt64);
  return peak_growth([&] {
    const torch::Tensor output = checkpointed_forward(model, x, checkpoint_segments);
    mean_loss(output, task.train_y, all, all).backward();
  });
}

// Stops a probe's Fisher pass once its first blocks are measured.
struct ProbeDone {};

// The Fisher pass over the task's samples in one pass, its first blocks of `block_size` (those of
// the first layers: their backward runs through the whole model) — two blocks' worth of elements,
// or one row of the first parameter when `block_size` is 1.
int64_t fisher_pass_peak(torch::nn::Sequential& model, const TaskData& task, int64_t classes,
                         int64_t block_size) {
  FisherContext context;
  context.model = model;
  context.task = &task;
  context.active_classes = torch::arange(classes, torch::kInt64);
  context.label_map = context.active_classes;
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = task.train_size();
  request.max_samples = task.train_size();
  int64_t emitted = 0;
  return peak_growth([&] {
    try {
      diagonal_fisher(context, request, block_size, FisherMethod::kAuto,
                      [&](size_t, int64_t, const torch::Tensor& values) {
                        emitted += values.numel();
                        if (emitted >= 2 * block_size) throw ProbeDone{};
                      });
    } catch (const ProbeDone&) {  // NOLINT(bugprone-empty-catch): measured enough
    }
  });
}

struct Probe {
  int64_t train = 0;
  int64_t fisher_first_row = 0;  // the activations alone: a block of one row
  int64_t fisher_blocks = 0;     // with the run's block size
};

Probe probe_model(const RunConfig& config, const TaskSequence& sequence, int64_t layers,
                  int64_t fisher_samples) {
  ModelSection section = config.model;
  if (section.kind == ModelKind::kTransformer) section.layers = layers;
  torch::nn::Sequential model =
      make_model(section, sequence.input_size, sequence.image_side, sequence.num_classes);
  Probe probe;
  const TaskData train_task = probe_task(sequence, config.train.batch_size);
  probe.train =
      train_step_peak(model, train_task, sequence.num_classes, config.train.checkpoint_segments);
  for (auto& parameter : model->parameters()) parameter.mutable_grad().reset();
  if (fisher_samples > 0) {
    const TaskData fisher_task = probe_task(sequence, fisher_samples);
    probe.fisher_first_row = fisher_pass_peak(model, fisher_task, sequence.num_classes, 1);
    probe.fisher_blocks =
        fisher_pass_peak(model, fisher_task, sequence.num_classes, config.fisher.block_size);
  }
  return probe;
}

}  // namespace

std::optional<ActivationPlan> probe_activations(const RunConfig& config,
                                                const TaskSequence& sequence,
                                                int64_t fisher_samples) {
  if (config.model.kind == ModelKind::kTorchScript || sequence.tasks.empty()) return std::nullopt;
  memory::install_counting_allocator();
  const DefaultGeneratorGuard generator;
  const int64_t run_peak = memory::peak_bytes();
  struct PeakRestorer {
    int64_t bytes;
    ~PeakRestorer() { memory::restore_peak(bytes); }
  } const restorer{run_peak};
  ActivationPlan plan;
  plan.train_samples = config.train.batch_size;
  plan.fisher_samples = fisher_samples;
  const int64_t depth = config.model.layers;
  if (config.model.kind != ModelKind::kTransformer || depth <= 2) {
    const Probe whole = probe_model(config, sequence, depth, fisher_samples);
    plan.train_step_bytes = whole.train;
    plan.fisher_pass_bytes = whole.fisher_blocks;
    plan.method = "measured on the model";
    return plan;
  }
  // Activations grow by the same amount with every decoder block; the block's own sums and the
  // captured layers' gradients are those of the two-block probe's largest blocks.
  const Probe one = probe_model(config, sequence, 1, fisher_samples);
  const Probe two = probe_model(config, sequence, 2, fisher_samples);
  auto extrapolate = [&](int64_t at_one, int64_t at_two) {
    return at_two + (depth - 2) * std::max<int64_t>(at_two - at_one, 0);
  };
  plan.train_step_bytes = extrapolate(one.train, two.train);
  if (fisher_samples > 0) {
    plan.fisher_pass_bytes = extrapolate(one.fisher_first_row, two.fisher_first_row) +
                             std::max<int64_t>(two.fisher_blocks - two.fisher_first_row, 0);
  }
  plan.method = "measured with 1 and 2 of the model's " + std::to_string(depth) +
                " decoder blocks, extrapolated";
  return plan;
}

}  // namespace clhost
