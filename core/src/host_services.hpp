// The host side of the plug-in ABI: the live state the `clhost.*` services read (Runtime), who
// is calling (PluginContext), and the service tables themselves (host_services.cpp).
#pragma once

#include <clhost/clhost_plugin.h>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clhost/fisher_store.hpp"
#include "clhost/memory_budget.hpp"
#include "fisher.hpp"

namespace clhost {

class Runtime;

// The samples a replay plug-in holds (kind REPLAY, ABI 1.7): inputs and labels as the model takes
// them, and the task each came from; undefined while empty.
struct ReplayBuffer {
  torch::Tensor x;
  torch::Tensor y;
  torch::Tensor tasks;  // int32
  [[nodiscard]] int64_t size() const { return x.defined() ? x.size(0) : 0; }
};

// What a plug-in's host pointer leads to: the runtime, who is calling (for log prefixes), and
// what the host holds for that plug-in (written into checkpoints with it).
struct PluginContext {
  Runtime* runtime = nullptr;
  std::string id;
  bool quiet = false;
  std::vector<torch::Tensor> snapshot;  // clhost.snapshot/1: parameters, then buffers; or empty
  ReplayBuffer replay;
};

// The live state that host services read. One per run; plug-ins reach it through host_data.
class Runtime {
 public:
  torch::nn::Sequential model;
  std::vector<torch::Tensor> parameters;
  std::vector<std::string> parameter_names;
  std::vector<std::vector<int64_t>> parameter_shapes;
  FisherContext fisher_context;
  bool in_task_end = false;
  int64_t budget_bytes = -1;
  int64_t fisher_block_size = 1000000;
  // The most any host Fisher pass (Fisher, per-sample or output gradients) held above what was
  // live when it began, -1 before the first (results.json → memory.fisher_pass_peak_bytes).
  int64_t fisher_pass_peak_bytes = -1;
  Collective* collective = &single_process();  // the run's ranks (one, unless data-parallel)
  int64_t fisher_samples_computed = 0;         // by this rank, in every Fisher pass so far
  nlohmann::json settings;                     // the resolved configuration, for clhost.settings/1
  std::unique_ptr<FisherStore> store;          // created on first use
  // Delivers a USER event from `source` to the profilers (set by the trainer for the run).
  std::function<void(const std::string& source, const std::string& label)> mark;

  // `names` replaces LibTorch's parameter names (a TorchScript model keeps its Python names).
  void bind_model(torch::nn::Sequential net, const std::vector<std::string>& names = {}) {
    model = std::move(net);
    for (const auto& item : model->named_parameters()) {
      parameter_names.push_back(names.empty() ? item.key() : names.at(parameters.size()));
      parameters.push_back(item.value());
      parameter_shapes.push_back(item.value().sizes().vec());
    }
  }
};

// Records the peak of one host Fisher pass (memory::NestedPeak) into
// runtime.fisher_pass_peak_bytes when the pass ends, however it ends.
class FisherPassPeak {
 public:
  explicit FisherPassPeak(Runtime& runtime) : runtime_(runtime) {}
  ~FisherPassPeak() {
    runtime_.fisher_pass_peak_bytes = std::max(runtime_.fisher_pass_peak_bytes, peak_.growth());
  }
  FisherPassPeak(const FisherPassPeak&) = delete;
  FisherPassPeak& operator=(const FisherPassPeak&) = delete;
  FisherPassPeak(FisherPassPeak&&) = delete;
  FisherPassPeak& operator=(FisherPassPeak&&) = delete;

 private:
  Runtime& runtime_;
  memory::NestedPeak peak_;
};

// The `get_service` of every plug-in's host: the clhost.* service tables, or NULL.
const void* host_get_service(const clhost_host_t* host, const char* id);
// The services of plug-ins that see outputs (output_services.cpp): snapshot, output_grads.
const void* output_service(const char* id);

// Shared by the service implementations.
Runtime& runtime_of(const clhost_host_t* host);
// A DLTensor over a contiguous tensor; `shape` (its sizes) must outlive it.
DLTensor as_dltensor(const torch::Tensor& tensor, std::vector<int64_t>& shape);
// The same, with `shape` filled from the tensor's sizes first.
inline DLTensor dltensor_of(const torch::Tensor& tensor, std::vector<int64_t>& shape) {
  shape = tensor.sizes().vec();
  return as_dltensor(tensor, shape);
}
// Converts a host exception into the ABI's status + message.
clhost_status_t report_exception(const std::exception& e, const char* what, clhost_error_t* error);
// The run's Fisher context, with progress lines logged under the calling plug-in's name.
FisherContext context_with_progress(const clhost_host_t* host);
// Thrown out of a pass when a plug-in's callback returned non-OK (its message is in *error).
struct SinkFailure {
  clhost_status_t status;
};

}  // namespace clhost
