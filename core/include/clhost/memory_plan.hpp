// The memory a run will hold, planned before it allocates anything: the model's weights,
// gradients and optimizer state, the resident data, each plug-in's state (clhost.memory_plan/1),
// the host's Fisher pass and the Fisher store's size. `clhost memory-plan --config` prints it;
// `clhost run` refuses, before training, a run whose plan does not fit, and records the plan in
// results.json. Activations are measured on a probe model of the run's shape (one training step
// at train.batch_size plus a replay plug-in's samples, one Fisher pass at the plug-ins' samples
// per pass); a batch policy or
// out-of-memory recovery that changes the batch during the run changes them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/plugin_loader.hpp"

namespace clhost {

struct TaskSequence;

struct MemoryPlan {
  struct Plugin {
    std::string id;
    std::optional<int64_t> state_bytes;  // nullopt: the plug-in cannot say (no memory_plan/1)
    int64_t consolidation_bytes = 0;
    std::string advice;
    // A replay plug-in's buffer in samples (ABI 1.9), which the host holds: state_bytes counts
    // it, and consolidation_bytes the old buffer held beside the new one at a task's end.
    int64_t replay_capacity = -1;
  };
  int64_t parameters = 0;
  int64_t tasks = 0;
  int64_t weight_bytes = 0;
  int64_t gradient_bytes = 0;
  int64_t optimizer_bytes = 0;
  std::string optimizer;  // what the optimizer keeps, in words
  int64_t data_bytes = 0;
  int64_t fisher_block_elements = 0;  // the largest block of the host's Fisher pass
  // The pass's peak above the weights: its block's sums and, when activations are planned, the
  // model's activations at fisher_samples_per_pass samples; 0 when no plug-in asks for a pass.
  int64_t fisher_pass_bytes = 0;
  int64_t fisher_samples_per_pass = 0;       // the most any plug-in said (ABI 1.8)
  std::vector<std::string> fisher_not_said;  // plug-ins that did not say theirs (before 1.8)
  int64_t replay_samples_per_step = 0;       // stored samples added to every step (ABI 1.9)
  std::vector<std::string> replay_not_said;  // replay plug-ins that did not say (before 1.9)
  // Activations, measured before the run (activation_probe.hpp); not for TorchScript models.
  bool activations_planned = false;
  std::string activations_method;
  int64_t train_samples = 0;           // train.batch_size + replay_samples_per_step
  int64_t train_activation_bytes = 0;  // one training step above weights and gradients
  // Under run.memory_budget out-of-memory recovery shrinks the training step's micro-batch (when
  // a batch policy is in the pipeline) and the Fisher pass's samples per pass and blocks: the
  // least each can get by with is one sample.
  bool batch_policy = false;
  int64_t train_one_sample_bytes = 0;
  int64_t fisher_one_sample_bytes = 0;
  int64_t store_bytes = 0;  // fisher.h5 after every task, before compression (an upper bound)
  std::vector<Plugin> plugins;

  [[nodiscard]] int64_t plugin_state_bytes() const;
  [[nodiscard]] int64_t largest_consolidation_bytes() const;
  // Held between tasks after the last consolidation: weights, gradients, optimizer, data and
  // every plug-in's state.
  [[nodiscard]] int64_t between_tasks_bytes() const;
  // The most held: between tasks plus the larger of a training step's activations and a
  // consolidation (the Fisher pass and the largest plug-in consolidation buffer).
  [[nodiscard]] int64_t peak_bytes() const;
  // The peak when recovery has shrunk what it can (above): what run.memory_budget must hold.
  [[nodiscard]] int64_t least_peak_bytes() const;
  [[nodiscard]] bool complete() const;  // every plug-in planned its state
  // The Fisher pass includes measured activations: probed, and every plug-in said its samples.
  [[nodiscard]] bool fisher_activations_planned() const {
    return activations_planned && fisher_not_said.empty();
  }
};

// Plans a run of `config` with its loaded pipeline for a model with parameters of `shapes` on
// `sequence` (its tasks, resident data, and the samples the activation probe takes). Throws
// PluginError when a plug-in refuses.
MemoryPlan plan_memory(const RunConfig& config, const LoadedPipeline& pipeline,
                       const std::vector<std::vector<int64_t>>& shapes,
                       const TaskSequence& sequence);

// The whole plan of a config file's run with its loaded pipeline: reads its data and sizes its
// model (built-in kinds by their shapes, without allocating them; a TorchScript archive by
// loading it).
MemoryPlan plan_memory_for_config(const RunConfig& config, const LoadedPipeline& pipeline);

// The plan as a table; with `scaled_parameters` > 0 a second column gives the parts that grow
// with the model at that many parameters (same layouts, same data and block size).
std::string format_memory_plan(const MemoryPlan& plan, double scaled_parameters = 0.0);

// The plan as JSON text (results.json → memory_plan).
std::string memory_plan_json(const MemoryPlan& plan);

// The limit a run must fit: run.memory_budget when set, else the machine's memory (RAM + swap),
// with words that name it.
struct MemoryLimit {
  int64_t bytes = -1;
  std::string name;
  bool budget = false;  // run.memory_budget: out-of-memory recovery works under it
};
MemoryLimit memory_limit(const RunConfig& config);

// What the plan needs of the limit: its least peak under a budget, else its peak.
[[nodiscard]] int64_t needed_bytes(const MemoryPlan& plan, const MemoryLimit& limit);

// Throws RunError, naming the parts and what would shrink the largest, when the plan's peak
// passes the limit — under run.memory_budget, when its least peak does (recovery shrinks the
// rest; without a budget nothing is retried).
void check_memory_plan(const MemoryPlan& plan, const MemoryLimit& limit);

}  // namespace clhost
