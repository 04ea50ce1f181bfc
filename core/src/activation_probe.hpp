// The activations a run will hold, measured before it trains: one training step's forward and
// backward at train.batch_size, and one pass of the host's Fisher pass at the plug-ins' samples
// per pass (its block's sums included), each by clhost's counting allocator on a probe model of
// the run's own shape. A transformer is probed with one and with two of its decoder blocks (the
// same width, context and head), and the growth per block is extrapolated to the configured
// depth, so that planning a billion-parameter model allocates a tenth of it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "clhost/config.hpp"
#include "data.hpp"

namespace clhost {

struct ActivationPlan {
  int64_t train_samples = 0;      // samples of the probed training step
  int64_t train_step_bytes = 0;   // above weights and gradients, at its peak
  int64_t fisher_samples = 0;     // samples per Fisher pass probed; 0: none
  int64_t fisher_pass_bytes = 0;  // above the weights: the block's sums and the activations
  // The least a run can get by with under run.memory_budget, where a batch policy shrinks the
  // training step's micro-batch (the step's batch is still made model inputs at once) and the
  // Fisher pass its samples per pass and its blocks: one sample (and, for the Fisher pass, a
  // block of one row).
  int64_t train_one_sample_bytes = 0;
  int64_t fisher_one_sample_bytes = 0;
  std::string method;  // how they were measured, in words
};

// Probes the model of `config` on the first task of `sequence`; `fisher_samples` 0 skips the
// Fisher pass. nullopt for TorchScript models (no probe model of their shape). The caller's
// random state is left as it was.
std::optional<ActivationPlan> probe_activations(const RunConfig& config,
                                                const TaskSequence& sequence,
                                                int64_t fisher_samples);

// The same measured on the whole model, whatever its depth (what the extrapolation stands for).
ActivationPlan measure_whole_model(const RunConfig& config, const TaskSequence& sequence,
                                   int64_t fisher_samples);

}  // namespace clhost
