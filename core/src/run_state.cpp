#include "run_state.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include "clhost/errors.hpp"
#include "clhost/plugin_torch.hpp"

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
  sdk::StateReader in(bytes.data(), bytes.size());
  const auto parameters = model->named_parameters();
  const auto buffers = model->named_buffers();
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
}

void save_optimizer(torch::optim::Optimizer& optimizer, const ByteSink& sink) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  archive.save_to([&](const void* data, size_t size) {
    sink(data, size);
    return size;
  });
}

void restore_optimizer(torch::optim::Optimizer& optimizer, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  optimizer.load(archive);
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
  torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr(), bytes.data(), bytes.size());
  generator.set_state(state);
}

std::string int64_bytes(const std::vector<int64_t>& values) {
  return {reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int64_t)};
}

std::vector<int64_t> int64_values(const std::string& bytes) {
  std::vector<int64_t> values(bytes.size() / sizeof(int64_t));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(int64_t));
  return values;
}

}  // namespace clhost
