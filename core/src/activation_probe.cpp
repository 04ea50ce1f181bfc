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
  DefaultGeneratorGuard(DefaultGeneratorGuard&&) = delete;
  DefaultGeneratorGuard& operator=(DefaultGeneratorGuard&&) = delete;

 private:
  at::Generator generator_;
  at::Tensor state_;
};

// `n` samples of the first task (its first ones, repeated when it has fewer), held so that the
// probe's steps and passes make model inputs of them as a run does: samples that come from a
// source (converted batch by batch) are held as bytes, whose conversion allocates the batch.
TaskData probe_task(const TaskSequence& sequence, int64_t n) {
  const TaskData& first = sequence.tasks.front();
  const int64_t available = std::max<int64_t>(1, std::min(first.train_size(), n));
  const Samples samples = first.train_range(0, available);
  const torch::Tensor rows = torch::arange(n, torch::kInt64).remainder(available);
  TaskData task;
  task.next_byte = first.next_byte;
  task.classes = first.classes;
  task.train_x = samples.x.index_select(0, rows);
  if (first.train_source && !first.next_byte) task.train_x = task.train_x.to(torch::kByte);
  task.train_y = (samples.y.defined() ? samples.y : first.train_y.slice(0, 0, available))
                     .index_select(0, rows);
  return task;
}

// Peak growth of LibTorch's tensor bytes while `work` runs.
int64_t peak_growth(const std::function<void()>& work) {
  const memory::NestedPeak peak;
  work();
  return peak.growth();
}

// A training step's two peaks above what is held between steps: the backward's (the batch made
// model inputs, forward, backward into the gradients — each computed apart, then added) and the
// optimizer step's (Adam makes parameter-sized temporaries). Apart, because the first grows with
// the model's depth and the second with its largest tensor.
struct StepPeaks {
  int64_t backward = 0;
  int64_t step = 0;
  [[nodiscard]] int64_t larger() const { return std::max(backward, step); }
};

// One step of the run's optimizer after a first one has allocated the gradients and the
// optimizer's state, as between a run's steps: the task's samples are the step's batch, made model
// inputs at once as a run does, and `micro_batch` of them go through one forward and backward.
StepPeaks train_step_peaks(const RunConfig& config, torch::nn::Sequential& model,
                           const TaskData& task, int64_t classes, int64_t micro_batch) {
  model->train();
  const auto optimizer = make_optimizer(config, model->parameters());
  const torch::Tensor all = torch::arange(classes, torch::kInt64);
  // The batch stays until the step is done, as a run's does.
  const auto inputs = [&] {
    return task.next_byte ? task.train_x : task.train_x.to(torch::kFloat32);
  };
  const auto backward = [&](const torch::Tensor& x) {
    optimizer->zero_grad();
    const torch::Tensor output =
        checkpointed_forward(model, x.narrow(0, 0, micro_batch), config.train.checkpoint_segments);
    mean_loss(output, task.train_y.narrow(0, 0, micro_batch), all, all).backward();
  };
  backward(inputs());
  optimizer->step();
  StepPeaks peaks;
  const int64_t start = memory::current_bytes();
  memory::reset_peak();
  {
    const torch::Tensor x = inputs();
    backward(x);
    peaks.backward = memory::peak_bytes() - start;
    memory::reset_peak();
    optimizer->step();
    peaks.step = memory::peak_bytes() - start;
  }
  for (auto& parameter : model->parameters()) parameter.mutable_grad().reset();
  return peaks;
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
  StepPeaks train;
  StepPeaks train_one;               // with one sample
  int64_t fisher_first_row = 0;      // the activations alone: a block of one row
  int64_t fisher_first_row_one = 0;  // ... with one sample
  int64_t fisher_blocks = 0;         // with the run's block size
};

// `for_extrapolation`: also the first row's pass at the full samples per pass (only the depth
// extrapolation separates the activations from the block).
Probe probe_model(const RunConfig& config, const TaskSequence& sequence, int64_t layers,
                  int64_t fisher_samples, bool for_extrapolation) {
  ModelSection section = config.model;
  if (section.kind == ModelKind::kTransformer) section.layers = layers;
  torch::nn::Sequential model =
      make_model(section, sequence.input_size, sequence.image_side, sequence.num_classes);
  Probe probe;
  const TaskData train_task = probe_task(sequence, config.train.batch_size);
  probe.train =
      train_step_peaks(config, model, train_task, sequence.num_classes, config.train.batch_size);
  probe.train_one = train_step_peaks(config, model, train_task, sequence.num_classes, 1);
  if (fisher_samples > 0) {
    const TaskData fisher_task = probe_task(sequence, fisher_samples);
    if (for_extrapolation) {
      probe.fisher_first_row = fisher_pass_peak(model, fisher_task, sequence.num_classes, 1);
    }
    probe.fisher_first_row_one =
        fisher_pass_peak(model, probe_task(sequence, 1), sequence.num_classes, 1);
    probe.fisher_blocks =
        fisher_pass_peak(model, fisher_task, sequence.num_classes, config.fisher.block_size);
  }
  return probe;
}

}  // namespace

namespace {

// Leaves the run as it was: its random draws and its recorded peak (the probe's tensors are not
// the run's).
class ProbeScope {
 public:
  ProbeScope() : run_peak_((memory::install_counting_allocator(), memory::peak_bytes())) {
    generator_.emplace();
  }
  ~ProbeScope() {
    generator_.reset();  // its saved state is a tensor too
    memory::restore_peak(run_peak_);
  }
  ProbeScope(const ProbeScope&) = delete;
  ProbeScope& operator=(const ProbeScope&) = delete;
  ProbeScope(ProbeScope&&) = delete;
  ProbeScope& operator=(ProbeScope&&) = delete;

 private:
  int64_t run_peak_;
  std::optional<DefaultGeneratorGuard> generator_;
};

ActivationPlan whole_model_plan(const RunConfig& config, const TaskSequence& sequence,
                                int64_t fisher_samples) {
  const Probe whole = probe_model(config, sequence, config.model.layers, fisher_samples, false);
  ActivationPlan plan;
  plan.train_samples = config.train.batch_size;
  plan.fisher_samples = fisher_samples;
  plan.train_step_bytes = whole.train.larger();
  plan.train_one_sample_bytes = whole.train_one.larger();
  plan.fisher_pass_bytes = whole.fisher_blocks;
  plan.fisher_one_sample_bytes = whole.fisher_first_row_one;
  plan.method = "measured on the model";
  return plan;
}

}  // namespace

ActivationPlan measure_whole_model(const RunConfig& config, const TaskSequence& sequence,
                                   int64_t fisher_samples) {
  const ProbeScope scope;
  return whole_model_plan(config, sequence, fisher_samples);
}

std::optional<ActivationPlan> probe_activations(const RunConfig& config,
                                                const TaskSequence& sequence,
                                                int64_t fisher_samples) {
  if (config.model.kind == ModelKind::kTorchScript || sequence.tasks.empty()) return std::nullopt;
  const ProbeScope scope;
  const int64_t depth = config.model.layers;
  if (config.model.kind != ModelKind::kTransformer || depth <= 2) {
    return whole_model_plan(config, sequence, fisher_samples);
  }
  // Activations grow by the same amount with every decoder block; the optimizer step's peak
  // follows the largest tensor, the same at any depth; the block's own sums and the captured
  // layers' gradients are those of the two-block probe's largest blocks.
  const Probe one = probe_model(config, sequence, 1, fisher_samples, true);
  const Probe two = probe_model(config, sequence, 2, fisher_samples, true);
  auto extrapolate = [&](int64_t at_one, int64_t at_two) {
    return at_two + (depth - 2) * std::max<int64_t>(at_two - at_one, 0);
  };
  ActivationPlan plan;
  plan.train_samples = config.train.batch_size;
  plan.fisher_samples = fisher_samples;
  plan.train_step_bytes =
      std::max(extrapolate(one.train.backward, two.train.backward), two.train.step);
  plan.train_one_sample_bytes =
      std::max(extrapolate(one.train_one.backward, two.train_one.backward), two.train_one.step);
  if (fisher_samples > 0) {
    plan.fisher_one_sample_bytes = extrapolate(one.fisher_first_row_one, two.fisher_first_row_one);
    plan.fisher_pass_bytes = extrapolate(one.fisher_first_row, two.fisher_first_row) +
                             std::max<int64_t>(two.fisher_blocks - two.fisher_first_row, 0);
  }
  plan.method = "measured with 1 and 2 of the model's " + std::to_string(depth) +
                " decoder blocks, extrapolated";
  return plan;
}

}  // namespace clhost
