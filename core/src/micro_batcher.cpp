#include "micro_batcher.hpp"

#include <fstream>
#include <stdexcept>

#include "activation_checkpoint.hpp"
#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "distributed.hpp"
#include "event_bus.hpp"
#include "metrics_log.hpp"
#include "output_terms.hpp"
#include "plugin_set.hpp"
#include "trainer_state.hpp"
#include "training_checkpoint.hpp"

namespace clhost {
namespace {

int64_t available_system_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

// A classification micro-batch's mean loss and each sample's label column.
struct Scored {
  torch::Tensor loss;
  torch::Tensor targets;
};

// Samples replayed from earlier tasks in task-incremental learning are scored on their own task's
// head: the loss is summed group by group over the tasks present, then averaged.
Scored score_by_task(const StepModel& step, const torch::Tensor& output,
                     const torch::Tensor& labels, const torch::Tensor& tasks) {
  torch::Tensor total = torch::zeros({}, output.options());
  torch::Tensor targets = torch::empty_like(labels, torch::kInt64);
  const torch::Tensor present = std::get<0>(at::_unique(tasks));
  for (int64_t i = 0; i < present.size(0); ++i) {
    const int64_t task = present[i].item<int64_t>();
    const ClassView& view = step.task_views.at(static_cast<size_t>(task));
    const torch::Tensor rows = tasks.eq(task).nonzero().squeeze(1);
    const torch::Tensor columns = view.label_map.index_select(0, labels.index_select(0, rows));
    total = total + torch::nn::functional::cross_entropy(
                        output.index_select(0, rows).index_select(1, view.active), columns,
                        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    targets.index_copy_(0, rows, view.active.index_select(0, columns));
  }
  return {total / static_cast<double>(labels.size(0)), targets};
}

Scored score(const StepModel& step, const torch::Tensor& output, const torch::Tensor& labels,
             const torch::Tensor& tasks) {
  if (output.dim() == 3 || step.task_views.empty() || !tasks.defined()) {
    const torch::Tensor loss = mean_loss(output, labels, step.view.label_map, step.view.active);
    if (output.dim() == 3 || step.terms == nullptr) return {loss, {}};
    return {loss, step.view.active.index_select(0, step.view.label_map.index_select(0, labels))};
  }
  return score_by_task(step, output, labels, tasks);
}

}  // namespace

// Mean cross-entropy of a micro-batch: over the active classes of each sample, or over the next
// byte at every position (logits [N, T, 256], targets [N, T] bytes).
torch::Tensor mean_loss(const torch::Tensor& output, const torch::Tensor& labels,
                        const torch::Tensor& label_map, const torch::Tensor& active) {
  if (output.dim() == 3) {
    return torch::nn::functional::cross_entropy(output.reshape({-1, output.size(2)}),
                                                labels.reshape({-1}).to(torch::kInt64));
  }
  return torch::nn::functional::cross_entropy(output.index_select(1, active),
                                              label_map.index_select(0, labels));
}

namespace {

// Samples [begin, end) of the batch's local samples: own rows first, then replayed ones. Only
// the micro-batch is gathered, so a step with replay holds its own samples once.
struct MicroBatch {
  torch::Tensor x;
  torch::Tensor y;
  torch::Tensor tasks;  // undefined when nothing is replayed
};

MicroBatch micro_batch_of(const StepBatch& batch, int64_t begin, int64_t end) {
  const int64_t own = batch.rows.size(0);
  const bool replayed = batch.replay_x.defined();
  std::vector<torch::Tensor> xs;
  std::vector<torch::Tensor> ys;
  std::vector<torch::Tensor> tasks;
  if (begin < own) {
    const torch::Tensor part = batch.rows.slice(0, begin, std::min(end, own));
    xs.push_back(batch.x.index_select(0, part));
    ys.push_back(batch.y.index_select(0, part));
    if (replayed) {
      tasks.push_back(torch::full({part.size(0)}, static_cast<int64_t>(batch.task), torch::kInt32));
    }
  }
  if (replayed && end > own) {
    const int64_t from = std::max(begin, own) - own;
    xs.push_back(batch.replay_x.slice(0, from, end - own));
    ys.push_back(batch.replay_y.slice(0, from, end - own));
    tasks.push_back(batch.replay_tasks.slice(0, from, end - own));
  }
  auto joined = [](const std::vector<torch::Tensor>& parts) {
    return parts.empty() ? torch::Tensor() : parts.size() == 1 ? parts[0] : torch::cat(parts);
  };
  return {joined(xs), joined(ys), joined(tasks)};
}

}  // namespace

double accumulate_batch_gradients(const StepModel& step, const StepBatch& batch,
                                  int64_t micro_batch, int64_t* samples_processed) {
  const int64_t samples = batch.local_samples();
  const bool with_terms = step.terms != nullptr && !step.terms->empty();
  double loss_value = 0.0;
  for (int64_t start = 0; start < samples; start += micro_batch) {
    const int64_t end = std::min(samples, start + micro_batch);
    // Counted when the forward starts, so a micro-batch that runs out of memory counts too.
    if (samples_processed != nullptr) *samples_processed += end - start;
    out_of_memory_point("micro_batch");
    const MicroBatch part = micro_batch_of(batch, start, end);
    if (with_terms) step.terms->before_forward(part.x);
    const torch::Tensor output =
        checkpointed_forward(*step.model, part.x, step.checkpoint_segments);
    const double share = static_cast<double>(end - start) / static_cast<double>(batch.samples);
    const Scored scored = score(step, output, part.y, part.tasks);
    torch::Tensor loss = scored.loss * share;
    if (with_terms && output.dim() == 2) {
      loss_value += loss.item<double>();
      (loss + step.terms->after_forward(output, scored.targets, part.tasks, share)).backward();
      continue;
    }
    loss.backward();
    loss_value += loss.item<double>();
  }
  return loss_value;
}

MicroBatcher::MicroBatcher(PluginInstance* policy, TrainerState& state, EventBus& events,
                           MetricsLog& log, int64_t budget_bytes, Collective& collective)
    : policy_(policy),
      state_(state),
      events_(events),
      log_(log),
      budget_bytes_(budget_bytes),
      collective_(collective) {}

void MicroBatcher::begin_task(size_t task, const std::string& task_name, int64_t batch_size,
                              bool resumed_in_task) {
  task_ = task;
  task_name_ = task_name;
  batch_size_ = batch_size;
  if (!resumed_in_task) {
    state_.micro_batch = policy_ != nullptr && state_.micro_batch > 0
                             ? std::min(state_.micro_batch, batch_size)
                             : batch_size;
  }
  // Without a configured budget, policies see what the machine could still give: tensors held
  // now plus MemAvailable, read once per task (not in the step's hot path).
  const int64_t available = budget_bytes_ < 0 ? available_system_memory() : -1;
  budget_for_policy_ = budget_bytes_ >= 0 ? budget_bytes_
                       : available >= 0   ? memory::current_bytes() + available
                                          : -1;
  if (!resumed_in_task) ask_policy(-1, false);
}

void MicroBatcher::after_step(int64_t peak_bytes) {
  if (policy_ != nullptr) ask_policy(peak_bytes, false);
}

void MicroBatcher::ask_policy(int64_t peak_bytes, bool out_of_memory) {
  if (policy_ == nullptr) return;
  const clhost_batch_request_t request{sizeof(clhost_batch_request_t),
                                       static_cast<uint32_t>(task_),
                                       batch_size_,
                                       state_.first_policy_call ? 0 : state_.micro_batch,
                                       out_of_memory ? 1 : 0,
                                       budget_for_policy_,
                                       peak_bytes};
  state_.first_policy_call = false;
  int64_t chosen = state_.micro_batch;
  clhost_error_t error{};
  const auto& table = policy_->table<clhost_batch_policy_v1_t>();
  policy_->check(table.choose_micro_batch(policy_->instance, &request, &chosen, &error), error,
                 "choose_micro_batch");
  chosen = collective_.min(std::clamp<int64_t>(chosen, 1, batch_size_));
  if (chosen == state_.micro_batch) return;
  const bool has_reason =
      table.struct_size >= sizeof(clhost_batch_policy_v1_t) && table.last_reason != nullptr;
  const std::string reason = has_reason ? table.last_reason(policy_->instance) : "";
  const std::string label = "micro-batch " + std::to_string(state_.micro_batch) + " -> " +
                            std::to_string(chosen) + (reason.empty() ? "" : " (" + reason + ")");
  events_.emit(CLHOST_EVENT_BATCH_SIZE_CHANGE, static_cast<int32_t>(task_), label);
  const int64_t event_step =
      log_.event(task_, state_.global_step, batch_size_, chosen, "batch_size_change", label);
  state_.batch_changes.push_back(nlohmann::json{{"task", task_},
                                                {"step", event_step},
                                                {"global_step", state_.global_step + 1},
                                                {"from", state_.micro_batch},
                                                {"to", chosen},
                                                {"reason", reason}});
  state_.micro_batch = chosen;
}

MicroBatcher::Gradients MicroBatcher::gradients(const Attempt& attempt, int64_t samples,
                                                int64_t step, int64_t& task_ooms) {
  while (true) {
    Gradients out;
    int64_t processed = 0;  // by this rank, in this attempt
    bool out_of_memory = false;
    try {
      attempt.zero_grad();
      state_.tensor_peak_bytes = std::max(state_.tensor_peak_bytes, memory::peak_bytes());
      memory::reset_peak();
      out.loss = attempt.forward_backward(state_.micro_batch, &processed);
      out.peak_bytes = memory::peak_bytes();
    } catch (const std::exception& e) {
      if (!memory::is_out_of_memory(e)) throw;
      out_of_memory = true;
    }
    // Every rank learns whether any ran out of memory, and counts every rank's samples.
    std::vector<double> agreed{out_of_memory ? 1.0 : 0.0, static_cast<double>(processed)};
    if (!out_of_memory && attempt.step_status) {
      const std::vector<double> status = attempt.step_status(out.loss);
      if (status.size() != attempt.status_size) throw std::logic_error("step_status size");
      agreed.insert(agreed.end(), status.begin(), status.end());
    }
    agreed.resize(2 + attempt.status_size, 0.0);
    agreed = collective_.sum(agreed);
    state_.samples_processed += static_cast<int64_t>(agreed[1]);
    if (agreed[0] == 0.0) {
      state_.samples_in_steps += samples;
      out.status.assign(agreed.begin() + 2, agreed.end());
      return out;
    }
    retry_smaller(attempt, samples, step, task_ooms, static_cast<int64_t>(agreed[0]));
  }
}

void MicroBatcher::retry_smaller(const Attempt& attempt, int64_t samples, int64_t step,
                                 int64_t& task_ooms, int64_t ranks_out_of_memory) {
  ++task_ooms;
  ++state_.out_of_memory_retries;
  state_.samples_redone += samples;
  const int64_t micro_batch = state_.micro_batch;
  const std::string ranks = collective_.distributed()
                                ? " on " + std::to_string(ranks_out_of_memory) + " of " +
                                      std::to_string(collective_.world_size()) + " ranks"
                                : "";
  const std::string where =
      "task " + task_name_ + " step " + std::to_string(step + 1) +
      ": out of memory at micro-batch " + std::to_string(micro_batch) + ranks + " (budget " +
      (budget_bytes_ < 0 ? std::string("none") : memory::format_bytes(budget_bytes_)) + ")";
  events_.emit(CLHOST_EVENT_OUT_OF_MEMORY, static_cast<int32_t>(task_), where);
  log_.event(task_, state_.global_step, samples, micro_batch, "out_of_memory",
             "out of memory at micro-batch " + std::to_string(micro_batch));
  attempt.zero_grad();
  if (micro_batch == 1) {
    throw RunError(
        where + "; even one sample does not fit: raise run.memory_budget or use a smaller model");
  }
  if (policy_ == nullptr) {
    throw RunError(where +
                   "; add a batch policy (--dynamic-batch-size) to retry with smaller "
                   "micro-batches, or raise run.memory_budget");
  }
  ask_policy(-1, true);
  if (state_.micro_batch >= micro_batch) {
    throw RunError(where + "; batch policy '" + policy_->plugin->id +
                   "' did not choose a smaller micro-batch");
  }
}

}  // namespace clhost
