// The host side of kind REPLAY (clhost.replay/1, ABI 1.7): the buffer the plug-in fills at each
// task's end, and the stored samples it appends to each training step.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "data.hpp"
#include "host_services.hpp"

namespace clhost {

struct PluginInstance;
struct StepBatch;

class Replay {
 public:
  // `plugin`: the pipeline's replay plug-in, or null (then nothing is replayed).
  explicit Replay(PluginInstance* plugin) : plugin_(plugin) {}

  // After a task's training, before the regularizers consolidate: the plug-in chooses what the
  // buffer holds from what it held and the task's training samples. `streamed`: the run reads
  // its data batch by batch (the candidates' inputs are then not handed over).
  void update(const TaskData& task, uint32_t task_index, bool streamed);

  // Appends the samples the plug-in replays this step to `batch` (this rank's shard of them, as
  // the step's own samples are sharded); returns how many the whole step replays.
  int64_t append(StepBatch& batch, uint32_t task_index, int64_t step, int64_t global_step,
                 int64_t batch_size, int64_t rank, int64_t ranks) const;

 private:
  [[nodiscard]] ReplayBuffer& buffer() const;
  // The plug-in's keep list, checked: each stored sample and candidate at most once.
  [[nodiscard]] std::vector<int64_t> select(const TaskData& task, uint32_t task_index,
                                            bool streamed) const;

  PluginInstance* plugin_;
};

}  // namespace clhost
