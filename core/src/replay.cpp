#include "replay.hpp"

#include <array>
#include <string>

#include "clhost/errors.hpp"
#include "micro_batcher.hpp"
#include "plugin_set.hpp"

namespace clhost {
namespace {

// The tensor's view, or, for an undefined one, a DLTensor the plug-in must not read: data NULL
// (an empty int64 vector otherwise).
DLTensor view_or_absent(const torch::Tensor& tensor, std::vector<int64_t>& shape) {
  if (tensor.defined()) return dltensor_of(tensor, shape);
  shape = {0};
  DLTensor out{};
  out.device = {kDLCPU, 0};
  out.ndim = 1;
  out.dtype = {kDLInt, 64, 1};
  out.shape = shape.data();
  return out;
}

// Labels the plug-in may read: classification labels (text "labels" are the next bytes).
torch::Tensor class_labels(const torch::Tensor& y) {
  return y.defined() && y.dim() == 1 ? y.to(torch::kInt64).contiguous() : torch::Tensor();
}

}  // namespace

ReplayBuffer& Replay::buffer() const {
  return plugin_->context.replay;
}

std::vector<int64_t> Replay::select(const TaskData& task, uint32_t task_index,
                                    bool streamed) const {
  const ReplayBuffer& held = buffer();
  const int64_t stored = held.size();
  const int64_t candidates = task.train_size();
  const torch::Tensor stored_labels =
      stored > 0 ? class_labels(held.y) : torch::empty({0}, torch::kInt64);
  const torch::Tensor stored_tasks =
      stored > 0 ? held.tasks.contiguous() : torch::empty({0}, torch::kInt32);
  const torch::Tensor candidate_labels =
      task.next_byte ? torch::Tensor() : class_labels(task.train_y);
  const auto& table = plugin_->table<clhost_replay_v1_t>();
  torch::Tensor inputs;
  if (table.wants_candidate_inputs != 0 && !task.next_byte && !streamed) {
    inputs = task.train_range(0, candidates).x.to(torch::kFloat32).contiguous();
  }
  std::array<std::vector<int64_t>, 4> shapes;
  clhost_replay_candidates_t offer{};
  offer.struct_size = sizeof(offer);
  offer.task_index = task_index;
  offer.stored = stored;
  offer.stored_labels = view_or_absent(stored_labels, shapes[0]);
  offer.stored_tasks = dltensor_of(stored_tasks, shapes[1]);
  offer.candidates = candidates;
  offer.candidate_labels = view_or_absent(candidate_labels, shapes[2]);
  offer.candidate_inputs = view_or_absent(inputs, shapes[3]);
  std::vector<int64_t> keep(static_cast<size_t>(stored + candidates), 0);
  int64_t kept = 0;
  clhost_error_t error{};
  plugin_->check(table.select(plugin_->instance, &offer, keep.data(), &kept, &error), error,
                 "select (clhost.replay/1)");
  if (kept < 0 || kept > stored + candidates) {
    throw RunError("plug-in '" + plugin_->plugin->id + "' kept " + std::to_string(kept) +
                   " samples in select; it may keep 0 to " + std::to_string(stored + candidates));
  }
  keep.resize(static_cast<size_t>(kept));
  std::vector<char> used(static_cast<size_t>(stored + candidates), 0);
  for (const int64_t entry : keep) {
    const int64_t flat = entry >= 0 ? entry : stored + (-entry - 1);
    if (entry >= stored || flat >= stored + candidates || used[static_cast<size_t>(flat)] != 0) {
      throw RunError("plug-in '" + plugin_->plugin->id + "' select: entry " +
                     std::to_string(entry) + " is out of range or repeated (" +
                     std::to_string(stored) + " stored, " + std::to_string(candidates) +
                     " candidates)");
    }
    used[static_cast<size_t>(flat)] = 1;
  }
  return keep;
}

void Replay::update(const TaskData& task, uint32_t task_index, bool streamed) {
  if (plugin_ == nullptr) return;
  const std::vector<int64_t> keep = select(task, task_index, streamed);
  ReplayBuffer& held = buffer();
  std::vector<int64_t> old_rows;
  std::vector<int64_t> old_slots;
  std::vector<int64_t> new_rows;
  std::vector<int64_t> new_slots;
  for (size_t slot = 0; slot < keep.size(); ++slot) {
    const int64_t entry = keep[slot];
    (entry >= 0 ? old_rows : new_rows).push_back(entry >= 0 ? entry : -entry - 1);
    (entry >= 0 ? old_slots : new_slots).push_back(static_cast<int64_t>(slot));
  }
  if (keep.empty()) {
    held = ReplayBuffer{};
    return;
  }
  const Samples fresh = new_rows.empty() ? Samples{} : task.train_rows(torch::tensor(new_rows));
  const torch::Tensor& like_x = fresh.x.defined() ? fresh.x : held.x;
  const torch::Tensor& like_y = fresh.y.defined() ? fresh.y : held.y;
  const auto rows = static_cast<int64_t>(keep.size());
  auto shaped = [rows](const torch::Tensor& like) {
    std::vector<int64_t> shape = like.sizes().vec();
    shape[0] = rows;
    return torch::empty(shape, like.options());
  };
  ReplayBuffer next{shaped(like_x), shaped(like_y), torch::empty({rows}, torch::kInt32)};
  if (!old_rows.empty()) {
    const torch::Tensor from = torch::tensor(old_rows);
    const torch::Tensor to = torch::tensor(old_slots);
    next.x.index_copy_(0, to, held.x.index_select(0, from));
    next.y.index_copy_(0, to, held.y.index_select(0, from));
    next.tasks.index_copy_(0, to, held.tasks.index_select(0, from));
  }
  if (!new_rows.empty()) {
    const torch::Tensor to = torch::tensor(new_slots);
    next.x.index_copy_(0, to, fresh.x);
    next.y.index_copy_(0, to, fresh.y.to(like_y.scalar_type()));
    next.tasks.index_fill_(0, to, static_cast<int64_t>(task_index));
  }
  held = std::move(next);  // the old buffer is freed only now: at most both are held at once
}

int64_t Replay::append(StepBatch& batch, uint32_t task_index, int64_t step, int64_t global_step,
                       int64_t batch_size, int64_t rank, int64_t ranks) const {
  if (plugin_ == nullptr || buffer().size() == 0) return 0;
  const ReplayBuffer& held = buffer();
  const int64_t stored = held.size();
  const torch::Tensor labels = class_labels(held.y);
  const torch::Tensor tasks = held.tasks.contiguous();
  std::array<std::vector<int64_t>, 2> shapes;
  clhost_replay_draw_t draw{};
  draw.struct_size = sizeof(draw);
  draw.task_index = task_index;
  draw.step = step;
  draw.global_step = global_step;
  draw.batch_size = batch_size;
  draw.stored = stored;
  draw.stored_labels = view_or_absent(labels, shapes[0]);
  draw.stored_tasks = dltensor_of(tasks, shapes[1]);
  std::vector<int64_t> slots(static_cast<size_t>(stored), 0);
  int64_t count = 0;
  clhost_error_t error{};
  const auto& table = plugin_->table<clhost_replay_v1_t>();
  plugin_->check(table.draw(plugin_->instance, &draw, slots.data(), stored, &count, &error), error,
                 "draw (clhost.replay/1)");
  if (count < 0 || count > stored) {
    throw RunError("plug-in '" + plugin_->plugin->id + "' drew " + std::to_string(count) +
                   " samples; it may draw 0 to " + std::to_string(stored));
  }
  for (int64_t i = 0; i < count; ++i) {
    if (slots[static_cast<size_t>(i)] < 0 || slots[static_cast<size_t>(i)] >= stored) {
      throw RunError("plug-in '" + plugin_->plugin->id + "' drew slot " +
                     std::to_string(slots[static_cast<size_t>(i)]) + " of a buffer of " +
                     std::to_string(stored));
    }
  }
  if (count == 0) return 0;
  // This rank's contiguous share of the replayed samples; the micro-batches gather them after
  // the step's own samples (accumulate_batch_gradients).
  const torch::Tensor mine = torch::tensor(std::vector<int64_t>(
      slots.begin() + count * rank / ranks, slots.begin() + count * (rank + 1) / ranks));
  batch.replay_x = held.x.index_select(0, mine);
  batch.replay_y = held.y.index_select(0, mine).to(batch.y.scalar_type());
  batch.replay_tasks = held.tasks.index_select(0, mine);
  batch.samples += count;
  return count;
}

}  // namespace clhost
