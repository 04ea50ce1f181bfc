// One optimizer step's gradients, in the micro-batches a batch policy chooses. Gradients are
// accumulated over micro-batches so the optimizer always sees the whole batch; on out-of-memory
// the partial gradients are dropped and the same samples are redone with the smaller
// micro-batch the policy then chooses, so no sample is lost or counted twice.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>

#include "distributed.hpp"
#include "evaluation.hpp"

namespace clhost {

class Collective;
class EventBus;
class MetricsLog;
class OutputTerms;
struct PluginInstance;
struct TrainerState;

// Mean cross-entropy of a micro-batch: over the active classes of each sample, or over the next
// byte at every position (logits [N, T, 256], targets [N, T] bytes).
torch::Tensor mean_loss(const torch::Tensor& output, const torch::Tensor& labels,
                        const torch::Tensor& label_map, const torch::Tensor& active);

// The samples of one optimizer step on this rank: rows of (x, y), or x/y read for this batch
// alone when the task's samples come from a source (then rows = 0..local-1), then the samples a
// replay plug-in appended. `samples` is the whole step's batch over every rank (replayed ones
// included); `rows` and the replay tensors are this rank's shares.
struct StepBatch {
  torch::Tensor x;
  torch::Tensor y;
  torch::Tensor rows;
  int64_t samples = 0;
  uint32_t task = 0;       // the task being trained: the own samples' task
  torch::Tensor replay_x;  // replayed inputs, labels and tasks (int32); undefined: none
  torch::Tensor replay_y;
  torch::Tensor replay_tasks;
  // This rank's samples: its own rows, then its replayed ones.
  [[nodiscard]] int64_t local_samples() const {
    return rows.size(0) + (replay_x.defined() ? replay_x.size(0) : 0);
  }
};

// What a step's forward/backward needs besides its samples.
struct StepModel {
  torch::nn::Sequential* model = nullptr;
  ClassView view;  // the current task's output columns and label map
  // By task: the classes a replayed sample is scored on (task-incremental: its own task's head);
  // empty: `view` for every sample.
  std::vector<ClassView> task_views;
  int64_t checkpoint_segments = 0;
  OutputTerms* terms = nullptr;  // the plug-ins' loss terms on the outputs, or null
};

// One optimizer step's forward/backward: the batch's local samples (own rows, then replayed) in
// micro-batches of
// `micro_batch`, each micro-batch's mean loss weighted by its share of the `batch.samples` the
// step averages over, so the accumulated gradients equal the whole batch's mean-loss gradient (in
// a data-parallel run `rows` is this rank's shard, and the ranks' sums add up to it). Labels are
// mapped to output columns by the view's label_map; logits are restricted to its active columns.
// Output terms (if any) are added to each micro-batch's loss before its backward. Adds the
// samples it pushed through to *samples_processed as each forward starts (so a micro-batch that
// then fails counts) and returns the batch's data loss. Throws LibTorch's errors, out-of-memory
// included; the caller zeroes gradients and retries.
double accumulate_batch_gradients(const StepModel& step, const StepBatch& batch,
                                  int64_t micro_batch, int64_t* samples_processed);

// In a data-parallel run every rank has a MicroBatcher and they agree: the micro-batch is the
// smallest any rank's policy chose, and when one rank runs out of memory every rank drops its
// partial gradients and redoes the step with the smaller micro-batch.
class MicroBatcher {
 public:
  // `policy`: the run's batch policy, or null (the micro-batch is then the whole batch).
  MicroBatcher(PluginInstance* policy, TrainerState& state, EventBus& events, MetricsLog& log,
               int64_t budget_bytes, Collective& collective = single_process());

  // Before a task's steps: the micro-batch carries over (capped by `batch_size`, this rank's
  // largest shard of a step) and the policy answers first. A task resumed in its middle keeps
  // what the checkpoint restored.
  void begin_task(size_t task, const std::string& task_name, int64_t batch_size,
                  bool resumed_in_task);
  // After a step: the policy may choose another micro-batch from the step's tensor peak.
  void after_step(int64_t peak_bytes);

  // One attempt at a step's gradients: zero them, then forward/backward over the whole batch in
  // micro-batches of `micro_batch` (returns the loss; counts samples into *samples_processed).
  // The trainer's uses the model and accumulate_batch_gradients; a test's may throw at will.
  // `step_status` (optional): `status_size` values every rank adds up once the step's gradients
  // exist (the loss, stop requests, ...), reduced with the out-of-memory agreement in one
  // all-reduce; a rank that ran out of memory sends zeros.
  struct Attempt {
    std::function<void()> zero_grad;
    std::function<double(int64_t micro_batch, int64_t* samples_processed)> forward_backward;
    std::function<std::vector<double>(double loss)> step_status;
    size_t status_size = 0;
  };
  struct Gradients {
    double loss = 0.0;           // this rank's share of the batch's loss
    int64_t peak_bytes = -1;     // LibTorch tensor high-water mark of the successful attempt
    std::vector<double> status;  // step_status summed over the ranks
  };
  // The step's gradients (this rank's share), retried with a smaller micro-batch after
  // out-of-memory on any rank. `samples`: the whole batch's; `step`: 0-based within the task;
  // `task_ooms` counts this task's retries.
  Gradients gradients(const Attempt& attempt, int64_t samples, int64_t step, int64_t& task_ooms);

 private:
  void ask_policy(int64_t peak_bytes, bool out_of_memory);
  // Counts and reports an out-of-memory attempt; throws when no smaller micro-batch can help.
  void retry_smaller(const Attempt& attempt, int64_t samples, int64_t step, int64_t& task_ooms,
                     int64_t ranks_out_of_memory);

  PluginInstance* policy_;
  TrainerState& state_;
  EventBus& events_;
  MetricsLog& log_;
  int64_t budget_bytes_;
  Collective& collective_;
  size_t task_ = 0;
  std::string task_name_;
  int64_t batch_size_ = 0;
  int64_t budget_for_policy_ = -1;
};

}  // namespace clhost
