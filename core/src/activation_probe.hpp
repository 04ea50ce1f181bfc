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
  std::string method;             // how they were measured, in words
};

// Probes the model of `config` on the first task of `sequence`; `fisher_samples` 0 skips the
// Fisher pass. nullopt for TorchScript models (no probe model of their shape). The caller's
// random state is left as it was.
std::optional<ActivationPlan> probe_activations(const RunConfig& config,
                                                const TaskSequence& sequence,
                                                int64_t fisher_samples);

}  // namespace clhost
