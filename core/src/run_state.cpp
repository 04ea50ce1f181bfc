#include "run_state.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <nlohmann/json.hpp>

#include "clhost/errors.hpp"
#include "clhost/plugin_torch.hpp"
#include "trainer_state.hpp"

namespace clhost {

// The clhost_state_write_fn handed to plug-ins: forwards to a checkpoint file's sink. A failure
// (a full disk) becomes a status and message, never an exception through the plug-in.
clhost_status_t write_to_sink(void* sink, const void* bytes, size_t size, clhost_error_t* error) {
  try {
    (*static_cast<const ByteSink*>(sink))(bytes, size);
    return CLHOST_STATUS_OK;
  } catch (const std::exception& e) {
    std::snprintf(error->message, sizeof(error->message), "%s", e.what());
    return CLHOST_STATUS_IO;
  }
}

// Parameters and buffers, in the model's order, with their names (checked on restore).
void save_model_tensors(torch::nn::Sequential& model, const ByteSink& sink) {
  sdk::StateWriter out(&write_to_sink, const_cast<ByteSink*>(&sink));
  const auto parameters = model->named_parameters();
  const auto buffers = model->named_buffers();
  out.value(static_cast<uint64_t>(parameters.size() + buffers.size()));
  for (const auto* items : {&parameters, &buffers}) {
    for (const auto& item : *items) {
      out.string(item.key());
      sdk::write_tensor(out, item.value());
    }
  }
}

void restore_model_tensors(torch::nn::Sequential& model, const std::string& bytes) {
  const auto parameters = model->named_parameters();
  const auto buffers = model->named_buffers();
  try {
    sdk::StateReader in(bytes.data(), bytes.size());
    if (in.value<uint64_t>() != parameters.size() + buffers.size()) {
      throw RunError("the checkpoint's model has another number of tensors than this model");
    }
    torch::NoGradGuard no_grad;
    for (const auto* items : {&parameters, &buffers}) {
      for (const auto& item : *items) {
        const std::string name = in.string();
        const torch::Tensor saved = sdk::read_tensor(in);
        if (name != item.key() || !saved.defined() || saved.sizes() != item.value().sizes()) {
          throw RunError("the checkpoint's model tensor '" + name + "' does not match '" +
                         item.key() + "' of this model");
        }
        // In place: the optimizer, the plug-ins and a TorchScript module hold these tensors.
        item.value().copy_(saved);
      }
    }
    in.finish();
  } catch (const sdk::Error& e) {
    throw RunError(e.what());
  }
}

namespace {

// optimizer.bin: clhost's own format, read without LibTorch's archive parser (which a damaged
// file can crash): a format tag, the parameter count, then per parameter what the optimizer keeps.
constexpr uint32_t kOptimizerFormat = 0x4f505431;  // "OPT1"
enum class KeptState : uint8_t { kNone = 0, kAdam = 1, kSgd = 2 };

std::vector<torch::Tensor> optimized_parameters(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> out;
  for (auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) out.push_back(parameter);
  }
  return out;
}

// How LibTorch's optimizers key their per-parameter state.
std::string state_key(const torch::Tensor& parameter) {
  return c10::guts::to_string(parameter.unsafeGetTensorImpl());
}

// A saved tensor of `parameter`'s state: its shape and type, on its device; `optional` ones may
// be absent (Adam's max_exp_avg_sq without amsgrad).
torch::Tensor read_kept(sdk::StateReader& in, const torch::Tensor& parameter, bool optional) {
  torch::Tensor saved = sdk::read_tensor(in);
  if (!saved.defined() && optional) return saved;
  if (!saved.defined() || saved.sizes() != parameter.sizes() ||
      saved.scalar_type() != parameter.scalar_type()) {
    throw RunError("the optimizer state holds a tensor of shape " +
                   (saved.defined() ? c10::str(saved.sizes()) : std::string("(none)")) +
                   " for a parameter of shape " + c10::str(parameter.sizes()) +
                   " (another model's state)");
  }
  return saved.to(parameter.device());
}

std::unique_ptr<torch::optim::OptimizerParamState> read_state(sdk::StateReader& in, KeptState kind,
                                                              bool adam,
                                                              const torch::Tensor& parameter) {
  if (kind == KeptState::kAdam && adam) {
    auto state = std::make_unique<torch::optim::AdamParamState>();
    state->step(in.value<int64_t>());
    state->exp_avg(read_kept(in, parameter, false));
    state->exp_avg_sq(read_kept(in, parameter, false));
    state->max_exp_avg_sq(read_kept(in, parameter, true));
    return state;
  }
  if (kind == KeptState::kSgd && !adam) {
    auto state = std::make_unique<torch::optim::SGDParamState>();
    state->momentum_buffer(read_kept(in, parameter, false));
    return state;
  }
  throw RunError("holds the state of another optimizer (train.optimizer differs?)");
}

}  // namespace

void save_optimizer(torch::optim::Optimizer& optimizer, const ByteSink& sink) {
  sdk::StateWriter out(&write_to_sink, const_cast<ByteSink*>(&sink));
  out.value(kOptimizerFormat);
  const auto parameters = optimized_parameters(optimizer);
  out.value(static_cast<uint64_t>(parameters.size()));
  for (const auto& parameter : parameters) {
    const auto found = optimizer.state().find(state_key(parameter));
    const auto* kept = found == optimizer.state().end() ? nullptr : found->second.get();
    if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(kept)) {
      out.value(KeptState::kAdam);
      out.value(adam->step());
      sdk::write_tensor(out, adam->exp_avg());
      sdk::write_tensor(out, adam->exp_avg_sq());
      sdk::write_tensor(out, adam->max_exp_avg_sq());
    } else if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(kept)) {
      out.value(KeptState::kSgd);
      sdk::write_tensor(out, sgd->momentum_buffer());
    } else if (kept == nullptr) {
      out.value(KeptState::kNone);  // no step yet
    } else {
      throw RunError("cannot checkpoint this optimizer's state (Adam and SGD only)");
    }
  }
}

void restore_optimizer(torch::optim::Optimizer& optimizer, const std::string& bytes) {
  try {
    sdk::StateReader in(bytes.data(), bytes.size());
    if (in.value<uint32_t>() != kOptimizerFormat) throw RunError("not a clhost optimizer state");
    const auto parameters = optimized_parameters(optimizer);
    const auto count = in.value<uint64_t>();
    if (count != parameters.size()) {
      throw RunError("holds the state of " + std::to_string(count) +
                     " parameters; this optimizer has " + std::to_string(parameters.size()));
    }
    const bool adam = dynamic_cast<torch::optim::Adam*>(&optimizer) != nullptr;
    std::vector<std::pair<std::string, std::unique_ptr<torch::optim::OptimizerParamState>>> read;
    for (const auto& parameter : parameters) {
      const auto kind = in.value<KeptState>();
      if (kind == KeptState::kNone) continue;
      read.emplace_back(state_key(parameter), read_state(in, kind, adam, parameter));
    }
    in.finish();
    // Only a state read whole replaces the optimizer's.
    optimizer.state().clear();
    for (auto& [key, state] : read) optimizer.state()[key] = std::move(state);
  } catch (const sdk::Error& e) {
    throw RunError(e.what());
  }
}

std::string save_generator() {
  auto generator = at::detail::getDefaultCPUGenerator();
  const std::lock_guard<std::mutex> lock(generator.mutex());
  const torch::Tensor state = generator.get_state();
  return {static_cast<const char*>(state.data_ptr()), static_cast<size_t>(state.nbytes())};
}

void restore_generator(const std::string& bytes) {
  auto generator = at::detail::getDefaultCPUGenerator();
  const std::lock_guard<std::mutex> lock(generator.mutex());
  // A state is always the size of the one this LibTorch writes (an empty file was a memcpy into
  // a null pointer, found by fuzzing).
  const int64_t expected = generator.get_state().nbytes();
  if (static_cast<int64_t>(bytes.size()) != expected) {
    throw RunError("not a LibTorch CPU generator state: " + std::to_string(bytes.size()) +
                   " bytes, where one has " + std::to_string(expected));
  }
  torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr(), bytes.data(), bytes.size());
  try {
    generator.set_state(state);
  } catch (const c10::Error& e) {
    throw RunError(std::string("not a LibTorch CPU generator state: ") +
                   e.what_without_backtrace());
  }
}

std::string int64_bytes(const std::vector<int64_t>& values) {
  return {reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int64_t)};
}

std::vector<int64_t> sample_order(const std::string& bytes, int64_t samples) {
  if (bytes.size() != static_cast<size_t>(samples) * sizeof(int64_t)) {
    throw RunError("holds " + std::to_string(bytes.size()) + " bytes, not the order of " +
                   std::to_string(samples) + " samples (" +
                   std::to_string(static_cast<size_t>(samples) * sizeof(int64_t)) + " bytes)");
  }
  std::vector<int64_t> order(static_cast<size_t>(samples));
  std::memcpy(order.data(), bytes.data(), bytes.size());
  std::vector<bool> seen(order.size(), false);
  for (const int64_t index : order) {
    if (index < 0 || index >= samples || seen[static_cast<size_t>(index)]) {
      throw RunError("is not a permutation of the task's " + std::to_string(samples) +
                     " samples (sample index " + std::to_string(index) + ")");
    }
    seen[static_cast<size_t>(index)] = true;
  }
  return order;
}

namespace {

enum class Saved { kObject, kString, kBool, kCount, kNumber, kStrings, kObjects };

struct SavedKey {
  const char* name;
  Saved kind;
  bool required;
};

// trainer.json's keys besides TrainerState's (checked by reading one), as Trainer writes them.
constexpr SavedKey kTrainerKeys[] = {{"config", Saved::kObject, true},
                                     {"cli_plugin_path", Saved::kStrings, false},
                                     {"given_keys", Saved::kStrings, false},
                                     {"plugins", Saved::kObjects, true},
                                     {"task", Saved::kCount, true},
                                     {"step", Saved::kCount, true},
                                     {"task_train_seconds", Saved::kNumber, true},
                                     {"task_out_of_memory_retries", Saved::kCount, true},
                                     {"fisher_groups", Saved::kStrings, true},
                                     {"metrics_csv_bytes", Saved::kCount, true},
                                     {"order_rng", Saved::kString, false},
                                     {"cursor", Saved::kCount, false}};
// Each plugins[] entry (PluginSet::add_state_files).
constexpr SavedKey kPluginKeys[] = {{"id", Saved::kString, true},
                                    {"version", Saved::kString, true},
                                    {"resumable", Saved::kBool, false},
                                    {"file", Saved::kString, false},
                                    {"held", Saved::kString, false}};

bool all_of_type(const nlohmann::json& array, nlohmann::json::value_t type) {
  return std::all_of(array.begin(), array.end(),
                     [type](const nlohmann::json& item) { return item.type() == type; });
}

bool has_kind(const nlohmann::json& value, Saved kind) {
  using value_t = nlohmann::json::value_t;
  switch (kind) {
    case Saved::kObject: return value.is_object();
    case Saved::kString: return value.is_string();
    case Saved::kBool: return value.is_boolean();
    case Saved::kCount:
      return value.is_number_unsigned() || (value.is_number_integer() && value >= 0);
    case Saved::kNumber: return value.is_number();
    case Saved::kStrings: return value.is_array() && all_of_type(value, value_t::string);
    case Saved::kObjects: return value.is_array() && all_of_type(value, value_t::object);
  }
  return false;
}

const char* kind_name(Saved kind) {
  switch (kind) {
    case Saved::kObject: return "an object";
    case Saved::kString: return "a string";
    case Saved::kBool: return "true or false";
    case Saved::kCount: return "a non-negative integer";
    case Saved::kNumber: return "a number";
    case Saved::kStrings: return "an array of strings";
    case Saved::kObjects: return "an array of objects";
  }
  return "?";
}

template <size_t N>
void check_keys(const nlohmann::json& object, const SavedKey (&keys)[N], const std::string& where) {
  for (const SavedKey& key : keys) {
    if (!object.contains(key.name)) {
      if (key.required) throw RunError(where + key.name + ": missing");
      continue;
    }
    if (!has_kind(object.at(key.name), key.kind)) {
      const std::string value = object.at(key.name).dump();
      throw RunError(where + key.name + ": should be " + kind_name(key.kind) + ", is " +
                     (value.size() > 60 ? value.substr(0, 57) + "..." : value));
    }
  }
}

}  // namespace

void check_trainer_json(const nlohmann::json& saved) {
  if (!saved.is_object()) throw RunError("not a JSON object");
  check_keys(saved, kTrainerKeys, "");
  for (size_t i = 0; i < saved.at("plugins").size(); ++i) {
    check_keys(saved.at("plugins").at(i), kPluginKeys, "plugins[" + std::to_string(i) + "].");
  }
  try {
    TrainerState counters;
    counters.read(saved);
  } catch (const nlohmann::json::exception& e) {
    throw RunError(e.what());
  }
}

}  // namespace clhost
