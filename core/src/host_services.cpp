#include "host_services.hpp"

#include <ATen/DLConvertor.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "io.hpp"
#include "settings_service.hpp"
#include "training_checkpoint.hpp"

namespace clhost {
namespace {

using json = nlohmann::json;

std::mutex& log_mutex() {
  static std::mutex mutex;
  return mutex;
}

void host_log(const clhost_host_t* host, clhost_log_level_t level, const char* message) {
  static const char* const kLevels[] = {"debug", "info", "warning", "error"};
  const auto* context = static_cast<const PluginContext*>(host->host_data);
  const int index = level >= CLHOST_LOG_DEBUG && level <= CLHOST_LOG_ERROR ? level : 1;
  if (context->quiet && index < CLHOST_LOG_WARNING) return;  // --quiet keeps warnings only
  const std::lock_guard<std::mutex> lock(log_mutex());
  std::fprintf(stderr, "[%s] %s: %s\n", context->id.c_str(), kLevels[index], message);
}

uint32_t params_count(const clhost_host_t* host) {
  return static_cast<uint32_t>(runtime_of(host).parameters.size());
}

clhost_status_t params_get(const clhost_host_t* host, uint32_t index, clhost_parameter_t* out,
                           clhost_error_t* error) {
  Runtime& runtime = runtime_of(host);
  if (out == nullptr || index >= runtime.parameters.size()) {
    std::snprintf(error->message, sizeof(error->message),
                  "params.get: index %u out of range (%zu parameters)", index,
                  runtime.parameters.size());
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  const torch::Tensor& value = runtime.parameters[index];
  std::vector<int64_t>& shape = runtime.parameter_shapes[index];
  *out = clhost_parameter_t{};
  out->name = runtime.parameter_names[index].c_str();
  out->value = as_dltensor(value, shape);
  out->numel = value.numel();
  const torch::Tensor& grad = value.grad();
  if (grad.defined()) {
    out->grad = as_dltensor(grad, shape);
  } else {
    out->grad = out->value;
    out->grad.data = nullptr;
  }
  return CLHOST_STATUS_OK;
}

clhost_status_t gradstats_diagonal_fisher(const clhost_host_t* host,
                                          const clhost_fisher_request_t* request,
                                          clhost_fisher_sink_fn sink, void* sink_data,
                                          clhost_error_t* error) {
  Runtime& runtime = runtime_of(host);
  if (!runtime.in_task_end) {
    std::snprintf(error->message, sizeof(error->message),
                  "gradstats.diagonal_fisher may only be called from on_task_end");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  if (request == nullptr || request->struct_size < sizeof(clhost_fisher_request_t)) {
    std::snprintf(
        error->message, sizeof(error->message),
        "gradstats.diagonal_fisher: request->struct_size must be sizeof(clhost_fisher_request_t)");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  try {
    const int64_t block_size =
        request->block_size > 0 ? request->block_size : runtime.fisher_block_size;
    const FisherPassPeak measured(runtime);
    diagonal_fisher(context_with_progress(host), *request, block_size, FisherMethod::kAuto,
                    [&](size_t parameter, int64_t offset, const torch::Tensor& values) {
                      crash_point("fisher");
                      std::vector<int64_t> shape{values.numel()};
                      const torch::Tensor flat = values.to(torch::kFloat32).contiguous();
                      DLTensor view = as_dltensor(flat, shape);
                      const clhost_status_t status =
                          sink(sink_data, static_cast<uint32_t>(parameter), offset, &view, error);
                      if (status != CLHOST_STATUS_OK) throw SinkFailure{status};
                    });
    return CLHOST_STATUS_OK;
  } catch (const SinkFailure& failure) {
    return failure.status;  // the plug-in's message is already in *error
  } catch (const std::exception& e) {
    return report_exception(e, "diagonal Fisher failed", error);
  }
}

clhost_status_t sample_grads_sample_gradients(const clhost_host_t* host,
                                              const clhost_fisher_request_t* request,
                                              clhost_sample_grads_sink_fn sink, void* sink_data,
                                              clhost_error_t* error) {
  Runtime& runtime = runtime_of(host);
  if (!runtime.in_task_end) {
    std::snprintf(error->message, sizeof(error->message),
                  "sample_grads.sample_gradients may only be called from on_task_end");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  if (request == nullptr || request->struct_size < sizeof(clhost_fisher_request_t) ||
      sink == nullptr) {
    std::snprintf(error->message, sizeof(error->message),
                  "sample_grads.sample_gradients: needs a sink and a request with struct_size = "
                  "sizeof(clhost_fisher_request_t)");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  try {
    const int64_t block_size =
        request->block_size > 0 ? request->block_size : runtime.fisher_block_size;
    const FisherPassPeak measured(runtime);
    per_sample_gradients(
        context_with_progress(host), *request, block_size, FisherMethod::kAuto,
        [&](size_t block_index, size_t block_count, const FisherBlock& block,
            const torch::Tensor& rows, int64_t samples, bool last) {
          crash_point("fisher");
          std::vector<clhost_block_segment_t> segments;
          for (const auto& segment : block) {
            const auto& parameter = runtime.parameters[segment.parameter];
            const int64_t row = parameter.dim() == 0 ? 1 : parameter.numel() / parameter.size(0);
            segments.push_back({static_cast<uint32_t>(segment.parameter), segment.row_begin * row,
                                (segment.row_end - segment.row_begin) * row});
          }
          const torch::Tensor values = rows.to(torch::kFloat32).contiguous();
          std::vector<int64_t> shape = values.sizes().vec();
          const clhost_sample_grads_chunk_t chunk{sizeof(clhost_sample_grads_chunk_t),
                                                  static_cast<uint32_t>(block_index),
                                                  static_cast<uint32_t>(block_count),
                                                  static_cast<uint32_t>(segments.size()),
                                                  segments.data(),
                                                  as_dltensor(values, shape),
                                                  samples,
                                                  last ? 1 : 0};
          const clhost_status_t status = sink(sink_data, &chunk, error);
          if (status != CLHOST_STATUS_OK) throw SinkFailure{status};
        });
    return CLHOST_STATUS_OK;
  } catch (const SinkFailure& failure) {
    return failure.status;
  } catch (const std::exception& e) {
    return report_exception(e, "per-sample gradients failed", error);
  }
}

const json& runtime_settings(const clhost_host_t* host) {
  return runtime_of(host).settings;
}
using RuntimeSettings = SettingsService<&runtime_settings>;

FisherStore& store_of(Runtime& runtime) {
  if (runtime.store == nullptr) throw RunError("the Fisher store is not available in this run");
  return *runtime.store;
}

template <class Body>
clhost_status_t store_call(clhost_error_t* error, Body&& body) {
  try {
    body();
    return CLHOST_STATUS_OK;
  } catch (const RunError& e) {
    std::snprintf(error->message, sizeof(error->message), "%s", e.what());
    return CLHOST_STATUS_IO;
  } catch (const std::exception& e) {
    return report_exception(e, "Fisher store", error);
  }
}

const float* float_data(const DLTensor* tensor, int64_t* count) {
  if (tensor == nullptr || tensor->ndim != 1 || tensor->dtype.code != kDLFloat ||
      tensor->dtype.bits != 32 || tensor->device.device_type != kDLCPU ||
      (tensor->strides != nullptr && tensor->strides[0] != 1)) {
    throw RunError("Fisher store blocks must be 1-D contiguous float32 CPU tensors");
  }
  *count = tensor->shape[0];
  return reinterpret_cast<const float*>(static_cast<const char*>(tensor->data) +
                                        tensor->byte_offset);
}

clhost_status_t store_begin(const clhost_host_t* host, const char* group, const char* description,
                            clhost_error_t* error) {
  return store_call(error, [&] {
    store_of(runtime_of(host)).begin_group(group ? group : "", description ? description : "");
  });
}
clhost_status_t store_begin_vectors(const clhost_host_t* host, const char* group,
                                    const char* description, int64_t vectors,
                                    clhost_error_t* error) {
  return store_call(error, [&] {
    store_of(runtime_of(host))
        .begin_group(group ? group : "", description ? description : "", vectors);
  });
}
clhost_status_t store_write(const clhost_host_t* host, uint32_t parameter, int64_t offset,
                            const DLTensor* block, clhost_error_t* error) {
  return store_call(error, [&] {
    int64_t count = 0;
    const float* data = float_data(block, &count);
    store_of(runtime_of(host)).write_block(parameter, offset, data, count);
    crash_point("store");
  });
}
clhost_status_t store_commit(const clhost_host_t* host, clhost_error_t* error) {
  return store_call(error, [&] { store_of(runtime_of(host)).commit_group(); });
}
void store_abort(const clhost_host_t* host) {
  Runtime& runtime = runtime_of(host);
  if (runtime.store != nullptr) runtime.store->abort_group();
}
clhost_status_t store_read(const clhost_host_t* host, const char* group, uint32_t parameter,
                           int64_t offset, DLTensor* out, clhost_error_t* error) {
  return store_call(error, [&] {
    int64_t count = 0;
    auto* data = const_cast<float*>(float_data(out, &count));
    store_of(runtime_of(host)).read_block(group ? group : "", parameter, offset, data, count);
  });
}

clhost_status_t memory_get_info(const clhost_host_t* host, clhost_memory_info_t* out,
                                clhost_error_t* error) {
  if (out == nullptr || out->struct_size < sizeof(clhost_memory_info_t)) {
    std::snprintf(error->message, sizeof(error->message),
                  "memory.get_info: out->struct_size must be set to sizeof(clhost_memory_info_t)");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  const ProcessMemory memory = read_process_memory();
  out->rss_bytes = memory.rss_bytes;
  out->rss_peak_bytes = memory.peak_rss_bytes;
  out->tensor_bytes = memory::current_bytes();
  out->tensor_peak_bytes = memory::peak_bytes();
  out->budget_bytes = runtime_of(host).budget_bytes;
  out->device_allocated_bytes = -1;
  out->device_reserved_bytes = -1;
  return CLHOST_STATUS_OK;
}

// --- clhost.collective/1 ---------------------------------------------------------------------

// A call whose tensor the service cannot use: INVALID_ARGUMENT, with what was wrong.
struct BadCollectiveTensor : std::runtime_error {
  using std::runtime_error::runtime_error;
};

torch::ScalarType collective_dtype(const DLDataType& type) {
  if (type.lanes == 1 && type.code == kDLFloat && type.bits == 32) return torch::kFloat32;
  if (type.lanes == 1 && type.code == kDLFloat && type.bits == 64) return torch::kFloat64;
  if (type.lanes == 1 && type.code == kDLInt && type.bits == 32) return torch::kInt32;
  if (type.lanes == 1 && type.code == kDLInt && type.bits == 64) return torch::kInt64;
  throw BadCollectiveTensor("tensors must be float32, float64, int32 or int64");
}

// The plug-in's tensor as a LibTorch tensor over the same memory (no copy).
torch::Tensor collective_tensor(const DLTensor* tensor) {
  if (tensor == nullptr) throw BadCollectiveTensor("tensor is NULL");
  if (tensor->device.device_type != kDLCPU) throw BadCollectiveTensor("tensors must be on the CPU");
  const torch::ScalarType dtype = collective_dtype(tensor->dtype);
  std::vector<int64_t> shape(tensor->shape, tensor->shape + tensor->ndim);
  int64_t expected_stride = 1;
  for (int d = tensor->ndim - 1; d >= 0; --d) {
    if (tensor->strides != nullptr && shape[static_cast<size_t>(d)] > 1 &&
        tensor->strides[d] != expected_stride) {
      throw BadCollectiveTensor("tensors must be contiguous (row-major)");
    }
    expected_stride *= shape[static_cast<size_t>(d)];
  }
  if (tensor->data == nullptr && expected_stride > 0) throw BadCollectiveTensor("data is NULL");
  return torch::from_blob(static_cast<char*>(tensor->data) + tensor->byte_offset, shape, dtype);
}

template <class Body>
clhost_status_t collective_call(const char* what, clhost_error_t* error, Body&& body) {
  try {
    body();
    return CLHOST_STATUS_OK;
  } catch (const BadCollectiveTensor& e) {
    std::snprintf(error->message, sizeof(error->message), "%s: %s", what, e.what());
    return CLHOST_STATUS_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    return report_exception(e, what, error);
  }
}

int32_t collective_rank(const clhost_host_t* host) {
  return runtime_of(host).collective->rank();
}
int32_t collective_world_size(const clhost_host_t* host) {
  return runtime_of(host).collective->world_size();
}
clhost_status_t collective_all_reduce_sum(const clhost_host_t* host, DLTensor* tensor,
                                          clhost_error_t* error) {
  return collective_call("collective.all_reduce_sum", error,
                         [&] { runtime_of(host).collective->sum({collective_tensor(tensor)}); });
}
clhost_status_t collective_broadcast(const clhost_host_t* host, DLTensor* tensor, int32_t root,
                                     clhost_error_t* error) {
  return collective_call("collective.broadcast", error, [&] {
    Collective& collective = *runtime_of(host).collective;
    if (root < 0 || root >= collective.world_size()) {
      throw BadCollectiveTensor("root " + std::to_string(root) + " is not a rank (world size " +
                                std::to_string(collective.world_size()) + ")");
    }
    collective.broadcast({collective_tensor(tensor)}, root);
  });
}

clhost_status_t events_mark(const clhost_host_t* host, const char* label, clhost_error_t* error) {
  if (label == nullptr || *label == '\0') {
    std::snprintf(error->message, sizeof(error->message), "events.mark: empty label");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  const auto* context = static_cast<const PluginContext*>(host->host_data);
  if (!context->runtime->mark) {
    std::snprintf(error->message, sizeof(error->message),
                  "events.mark: only callable from a hook while the run is in progress");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  try {
    context->runtime->mark(context->id, label);
    return CLHOST_STATUS_OK;
  } catch (const std::exception& e) {
    std::snprintf(error->message, sizeof(error->message), "events.mark: %s", e.what());
    return CLHOST_STATUS_INTERNAL;
  }
}

const clhost_collective_service_v1_t kCollectiveService{
    sizeof(clhost_collective_service_v1_t), &collective_rank, &collective_world_size,
    &collective_all_reduce_sum, &collective_broadcast};
const clhost_events_service_v1_t kEventsService{sizeof(clhost_events_service_v1_t), &events_mark};
const clhost_log_service_v1_t kLogService{sizeof(clhost_log_service_v1_t), &host_log};
const clhost_params_service_v1_t kParamsService{sizeof(clhost_params_service_v1_t), &params_count,
                                                &params_get};
const clhost_gradstats_service_v1_t kGradstatsService{sizeof(clhost_gradstats_service_v1_t),
                                                      &gradstats_diagonal_fisher};
const clhost_sample_grads_service_v1_t kSampleGradsService{sizeof(clhost_sample_grads_service_v1_t),
                                                           &sample_grads_sample_gradients};
const clhost_memory_service_v1_t kMemoryService{sizeof(clhost_memory_service_v1_t),
                                                &memory_get_info};

const clhost_fisher_store_v1_t kFisherStoreService{sizeof(clhost_fisher_store_v1_t),
                                                   &store_begin,
                                                   &store_write,
                                                   &store_commit,
                                                   &store_abort,
                                                   &store_read,
                                                   &store_begin_vectors};

}  // namespace

Runtime& runtime_of(const clhost_host_t* host) {
  return *static_cast<const PluginContext*>(host->host_data)->runtime;
}

DLTensor as_dltensor(const torch::Tensor& tensor, std::vector<int64_t>& shape) {
  DLTensor out{};
  out.data = tensor.data_ptr();
  out.device = {tensor.is_cuda() ? kDLCUDA : kDLCPU,
                static_cast<int32_t>(tensor.is_cuda() ? tensor.get_device() : 0)};
  out.ndim = static_cast<int32_t>(tensor.dim());
  out.dtype = at::getDLDataType(tensor);
  out.shape = shape.data();
  out.strides = nullptr;  // contiguous (checked by the caller)
  out.byte_offset = 0;
  return out;
}

clhost_status_t report_exception(const std::exception& e, const char* what, clhost_error_t* error) {
  std::snprintf(error->message, sizeof(error->message), "%s: %s", what, e.what());
  return std::strstr(e.what(), "out of memory") ? CLHOST_STATUS_OUT_OF_MEMORY
                                                : CLHOST_STATUS_INTERNAL;
}

FisherContext context_with_progress(const clhost_host_t* host) {
  FisherContext context = runtime_of(host).fisher_context;
  context.progress = [host](const std::string& line) {
    host_log(host, CLHOST_LOG_INFO, line.c_str());
  };
  return context;
}

const void* host_get_service(const clhost_host_t* /*host*/, const char* id) {
  if (id == nullptr) return nullptr;
  if (std::strcmp(id, CLHOST_SERVICE_SETTINGS_V1) == 0) return &RuntimeSettings::table;
  if (std::strcmp(id, CLHOST_SERVICE_FISHER_STORE_V1) == 0) return &kFisherStoreService;
  if (std::strcmp(id, CLHOST_SERVICE_LOG_V1) == 0) return &kLogService;
  if (std::strcmp(id, CLHOST_SERVICE_PARAMS_V1) == 0) return &kParamsService;
  if (std::strcmp(id, CLHOST_SERVICE_GRADSTATS_V1) == 0) return &kGradstatsService;
  if (std::strcmp(id, CLHOST_SERVICE_SAMPLE_GRADS_V1) == 0) return &kSampleGradsService;
  if (std::strcmp(id, CLHOST_SERVICE_MEMORY_V1) == 0) return &kMemoryService;
  if (std::strcmp(id, CLHOST_SERVICE_EVENTS_V1) == 0) return &kEventsService;
  if (std::strcmp(id, CLHOST_SERVICE_COLLECTIVE_V1) == 0) return &kCollectiveService;
  return output_service(id);
}

}  // namespace clhost
