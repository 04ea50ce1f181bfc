// What a training checkpoint holds besides the trainer's own counters: the model's tensors, the
// optimizer, LibTorch's generator, and the bridge that streams a plug-in's clhost.state/1 bytes
// into a checkpoint file. Internal to the core.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "clhost/clhost_plugin.h"
#include "training_checkpoint.hpp"

namespace torch::nn {
class Sequential;
}
namespace torch::optim {
class Optimizer;
}

namespace clhost {

// The clhost_state_write_fn handed to plug-ins; `sink` is a const ByteSink*.
clhost_status_t write_to_sink(void* sink, const void* bytes, size_t size, clhost_error_t* error);

// The restore functions read files a user can hand over (another model's, another version's, a
// truncated or a crafted one): each checks every size, shape and index before trusting it and
// throws RunError saying what does not fit; the caller adds the file's path.

void save_model_tensors(torch::nn::Sequential& model, const ByteSink& sink);
// In place, by name; throws RunError when the checkpoint's tensors do not fit this model.
void restore_model_tensors(torch::nn::Sequential& model, const std::string& bytes);

void save_optimizer(torch::optim::Optimizer& optimizer, const ByteSink& sink);
// optimizer.bin, clhost's own format (not a LibTorch archive: its parser can crash on a damaged
// file): what Adam or SGD keeps per parameter. Throws RunError unless every tensor has its
// parameter's shape and type and the state is of this optimizer.
void restore_optimizer(torch::optim::Optimizer& optimizer, const std::string& bytes);

// LibTorch's default CPU generator.
std::string save_generator();
void restore_generator(const std::string& bytes);

std::string int64_bytes(const std::vector<int64_t>& values);
// A task's saved sample order: a permutation of 0..samples-1, or RunError.
std::vector<int64_t> sample_order(const std::string& bytes, int64_t samples);

// trainer.json: every key a resume reads, with its type and range, or RunError naming the key.
void check_trainer_json(const nlohmann::json& saved);

}  // namespace clhost
