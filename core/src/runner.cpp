#include "clhost/runner.hpp"

#include <ATen/DLConvertor.h>
#include <malloc.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "checkpoint.hpp"
#include "clhost/errors.hpp"
#include "clhost/fisher_store.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/plugin_loader.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "io.hpp"
#include "model.hpp"
#include "progress.hpp"
#include "run_state.hpp"
#include "scripted_model.hpp"
#include "settings_service.hpp"
#include "training_checkpoint.hpp"

namespace clhost {

const char* version() {
  return CLHOST_VERSION;
}

namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

class Runtime;

// What a plug-in's host pointer leads to: the runtime, and who is calling (for log prefixes).
struct PluginContext {
  Runtime* runtime = nullptr;
  std::string id;
  bool quiet = false;
};

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
  json settings;                       // the resolved configuration, for clhost.settings/1
  std::unique_ptr<FisherStore> store;  // created on first use
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

// Converts a host exception into the ABI's status + message.
clhost_status_t report_exception(const std::exception& e, const char* what, clhost_error_t* error) {
  std::snprintf(error->message, sizeof(error->message), "%s: %s", what, e.what());
  return std::strstr(e.what(), "out of memory") ? CLHOST_STATUS_OUT_OF_MEMORY
                                                : CLHOST_STATUS_INTERNAL;
}

struct SinkFailure {
  clhost_status_t status;
};

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
    diagonal_fisher(runtime.fisher_context, *request, block_size, FisherMethod::kAuto,
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
    per_sample_gradients(
        runtime.fisher_context, *request, block_size, FisherMethod::kAuto,
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
  return nullptr;
}

// One created plug-in; destroys its instance when it goes (the library stays loaded).
struct PluginInstance {
  const LoadedPlugin* plugin = nullptr;
  ResolvedPluginConfig config;
  PluginContext context;
  clhost_host_t host{};
  void* instance = nullptr;
  std::string variant;

  PluginInstance() = default;
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;
  PluginInstance(PluginInstance&&) = delete;
  PluginInstance& operator=(PluginInstance&&) = delete;
  ~PluginInstance() {
    if (instance != nullptr) plugin->entry->destroy(instance);
  }
  [[nodiscard]] clhost_plugin_kind_t kind() const { return plugin->descriptor->kind; }
  template <class Table>
  [[nodiscard]] const Table& table() const {
    return *static_cast<const Table*>(plugin->interface);
  }
  // Turns a non-OK status into a RunError naming the plug-in and hook.
  void check(clhost_status_t status, const clhost_error_t& error, const char* hook) const {
    if (status != CLHOST_STATUS_OK) {
      throw RunError("plug-in '" + plugin->id + "' failed in " + hook + " (status " +
                     std::to_string(status) + "): " + error.message);
    }
  }
};

json config_values_json(const ResolvedPluginConfig& config) {
  json out = json::object();
  for (const auto& value : config.values()) {
    switch (value.type) {
      case CLHOST_CONFIG_TYPE_BOOL: out[value.key] = value.bool_value != 0; break;
      case CLHOST_CONFIG_TYPE_INT: out[value.key] = value.int_value; break;
      case CLHOST_CONFIG_TYPE_FLOAT: out[value.key] = value.float_value; break;
      case CLHOST_CONFIG_TYPE_STRING: out[value.key] = value.string_value; break;
    }
  }
  return out;
}

// The plug-in's own account of its keys without effect: {key: reason}, or null when the plug-in
// predates clhost.config_use/1 and cannot say.
json not_in_effect_json(const LoadedPipeline& pipeline, size_t index) {
  if (!pipeline.reports_use.at(index)) return nullptr;
  json out = json::object();
  for (const auto& unused : pipeline.not_in_effect.at(index)) out[unused.key] = unused.reason;
  return out;
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%d_%H%M%S", &local);
  return buffer;
}

std::string choose_run_dir(const RunConfig& config, const RunOptions& options) {
  if (!options.run_dir.empty()) {
    check_new_run_dir(options.run_dir);
    return options.run_dir;
  }
  const std::string base =
      (fs::path(config.run.output_dir) / (config.run.name + "_" + timestamp())).string();
  std::string candidate = base;
  for (int suffix = 2; fs::exists(candidate); ++suffix)
    candidate = base + "_" + std::to_string(suffix);
  return candidate;
}

// Columns of the model's output a task trains on / is evaluated on, and label -> column maps.
struct ClassView {
  torch::Tensor active;     // int64 column indices
  torch::Tensor label_map;  // [num_classes] global label -> index into active (-1 if absent)
};

ClassView make_class_view(const std::vector<int64_t>& classes, int64_t num_classes) {
  ClassView view;
  view.active = torch::tensor(classes, torch::kInt64);
  view.label_map = torch::full({num_classes}, -1, torch::kInt64);
  for (size_t i = 0; i < classes.size(); ++i) view.label_map[classes[i]] = static_cast<int64_t>(i);
  return view;
}

std::vector<int64_t> training_classes(const RunConfig& config, const TaskSequence& sequence,
                                      size_t task) {
  switch (config.data.incremental) {
    case Incremental::kTask: return sequence.tasks[task].classes;
    case Incremental::kClass: {
      // van de Ven et al.: the classes seen so far are active while training.
      std::vector<int64_t> seen;
      for (size_t t = 0; t <= task; ++t) {
        seen.insert(seen.end(), sequence.tasks[t].classes.begin(), sequence.tasks[t].classes.end());
      }
      return seen;
    }
    default: {
      std::vector<int64_t> all(static_cast<size_t>(sequence.num_classes));
      for (size_t c = 0; c < all.size(); ++c) all[c] = static_cast<int64_t>(c);
      return all;
    }
  }
}

std::vector<int64_t> evaluation_classes(const RunConfig& config, const TaskSequence& sequence,
                                        size_t task) {
  if (config.data.incremental == Incremental::kTask) return sequence.tasks[task].classes;
  std::vector<int64_t> all(static_cast<size_t>(sequence.num_classes));
  for (size_t c = 0; c < all.size(); ++c) all[c] = static_cast<int64_t>(c);
  return all;
}

int64_t streamed_bytes_read(const TaskSequence& sequence) {
  int64_t total = 0;
  for (const auto& task : sequence.tasks) {
    if (task.train_stream) total += task.train_stream->bytes_read();
    if (task.test_stream) total += task.test_stream->bytes_read();
  }
  return total;
}

double evaluate(torch::nn::Sequential& model, const TaskData& task, const ClassView& view,
                int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  const int64_t total = task.test_size();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t end = std::min(total, start + batch_size);
    torch::Tensor logits = model->forward(task.test_range(start, end)).index_select(1, view.active);
    torch::Tensor predicted = view.active.index_select(0, logits.argmax(1));
    correct += predicted.eq(task.test_y.slice(0, start, end)).sum().item<int64_t>();
  }
  model->train();
  return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
}

int64_t available_system_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

std::string machine_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "unknown";
  return buffer;
}

std::string format_double(double value, int digits) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << value;
  return out.str();
}

// --- SIGINT / SIGTERM -----------------------------------------------------------------------

std::atomic<int> stop_signal{0};

extern "C" void request_stop(int signal_number) {
  stop_signal.store(signal_number);
  // A second Ctrl-C is not polite: it ends the process at once.
  std::signal(signal_number, SIG_DFL);
}

// While a run is in progress, SIGINT and SIGTERM ask it to stop after the current step.
class StopSignals {
 public:
  StopSignals() {
    stop_signal.store(0);
    struct sigaction action {};
    action.sa_handler = &request_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  StopSignals(StopSignals&&) = delete;
  StopSignals& operator=(StopSignals&&) = delete;

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

}  // namespace

namespace {

RunSummary run_pipeline_in(const RunConfig& config, const RunOptions& options,
                           std::string& created_run_dir) {
  const auto wall_start = Clock::now();
  // SIGINT/SIGTERM from here on: during start-up the run stops before it writes anything; once
  // it trains, at the next step, with a checkpoint.
  const StopSignals stop_signals;
  // 1. Everything that can fail because of the user's input happens before any file is written.
  // A resume starts from the checkpoint: without a valid one there is nothing to continue.
  std::optional<LoadedCheckpoint> checkpoint;
  json saved;  // the checkpoint's trainer.json
  json resume_record;
  std::vector<std::string> cli_plugin_path = config.cli_plugin_path;
  if (options.resume) {
    const CheckpointDirectory directory(options.run_dir);
    json started_with;
    if (directory.has_checkpoints()) {
      checkpoint = directory.load_latest();
      saved = json::parse(checkpoint->file("trainer.json"));
      started_with = saved.at("config");
    } else {
      // Stopped before its first checkpoint was complete, which precedes the first step: no
      // training is lost, so the run starts over in its directory.
      started_with = json::parse(
          load_config((fs::path(options.run_dir) / "config.toml").string()).resolved_json);
    }
    const auto changes = config_changes(started_with.dump(), config.resolved_json);
    json change_list = json::array();
    std::string listing;
    bool unsafe = false;
    for (const auto& change : changes) {
      listing += "\n  " + change.key + ": " + change.before + " -> " + change.after +
                 (change.safe_on_resume ? "" : "  (cannot change in a resumed run)");
      unsafe = unsafe || !change.safe_on_resume;
      change_list.push_back(json{{"key", change.key},
                                 {"from", json::parse(change.before)},
                                 {"to", json::parse(change.after)}});
    }
    std::string safe_keys;
    for (const auto& key : resume_safe_keys()) safe_keys += (safe_keys.empty() ? "" : ", ") + key;
    if (!changes.empty() && (!options.allow_config_change || unsafe)) {
      throw ConfigError(
          config.source + ": the configuration differs from the one " + options.run_dir +
          " was started with:" + listing +
          (unsafe ? "\nRestore those keys; only " + safe_keys + " may change (docs/cli.md)."
                  : std::string("\nThese keys are safe to change: pass --allow-config-change to "
                                "accept.")));
    }
    const auto saved_plugin_path = checkpoint
                                       ? saved.value("cli_plugin_path", std::vector<std::string>{})
                                       : std::vector<std::string>{};
    for (const auto& dir : saved_plugin_path) {
      if (std::find(cli_plugin_path.begin(), cli_plugin_path.end(), dir) == cli_plugin_path.end())
        cli_plugin_path.push_back(dir);
    }
    resume_record = json{{"checkpoint", checkpoint ? json(checkpoint->directory) : json(nullptr)},
                         {"task", checkpoint ? saved.at("task").get<int64_t>() + 1 : 1},
                         {"step", checkpoint ? saved.at("step").get<int64_t>() : 0},
                         {"global_step", checkpoint ? saved.at("global_step").get<int64_t>() : 0},
                         {"time", timestamp()},
                         {"config_changes", change_list},
                         {"plugins_restarted", json::array()}};
  }
  PluginLoader loader(PluginLoader::search_path_for(cli_plugin_path, config.run.plugin_path));
  LoadedPipeline pipeline = load_pipeline(loader, config);
  for (const auto& warning : pipeline.warnings)
    std::fprintf(stderr, "warning: %s\n", warning.c_str());
  const std::vector<const LoadedPlugin*>& plugins = pipeline.plugins;
  std::vector<ResolvedPluginConfig>& plugin_configs = pipeline.configs;
  const std::string run_dir = options.resume ? options.run_dir : choose_run_dir(config, options);
  if (checkpoint) {
    // Every plug-in must find its own saved state, or the user must accept a fresh one.
    const json& saved_plugins = saved.at("plugins");
    std::string not_resumable;
    for (size_t i = 0; i < plugins.size(); ++i) {
      const json& entry = saved_plugins.at(i);
      const bool same = entry.at("id") == plugins[i]->id &&
                        entry.at("version") == plugins[i]->descriptor->version;
      const bool has_state = plugins[i]->entry->get_interface(CLHOST_INTERFACE_STATE_V1) != nullptr;
      if (same && has_state && entry.value("resumable", false)) continue;
      const std::string why =
          !same ? "the checkpoint was written by version " + entry.at("version").get<std::string>()
                : "it has no clhost.state/1 interface, so its state was not saved";
      not_resumable += "\n  " + plugins[i]->id + " " + plugins[i]->descriptor->version + ": " + why;
      resume_record["plugins_restarted"].push_back(json{{"id", plugins[i]->id}, {"reason", why}});
    }
    if (!not_resumable.empty() && !options.resume_anyway) {
      throw PluginError(options.run_dir +
                        ": not resumable: these plug-ins cannot continue from the "
                        "checkpoint:" +
                        not_resumable +
                        "\nStart the run again, or pass --resume-anyway to continue with them "
                        "starting from a fresh state (the results then differ from an "
                        "uninterrupted run).");
    }
  }

  at::set_num_threads(config.run.threads);
  torch::manual_seed(config.run.seed);
  memory::install_counting_allocator();
  // The budget belongs to this run only, however it ends.
  struct BudgetReset {
    BudgetReset() = default;
    BudgetReset(const BudgetReset&) = delete;
    BudgetReset& operator=(const BudgetReset&) = delete;
    BudgetReset(BudgetReset&&) = delete;
    BudgetReset& operator=(BudgetReset&&) = delete;
    ~BudgetReset() { memory::set_budget(-1); }
  } budget_reset;
  memory::reset_peak();
  TaskSequence sequence = build_task_sequence(config.data, config.tasks, config.run.seed);

  Runtime runtime;
  runtime.budget_bytes = config.run.memory_budget;
  ScriptedModel scripted;
  json model_report{{"kind", to_string(config.model.kind)}};
  if (config.model.kind == ModelKind::kTorchScript) {
    scripted = load_scripted_model(config.model, sequence.input_size, sequence.num_classes);
    runtime.bind_model(scripted.net, scripted.parameter_names);
    model_report["path"] = config.model.path;
    model_report["fisher_paths"] = scripted.layer_notes;
    if (!options.quiet) {
      std::fprintf(stderr, "model %s: %zu layer(s); Fisher pass per layer:\n",
                   config.model.path.c_str(), scripted.layer_notes.size());
      for (const auto& note : scripted.layer_notes) std::fprintf(stderr, "  %s\n", note.c_str());
    }
  } else {
    runtime.bind_model(
        make_model(config.model, sequence.input_size, sequence.image_side, sequence.num_classes));
  }
  int64_t parameter_count = 0;
  for (const auto& parameter : runtime.parameters) parameter_count += parameter.numel();
  model_report["parameters"] = parameter_count;
  // Enforced from here on: reading the IDX files briefly holds the whole dataset, which is not
  // what the budget is for; the task tensors and the model that stay resident do count.
  memory::set_budget(config.run.memory_budget);
  memory::reset_peak();
  if (config.run.memory_budget >= 0 && memory::current_bytes() > config.run.memory_budget) {
    throw RunError("the model and task data already hold " +
                   memory::format_bytes(memory::current_bytes()) +
                   " of tensors, more than run.memory_budget = " +
                   memory::format_bytes(config.run.memory_budget) +
                   ": not even one sample fits; raise the budget");
  }
  runtime.fisher_context.model = runtime.model;
  runtime.fisher_context.seed = config.run.seed;
  runtime.fisher_block_size = config.fisher.block_size;
  runtime.settings = json::parse(config.resolved_json);
  {
    StoreOptions store_options;
    store_options.codec = config.fisher.use_compression ? config.fisher.codec : "none";
    store_options.level = static_cast<int>(config.fisher.compression_level);
    store_options.dtype = config.fisher.store_dtype;
    store_options.chunk_elements = config.fisher.block_size;
    std::vector<ParameterInfo> model_info;
    for (size_t i = 0; i < runtime.parameters.size(); ++i) {
      model_info.push_back({runtime.parameter_names[i], runtime.parameter_shapes[i]});
    }
    try {
      runtime.store = std::make_unique<FisherStore>((fs::path(run_dir) / "fisher.h5").string(),
                                                    store_options, model_info, CLHOST_VERSION);
    } catch (const RunError& e) {
      throw ConfigError(config.source + ": fisher_computation: " + e.what());
    }
  }

  std::vector<std::unique_ptr<PluginInstance>> instances;
  for (size_t i = 0; i < plugins.size(); ++i) {
    auto instance = std::make_unique<PluginInstance>();
    instance->plugin = plugins[i];
    instance->config = std::move(plugin_configs[i]);
    instance->context = PluginContext{&runtime, plugins[i]->id, options.quiet};
    instance->host = clhost_host_t{sizeof(clhost_host_t),
                                   {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                                   CLHOST_VERSION,
                                   &host_get_service,
                                   &instance->context};
    clhost_error_t error{};
    const clhost_status_t status = plugins[i]->entry->create(
        &instance->host, instance->config.abi(), &instance->instance, &error);
    if (status != CLHOST_STATUS_OK) {
      instance->instance = nullptr;
      throw PluginError(config.pipeline[i].location + ": plug-in '" + plugins[i]->id +
                        "' refused to start (create returned status " + std::to_string(status) +
                        "): " + error.message);
    }
    instances.push_back(std::move(instance));
  }

  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (config.train.optimizer == OptimizerKind::kAdam) {
    optimizer = std::make_unique<torch::optim::Adam>(runtime.parameters,
                                                     torch::optim::AdamOptions(config.train.lr));
  } else {
    optimizer = std::make_unique<torch::optim::SGD>(
        runtime.parameters,
        torch::optim::SGDOptions(config.train.lr).momentum(config.train.momentum));
  }

  if (checkpoint) {
    // The checkpoint's state replaces the fresh one: plug-ins, model, optimizer, generator.
    for (size_t i = 0; i < instances.size(); ++i) {
      PluginInstance& instance = *instances[i];
      const json& entry = saved.at("plugins").at(i);
      const auto* state = static_cast<const clhost_state_v1_t*>(
          instance.plugin->entry->get_interface(CLHOST_INTERFACE_STATE_V1));
      if (state == nullptr || !entry.value("resumable", false) ||
          entry.at("version") != instance.plugin->descriptor->version) {
        continue;  // accepted with --resume-anyway above
      }
      const std::string& bytes = checkpoint->file(entry.at("file").get<std::string>());
      clhost_error_t error{};
      instance.check(state->restore(instance.instance, bytes.data(), bytes.size(), &error), error,
                     "restore (clhost.state/1)");
    }
    restore_model_tensors(runtime.model, checkpoint->file("model.bin"));
    // An uninterrupted run enters its next step with gradient tensors from the last one, which
    // zero_grad() zeroes; backward then adds into zeros. Recreate them so the sums match.
    if (saved.at("global_step").get<int64_t>() > 0) {
      for (auto& parameter : runtime.parameters) {
        parameter.mutable_grad() = torch::zeros_like(parameter);
      }
    }
    restore_optimizer(*optimizer, checkpoint->file("optimizer.pt"));
    restore_generator(checkpoint->file("generator.bin"));
  }

  crash_point("startup");
  if (const int signal_number = stop_signal.load(); signal_number != 0) {
    throw Interrupted(std::string(signal_number == SIGINT ? "SIGINT" : "SIGTERM") +
                          " during start-up, before the first step: nothing was written" +
                          (options.resume ? " (the run directory is as it was)" : ""),
                      signal_number);
  }

  // 2. The run directory.
  std::error_code dir_error;
  fs::create_directories(run_dir, dir_error);
  if (dir_error) throw RunError(run_dir + ": cannot create run directory: " + dir_error.message());
  created_run_dir = run_dir;
  CheckpointDirectory checkpoints(run_dir);
  std::optional<AppendJournal> metrics_journal;
  if (checkpoint) {
    // Groups a crashed attempt added after the checkpoint are redone, so they go first.
    runtime.store->keep_only(saved.at("fisher_groups").get<std::vector<std::string>>());
    // The configuration now in force (it may differ in safe keys) is what a later resume reads.
    write_file_atomic((fs::path(run_dir) / "config.toml").string(), config.resolved_toml);
    metrics_journal.emplace((fs::path(run_dir) / "metrics.csv").string(),
                            saved.at("metrics_csv_bytes").get<int64_t>());
  } else {
    if (options.resume) runtime.store->keep_only({});  // starting over: nothing is kept
    write_file_atomic((fs::path(run_dir) / "config.toml").string(), config.resolved_toml);
    metrics_journal.emplace((fs::path(run_dir) / "metrics.csv").string(), -1);
    metrics_journal->append(
        "task,step,global_step,loss,penalty,batch_size,micro_batch,samples_per_second,"
        "step_tensor_peak_bytes,event\n");
  }
  AppendJournal& metrics_csv = *metrics_journal;
  // Events (batch-size changes, out-of-memory retries) get their own rows, and a console line.
  // Steps are numbered from 1 in every output; an event belongs to the step it happens in or
  // comes before, so with `steps_done` steps of the run completed it is step steps_done + 1.
  int64_t task_first_global = 0;  // global steps completed when the current task began
  const bool terminal = isatty(fileno(stderr)) != 0;
  auto log_event = [&](size_t task_index, int64_t steps_done, int64_t batch, int64_t micro,
                       const std::string& what) {
    const int64_t step = steps_done - task_first_global + 1;
    std::ostringstream row;
    row << task_index << ',' << step << ',' << steps_done + 1 << ",,," << batch << ',' << micro
        << ",,,\"" << what << "\"\n";
    metrics_csv.append(row.str());
    // On a terminal the line ends the progress bar being redrawn; in a pipe there is none.
    if (!options.quiet)
      std::fprintf(stderr, "%s[batch] task %zu step %lld: %s\n", terminal ? "\n" : "",
                   task_index + 1, static_cast<long long>(step), what.c_str());
    return step;
  };
  json batch_changes = json::array();
  int64_t total_ooms = 0;
  int64_t samples_processed = 0;
  int64_t samples_redone = 0;
  int64_t samples_in_steps = 0;
  bool first_policy_call = true;
  int64_t run_tensor_peak = 0;

  // Events reach the profilers in order. A mark raised while an event is being delivered (by a
  // profiler's on_event) waits in `pending_marks` until that event has reached every profiler.
  int32_t current_task = -1;
  bool delivering = false;
  std::deque<std::pair<std::string, std::string>> pending_marks;  // (source, label)
  auto deliver = [&](clhost_event_kind_t kind, const std::string& source,
                     const std::string& label) {
    const clhost_event_t event{
        sizeof(clhost_event_t),
        kind,
        std::chrono::duration<double>(Clock::now() - wall_start).count(),
        kind == CLHOST_EVENT_RUN_BEGIN || kind == CLHOST_EVENT_RUN_END ? -1 : current_task,
        label.c_str(),
        run_dir.c_str(),
        source.c_str()};
    for (auto& instance : instances) {
      if (instance->kind() != CLHOST_PLUGIN_KIND_PROFILER) continue;
      clhost_error_t error{};
      instance->check(
          instance->table<clhost_profiler_v1_t>().on_event(instance->instance, &event, &error),
          error, "on_event");
    }
  };
  auto drain = [&](clhost_event_kind_t kind, const std::string& source, const std::string& label) {
    delivering = true;
    try {
      deliver(kind, source, label);
      while (!pending_marks.empty()) {
        const auto [mark_source, mark_label] = pending_marks.front();
        pending_marks.pop_front();
        deliver(CLHOST_EVENT_USER, mark_source, mark_label);
      }
    } catch (...) {
      delivering = false;
      pending_marks.clear();
      throw;
    }
    delivering = false;
  };
  auto emit = [&](clhost_event_kind_t kind, int32_t task, const std::string& label) {
    current_task = task;
    drain(kind, "clhost", label);
  };
  runtime.mark = [&](const std::string& source, const std::string& label) {
    if (delivering) {
      pending_marks.emplace_back(source, label);
    } else {
      drain(CLHOST_EVENT_USER, source, label);
    }
  };
  // Marks end with the run: a plug-in's destroy (during unwinding too) must not reach the lambdas
  // above after they are gone.
  struct MarkScope {
    Runtime& runtime;
    ~MarkScope() { runtime.mark = nullptr; }
  } mark_scope{runtime};
  PluginInstance* batch_policy = nullptr;  // load_pipeline allows one at most
  for (auto& instance : instances) {
    if (instance->kind() == CLHOST_PLUGIN_KIND_BATCH_POLICY) batch_policy = instance.get();
  }

  const size_t task_count = sequence.tasks.size();
  ProgressReporter progress(stderr, !options.quiet);
  RunSummary summary;
  summary.run_dir = run_dir;
  json task_reports = json::array();
  json resumes = json::array();
  int64_t global_step = 0;
  int64_t micro_batch = 0;
  size_t first_task = 0;
  int64_t first_step = 0;    // steps of first_task done before the checkpoint
  double wall_before = 0.0;  // seconds this run spent before it was resumed
  std::vector<double> checkpoint_seconds;
  int64_t checkpoint_bytes = 0;
  if (checkpoint) {
    first_task = saved.at("task").get<size_t>();
    first_step = saved.at("step").get<int64_t>();
    global_step = saved.at("global_step").get<int64_t>();
    micro_batch = saved.at("micro_batch").get<int64_t>();
    first_policy_call = saved.at("first_policy_call").get<bool>();
    total_ooms = saved.at("out_of_memory_retries").get<int64_t>();
    samples_processed = saved.at("samples_processed").get<int64_t>();
    samples_redone = saved.at("samples_redone").get<int64_t>();
    samples_in_steps = saved.at("samples_in_steps").get<int64_t>();
    run_tensor_peak = saved.at("tensor_peak_bytes").get<int64_t>();
    batch_changes = saved.at("batch_changes");
    task_reports = saved.at("task_reports");
    summary.accuracy = saved.at("accuracy_matrix").get<AccuracyMatrix>();
    summary.random_init_accuracy = saved.at("random_init_accuracy").get<std::vector<double>>();
    summary.optimizer_steps = saved.at("optimizer_steps").get<int64_t>();
    wall_before = saved.at("wall_seconds").get<double>();
    checkpoint_seconds = saved.at("checkpoint_seconds").get<std::vector<double>>();
    resumes = saved.at("resumes");
    resumes.push_back(resume_record);
  } else if (options.resume) {
    resumes.push_back(resume_record);
  }

  // Where the trainer is inside a task, for a checkpoint taken between two steps.
  struct TaskCursor {
    const std::vector<int64_t>* order = nullptr;
    size_t cursor = 0;
    const std::mt19937_64* order_rng = nullptr;
    int64_t task_ooms = 0;
    double train_seconds = 0.0;
  };
  auto write_checkpoint = [&](size_t task, int64_t step, const TaskCursor& at) {
    const auto start = Clock::now();
    std::vector<CheckpointFile> files;
    json plugin_entries = json::array();
    for (size_t i = 0; i < instances.size(); ++i) {
      PluginInstance& instance = *instances[i];
      json entry{{"id", instance.plugin->id},
                 {"version", instance.plugin->descriptor->version},
                 {"resumable", false}};
      if (const auto* state = static_cast<const clhost_state_v1_t*>(
              instance.plugin->entry->get_interface(CLHOST_INTERFACE_STATE_V1))) {
        const std::string name =
            "plugin_" + std::to_string(i) + "_" + instance.plugin->id + ".state";
        files.push_back({name, [&instance, state](const ByteSink& sink) {
                           clhost_error_t error{};
                           instance.check(state->save(instance.instance, &write_to_sink,
                                                      const_cast<ByteSink*>(&sink), &error),
                                          error, "save (clhost.state/1)");
                         }});
        entry["resumable"] = true;
        entry["file"] = name;
      }
      plugin_entries.push_back(entry);
    }
    files.push_back(
        {"model.bin", [&](const ByteSink& sink) { save_model_tensors(runtime.model, sink); }});
    files.push_back(
        {"optimizer.pt", [&](const ByteSink& sink) { save_optimizer(*optimizer, sink); }});
    files.push_back(file_from_bytes("generator.bin", save_generator()));
    json trainer{
        {"config", json::parse(config.resolved_json)},
        {"cli_plugin_path", cli_plugin_path},
        {"plugins", plugin_entries},
        {"task", task},
        {"step", step},
        {"global_step", global_step},
        {"micro_batch", micro_batch},
        {"first_policy_call", first_policy_call},
        {"out_of_memory_retries", total_ooms},
        {"samples_processed", samples_processed},
        {"samples_redone", samples_redone},
        {"samples_in_steps", samples_in_steps},
        {"tensor_peak_bytes", std::max(run_tensor_peak, memory::peak_bytes())},
        {"batch_changes", batch_changes},
        {"task_reports", task_reports},
        {"accuracy_matrix", summary.accuracy},
        {"random_init_accuracy", summary.random_init_accuracy},
        {"optimizer_steps", summary.optimizer_steps},
        {"task_out_of_memory_retries", at.task_ooms},
        {"task_train_seconds", at.train_seconds},
        {"fisher_groups", runtime.store->committed_groups()},
        {"metrics_csv_bytes", metrics_csv.commit()},
        {"resumes", resumes},
        {"wall_seconds", wall_before + std::chrono::duration<double>(start - wall_start).count()},
        {"checkpoint_seconds", checkpoint_seconds}};
    if (at.order != nullptr) {
      files.push_back(file_from_bytes("data_order.bin", int64_bytes(*at.order)));
      std::ostringstream rng_state;
      rng_state << *at.order_rng;
      trainer["order_rng"] = rng_state.str();
      trainer["cursor"] = at.cursor;
    }
    files.push_back(file_from_bytes("trainer.json", trainer.dump(1) + "\n"));
    try {
      checkpoint_bytes = checkpoints.write(
          files, json{{"task", task + 1}, {"step", step}, {"global_step", global_step}});
    } catch (const std::exception& e) {
      throw RunError(std::string("writing a checkpoint failed: ") + e.what() +
                     ". The previous checkpoint is intact; fix the cause, then: clhost run "
                     "--resume " +
                     run_dir);
    }
    checkpoint_seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  };
  auto stop_if_asked = [&](size_t task, int64_t step) {
    const int signal_number = stop_signal.load();
    if (signal_number == 0) return;
    throw Interrupted(std::string(signal_number == SIGINT ? "SIGINT" : "SIGTERM") +
                          ": stopped at task " + std::to_string(task + 1) + " step " +
                          std::to_string(step) +
                          " after writing a checkpoint. Continue with: "
                          "clhost run --resume " +
                          run_dir,
                      signal_number);
  };

  emit(CLHOST_EVENT_RUN_BEGIN, -1, checkpoint ? "run resumed" : "run begin");
  if (!checkpoint) {
    emit(CLHOST_EVENT_EVAL_BEGIN, -1, "evaluate the untrained model");
    // Accuracy of the untrained model: the baseline for forward transfer.
    for (size_t j = 0; j < task_count; ++j) {
      summary.random_init_accuracy.push_back(
          evaluate(runtime.model, sequence.tasks[j],
                   make_class_view(evaluation_classes(config, sequence, j), sequence.num_classes),
                   config.train.eval_batch_size));
    }
    emit(CLHOST_EVENT_EVAL_END, -1, "evaluate the untrained model end");
    write_checkpoint(0, 0, TaskCursor{});  // every later crash has a checkpoint to go back to
    if (options.resume && !options.quiet) {
      std::fprintf(stderr,
                   "%s: no checkpoint was complete (it stopped before its first step); "
                   "started again from the beginning\n",
                   run_dir.c_str());
    }
  } else if (!options.quiet) {
    std::fprintf(stderr, "resuming %s from task %zu step %lld (checkpoint %s)\n", run_dir.c_str(),
                 first_task + 1, static_cast<long long>(first_step), checkpoint->directory.c_str());
  }

  runtime.model->train();
  for (size_t t = first_task; t < task_count; ++t) {
    const bool resumed_in_task = checkpoint && t == first_task && first_step > 0;
    task_first_global = global_step - (resumed_in_task ? first_step : 0);
    const TaskData& task = sequence.tasks[t];
    const int64_t train_samples = task.train_size();
    if (train_samples == 0) throw RunError("task " + task.name + " has no training samples");
    const int64_t batch_size = t < config.tasks.size() && config.tasks[t].batch_size
                                   ? *config.tasks[t].batch_size
                                   : config.train.batch_size;
    const int64_t steps =
        config.train.epochs > 0
            ? config.train.epochs * ((train_samples + batch_size - 1) / batch_size)
            : config.train.iterations;
    const ClassView view =
        make_class_view(training_classes(config, sequence, t), sequence.num_classes);
    runtime.fisher_context.task = &task;
    runtime.fisher_context.active_classes = view.active;
    runtime.fisher_context.label_map = view.label_map;

    const bool peak_reset = reset_peak_rss();
    const clhost_task_info_t task_info{sizeof(clhost_task_info_t),
                                       static_cast<uint32_t>(t),
                                       static_cast<uint32_t>(task_count),
                                       task.name.c_str(),
                                       train_samples,
                                       steps};
    // A task resumed in its middle had its beginning before the checkpoint: the plug-ins'
    // restored state already holds what on_task_begin and the policy's first answer did.
    if (!resumed_in_task) {
      emit(CLHOST_EVENT_TASK_BEGIN, static_cast<int32_t>(t), "task " + task.name + " begin");
      for (auto& instance : instances) {
        if (instance->kind() != CLHOST_PLUGIN_KIND_REGULARIZER) continue;
        const auto& table = instance->table<clhost_regularizer_v1_t>();
        if (table.on_task_begin == nullptr) continue;
        clhost_error_t error{};
        instance->check(table.on_task_begin(instance->instance, &task_info, &error), error,
                        "on_task_begin");
      }
      // The micro-batch carries over between tasks (the policy re-probes from it); without a
      // policy it is the whole batch.
      micro_batch = batch_policy != nullptr && micro_batch > 0 ? std::min(micro_batch, batch_size)
                                                               : batch_size;
    }
    int64_t task_ooms = resumed_in_task ? saved.at("task_out_of_memory_retries").get<int64_t>() : 0;
    // Without a configured budget, policies see what the machine could still give: tensors held
    // now plus MemAvailable, read once per task (not in the step's hot path).
    const int64_t available = runtime.budget_bytes < 0 ? available_system_memory() : -1;
    const int64_t budget_for_policy = runtime.budget_bytes >= 0 ? runtime.budget_bytes
                                      : available >= 0 ? memory::current_bytes() + available
                                                       : -1;
    auto ask_policy = [&](int64_t peak_bytes, bool out_of_memory) {
      if (batch_policy == nullptr) return;
      const clhost_batch_request_t request{sizeof(clhost_batch_request_t),
                                           static_cast<uint32_t>(t),
                                           batch_size,
                                           first_policy_call ? 0 : micro_batch,
                                           out_of_memory ? 1 : 0,
                                           budget_for_policy,
                                           peak_bytes};
      first_policy_call = false;
      int64_t chosen = micro_batch;
      clhost_error_t error{};
      const auto& table = batch_policy->table<clhost_batch_policy_v1_t>();
      batch_policy->check(
          table.choose_micro_batch(batch_policy->instance, &request, &chosen, &error), error,
          "choose_micro_batch");
      chosen = std::clamp<int64_t>(chosen, 1, batch_size);
      if (chosen != micro_batch) {
        const bool has_reason =
            table.struct_size >= sizeof(clhost_batch_policy_v1_t) && table.last_reason != nullptr;
        const std::string reason = has_reason ? table.last_reason(batch_policy->instance) : "";
        const std::string label = "micro-batch " + std::to_string(micro_batch) + " -> " +
                                  std::to_string(chosen) +
                                  (reason.empty() ? "" : " (" + reason + ")");
        emit(CLHOST_EVENT_BATCH_SIZE_CHANGE, static_cast<int32_t>(t), label);
        const int64_t event_step = log_event(t, global_step, batch_size, chosen, label);
        batch_changes.push_back(json{{"task", t},
                                     {"step", event_step},
                                     {"global_step", global_step + 1},
                                     {"from", micro_batch},
                                     {"to", chosen},
                                     {"reason", reason}});
        micro_batch = chosen;
      }
    };
    if (!resumed_in_task) ask_policy(-1, false);

    // The data order: a seeded shuffle per task, reshuffled at every pass over the data.
    std::mt19937_64 order_rng(config.run.seed * 1000003ULL + t);
    std::vector<int64_t> order(static_cast<size_t>(train_samples));
    size_t cursor = 0;
    double train_seconds_before = 0.0;
    if (resumed_in_task) {
      order = int64_values(checkpoint->file("data_order.bin"));
      std::istringstream(saved.at("order_rng").get<std::string>()) >> order_rng;
      cursor = saved.at("cursor").get<size_t>();
      train_seconds_before = saved.at("task_train_seconds").get<double>();
      if (order.size() != static_cast<size_t>(train_samples) || cursor > order.size()) {
        throw RunError(checkpoint->directory + ": the data order does not fit task " + task.name +
                       " (" + std::to_string(train_samples) + " samples)");
      }
    } else {
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      std::shuffle(order.begin(), order.end(), order_rng);
    }

    progress.begin_task(
        "task " + std::to_string(t + 1) + "/" + std::to_string(task_count) + " (" + task.name + ")",
        steps);
    const auto task_start = Clock::now();
    auto window_start = task_start;
    int64_t window_samples = 0;
    double last_loss = 0.0;
    double samples_per_second = 0.0;
    for (int64_t step = resumed_in_task ? first_step : 0; step < steps; ++step) {
      std::vector<int64_t> batch_indices;
      batch_indices.reserve(static_cast<size_t>(batch_size));
      while (static_cast<int64_t>(batch_indices.size()) < std::min(batch_size, train_samples)) {
        if (cursor == order.size()) {
          std::shuffle(order.begin(), order.end(), order_rng);
          cursor = 0;
        }
        batch_indices.push_back(order[cursor++]);
      }
      torch::Tensor rows = torch::tensor(batch_indices, torch::kInt64);
      const int64_t samples = rows.size(0);
      // Streamed samples: the batch is read once, before the (retried) micro-batches.
      torch::Tensor batch_x = task.train_x;
      torch::Tensor batch_y = task.train_y;
      if (task.train_stream) {
        batch_x = task.train_rows(rows);
        batch_y = task.train_y.index_select(0, rows);
        rows = torch::arange(samples, torch::kInt64);
      }
      double loss_value = 0.0;
      int64_t step_peak = -1;
      // Gradient accumulation over micro-batches: the optimizer always sees the whole batch. On
      // out-of-memory the partial gradients are dropped and the same samples are redone with a
      // smaller micro-batch, so no sample is lost or counted twice.
      while (true) {
        try {
          optimizer->zero_grad();
          loss_value = 0.0;
          run_tensor_peak = std::max(run_tensor_peak, memory::peak_bytes());
          memory::reset_peak();
          loss_value = accumulate_batch_gradients(
              runtime.model, batch_x, batch_y, view.label_map, view.active, rows, micro_batch,
              config.train.checkpoint_segments, &samples_processed);
          step_peak = memory::peak_bytes();
          samples_in_steps += samples;
          break;
        } catch (const std::exception& e) {
          if (!memory::is_out_of_memory(e)) throw;
          ++task_ooms;
          ++total_ooms;
          samples_redone += samples;
          const std::string where =
              "task " + task.name + " step " + std::to_string(step + 1) +
              ": out of memory at micro-batch " + std::to_string(micro_batch) + " (budget " +
              (runtime.budget_bytes < 0 ? std::string("none")
                                        : memory::format_bytes(runtime.budget_bytes)) +
              ")";
          emit(CLHOST_EVENT_OUT_OF_MEMORY, static_cast<int32_t>(t), where);
          log_event(t, global_step, samples, micro_batch,
                    "out of memory at micro-batch " + std::to_string(micro_batch));
          optimizer->zero_grad();
          if (micro_batch == 1) {
            throw RunError(
                where +
                "; even one sample does not fit: raise run.memory_budget or use a smaller model");
          }
          if (batch_policy == nullptr) {
            throw RunError(where +
                           "; add a batch policy (--dynamic-batch-size) to retry with smaller "
                           "micro-batches, or raise run.memory_budget");
          }
          const int64_t before = micro_batch;
          ask_policy(-1, true);
          if (micro_batch >= before) {
            throw RunError(where + "; batch policy '" + batch_policy->plugin->id +
                           "' did not choose a smaller micro-batch");
          }
        }
      }
      double penalty = 0.0;
      std::string non_finite;  // the first term that is NaN or infinite, named for the user
      if (!std::isfinite(loss_value)) non_finite = "the data loss is " + std::to_string(loss_value);
      const clhost_step_info_t step_info{sizeof(clhost_step_info_t),
                                         static_cast<uint32_t>(t),
                                         step,
                                         global_step,
                                         samples,
                                         loss_value};
      for (auto& instance : instances) {
        if (instance->kind() != CLHOST_PLUGIN_KIND_REGULARIZER) continue;
        const auto& table = instance->table<clhost_regularizer_v1_t>();
        if (table.after_backward == nullptr) continue;
        double plugin_penalty = 0.0;
        clhost_error_t error{};
        instance->check(
            table.after_backward(instance->instance, &step_info, &plugin_penalty, &error), error,
            "after_backward");
        if (!std::isfinite(plugin_penalty) && non_finite.empty()) {
          non_finite = "the penalty of plug-in '" + instance->plugin->id + "' is " +
                       std::to_string(plugin_penalty) + " (data loss " +
                       std::to_string(loss_value) + ")";
        }
        penalty += plugin_penalty;
      }
      if (!non_finite.empty()) {
        // Stop before the optimizer step: the parameters stay those of the last good step.
        throw RunError("task " + std::to_string(t + 1) + " (" + task.name + ") step " +
                       std::to_string(step + 1) + ": " + non_finite +
                       "; the run stopped before this step's update. Lower train.lr or the "
                       "regularizer's strength");
      }
      try {
        optimizer->step();
      } catch (const std::exception& e) {
        if (!memory::is_out_of_memory(e)) throw;
        // Parameters may be half-updated: this cannot be retried.
        throw RunError("task " + task.name + " step " + std::to_string(step + 1) +
                       ": out of memory in the optimizer step (its state and update must fit in " +
                       "run.memory_budget = " + memory::format_bytes(runtime.budget_bytes) +
                       "); raise the budget");
      }
      step_peak = std::max(step_peak, memory::peak_bytes());
      ++global_step;
      last_loss = loss_value;
      window_samples += samples;
      const bool log_now = (step + 1) % config.run.log_every == 0 || step + 1 == steps;
      if (log_now) {
        const auto now = Clock::now();
        const double seconds = std::chrono::duration<double>(now - window_start).count();
        samples_per_second = seconds > 0 ? static_cast<double>(window_samples) / seconds : 0.0;
        window_start = now;
        window_samples = 0;
        std::ostringstream row;
        row << t << ',' << step + 1 << ',' << global_step << ',' << loss_value << ',' << penalty
            << ',' << samples << ',' << micro_batch << ',' << format_double(samples_per_second, 1)
            << ',' << step_peak << ",\n";
        metrics_csv.append(row.str());
      }
      progress.update(step + 1, last_loss, samples_per_second);
      if (batch_policy != nullptr) ask_policy(step_peak, false);
      // Checkpoints count global steps, so a resumed run keeps the same schedule.
      const bool stop_requested = stop_signal.load() != 0;
      if (stop_requested || (config.run.checkpoint_every > 0 && step + 1 < steps &&
                             global_step % config.run.checkpoint_every == 0)) {
        write_checkpoint(
            t, step + 1,
            TaskCursor{&order, cursor, &order_rng, task_ooms,
                       train_seconds_before +
                           std::chrono::duration<double>(Clock::now() - task_start).count()});
      }
      if (stop_requested) stop_if_asked(t, step + 1);
      crash_point("step");
    }
    const double train_seconds =
        train_seconds_before + std::chrono::duration<double>(Clock::now() - task_start).count();

    // Cache release between phases: give the training step's freed heap back to the system
    // before the Fisher pass and evaluation allocate their own.
    ::malloc_trim(0);
    emit(CLHOST_EVENT_CONSOLIDATE_BEGIN, static_cast<int32_t>(t), "consolidate " + task.name);
    const auto consolidate_start = Clock::now();
    runtime.in_task_end = true;
    for (auto& instance : instances) {
      if (instance->kind() != CLHOST_PLUGIN_KIND_REGULARIZER) continue;
      const auto& table = instance->table<clhost_regularizer_v1_t>();
      if (table.on_task_end == nullptr) continue;
      clhost_error_t error{};
      instance->check(table.on_task_end(instance->instance, &task_info, &error), error,
                      "on_task_end");
    }
    runtime.in_task_end = false;
    const double consolidate_seconds =
        std::chrono::duration<double>(Clock::now() - consolidate_start).count();
    emit(CLHOST_EVENT_CONSOLIDATE_END, static_cast<int32_t>(t),
         "consolidate " + task.name + " end");
    crash_point("task_end");
    emit(CLHOST_EVENT_TASK_END, static_cast<int32_t>(t), "task " + task.name + " end");

    emit(CLHOST_EVENT_EVAL_BEGIN, static_cast<int32_t>(t), "evaluate after " + task.name);
    std::vector<double> row;
    for (size_t j = 0; j < task_count; ++j) {
      row.push_back(
          evaluate(runtime.model, sequence.tasks[j],
                   make_class_view(evaluation_classes(config, sequence, j), sequence.num_classes),
                   config.train.eval_batch_size));
    }
    emit(CLHOST_EVENT_EVAL_END, static_cast<int32_t>(t), "evaluate after " + task.name + " end");
    if (scripted.module) {
      // The trained module after every task, for torch.jit.load in Python.
      save_scripted_model(
          *scripted.module,
          (fs::path(run_dir) / ("model_task_" + std::to_string(t + 1) + ".pt")).string());
    }
    summary.accuracy.push_back(row);
    summary.optimizer_steps += steps;
    const ProcessMemory memory = read_process_memory();
    double seen_sum = 0.0;
    for (size_t j = 0; j <= t; ++j) seen_sum += row[j];
    task_reports.push_back(
        json{{"name", task.name},
             {"classes", task.classes},
             {"train_samples", train_samples},
             {"test_samples", task.test_size()},
             {"steps", steps},
             {"batch_size", batch_size},
             {"final_micro_batch", micro_batch},
             {"train_seconds", train_seconds},
             {"consolidate_seconds", consolidate_seconds},
             {"samples_per_second", static_cast<double>(steps * batch_size) / train_seconds},
             {"peak_rss_bytes", memory.peak_rss_bytes},
             {"peak_rss_scope", peak_reset ? "this task" : "process lifetime"}});
    progress.end_task("task " + std::to_string(t + 1) + "/" + std::to_string(task_count) +
                      " done in " + format_double(train_seconds, 1) +
                      " s; mean accuracy on tasks seen: " +
                      format_double(seen_sum / static_cast<double>(t + 1), 4));
    write_checkpoint(t + 1, 0, TaskCursor{});
    stop_if_asked(t + 1, 0);
  }
  emit(CLHOST_EVENT_RUN_END, -1, "run end");
  metrics_csv.commit();

  summary.metrics = compute_metrics(summary.accuracy, summary.random_init_accuracy);
  summary.wall_seconds =
      wall_before + std::chrono::duration<double>(Clock::now() - wall_start).count();

  // 3. Outputs.
  std::ostringstream matrix_csv;
  matrix_csv << "after_task";
  for (const auto& task : sequence.tasks) matrix_csv << ',' << task.name;
  matrix_csv << '\n';
  for (size_t i = 0; i < summary.accuracy.size(); ++i) {
    matrix_csv << sequence.tasks[i].name;
    for (double value : summary.accuracy[i]) matrix_csv << ',' << format_double(value, 6);
    matrix_csv << '\n';
  }
  write_file_atomic((fs::path(run_dir) / "accuracy_matrix.csv").string(), matrix_csv.str());

  json plugin_reports = json::array();
  for (size_t i = 0; i < instances.size(); ++i) {
    const auto& instance = instances[i];
    json report{{"id", instance->plugin->id},
                {"kind", kind_name(instance->kind())},
                {"version", instance->plugin->descriptor->version},
                {"path", instance->plugin->path},
                {"config", config_values_json(instance->config)},
                {"not_in_effect", not_in_effect_json(pipeline, i)}};
    if (instance->kind() == CLHOST_PLUGIN_KIND_REGULARIZER) {
      const auto& table = instance->table<clhost_regularizer_v1_t>();
      if (table.describe != nullptr) {
        char buffer[1024] = {};
        table.describe(instance->instance, buffer, sizeof(buffer));
        report["variant"] = buffer;
      }
    }
    if (const auto* reporter = static_cast<const clhost_report_v1_t*>(
            instance->plugin->entry->get_interface(CLHOST_INTERFACE_REPORT_V1))) {
      std::string buffer(4096, '\0');
      size_t needed = reporter->write_json(instance->instance, buffer.data(), buffer.size());
      if (needed >= buffer.size()) {
        buffer.assign(needed + 1, '\0');
        needed = reporter->write_json(instance->instance, buffer.data(), buffer.size());
      }
      buffer.resize(std::min(needed, buffer.size() - 1));
      if (!buffer.empty()) {
        const json parsed = json::parse(buffer, nullptr, false);
        report["report"] = parsed.is_discarded() ? json(buffer) : parsed;
      }
    }
    plugin_reports.push_back(report);
  }
  auto optional_json = [](const std::optional<double>& value) {
    return value ? json(*value) : json(nullptr);
  };
  const ProcessMemory memory = read_process_memory();
  json results{{"clhost_version", CLHOST_VERSION},
               {"abi_version", {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR}},
               {"config_file", config.source},
               {"config", json::parse(config.resolved_json)},
               {"given_keys", config.given_keys},
               {"warnings", pipeline.warnings},
               {"scenario",
                {{"kind", to_string(config.data.scenario)},
                 {"incremental", to_string(config.data.incremental)},
                 {"tasks", task_count},
                 {"streamed", sequence.streamed},
                 {"streamed_bytes_read", streamed_bytes_read(sequence)}}},
               {"model", model_report},
               {"plugins", plugin_reports},
               {"accuracy_matrix", summary.accuracy},
               {"random_init_accuracy", summary.random_init_accuracy},
               {"metrics",
                {{"average_accuracy", summary.metrics.average_accuracy},
                 {"forgetting", optional_json(summary.metrics.forgetting)},
                 {"backward_transfer", optional_json(summary.metrics.backward_transfer)},
                 {"forward_transfer", optional_json(summary.metrics.forward_transfer)}}},
               {"tasks", task_reports},
               {"optimizer_steps", summary.optimizer_steps},
               {"memory",
                {{"budget_bytes", runtime.budget_bytes},
                 {"tensor_peak_bytes", std::max(run_tensor_peak, memory::peak_bytes())},
                 {"out_of_memory_retries", total_ooms},
                 {"samples_processed", samples_processed},
                 {"samples_in_optimizer_steps", samples_in_steps},
                 {"samples_redone_after_out_of_memory", samples_redone},
                 {"batch_size_changes", batch_changes}}},
               {"wall_seconds", summary.wall_seconds},
               {"checkpoints",
                {{"every_steps", config.run.checkpoint_every},
                 {"written", checkpoint_seconds.size()},
                 {"seconds", checkpoint_seconds},
                 {"last_bytes", checkpoint_bytes},
                 {"directory", checkpoints.root()}}},
               {"resumes", resumes},
               {"peak_rss_bytes", memory.peak_rss_bytes},
               {"machine",
                {{"hostname", machine_name()},
                 {"hardware_threads", std::thread::hardware_concurrency()},
                 {"torch_threads", at::get_num_threads()},
                 {"torch_version", TORCH_VERSION},
                 {"device", "cpu"}}}};
  write_file_atomic((fs::path(run_dir) / "results.json").string(), results.dump(2) + "\n");
  return summary;
}

}  // namespace

RunConfig load_resume_config(const std::string& run_dir, const std::string& config_path,
                             const ConfigOverrides& overrides) {
  if (!fs::is_directory(run_dir)) throw ConfigError("--resume " + run_dir + ": no such directory");
  const std::string status_path = (fs::path(run_dir) / "status.json").string();
  if (fs::exists(status_path)) {
    std::ifstream status_file(status_path);
    const json status = json::parse(status_file, nullptr, false);
    if (!status.is_discarded() && status.value("status", "") == "complete") {
      throw ConfigError("--resume " + run_dir + ": this run is complete; nothing to resume");
    }
  }
  const std::string saved_config = (fs::path(run_dir) / "config.toml").string();
  if (config_path.empty() && !fs::exists(saved_config)) {
    throw ConfigError("--resume " + run_dir +
                      ": no config.toml (not a clhost run directory, or written before resume "
                      "existed); pass --config with the run's configuration");
  }
  return load_config(config_path.empty() ? saved_config : config_path, overrides);
}

RunSummary run_pipeline(const RunConfig& config, const RunOptions& options) {
  std::string run_dir;
  try {
    RunSummary summary = run_pipeline_in(config, options, run_dir);
    write_file_atomic((fs::path(run_dir) / "status.json").string(),
                      json{{"status", "complete"}}.dump() + "\n");
    return summary;
  } catch (const Interrupted& e) {
    if (run_dir.empty()) throw;  // stopped during start-up: there is nothing to mark
    try {
      write_file_atomic((fs::path(run_dir) / "status.json").string(),
                        json{{"status", "interrupted"}, {"message", e.what()}}.dump(2) + "\n");
    } catch (
        const std::exception&) {  // NOLINT(bugprone-empty-catch): the checkpoint is what counts
    }
    throw;
  } catch (const std::exception& e) {
    if (memory::is_out_of_memory(e) && dynamic_cast<const RunError*>(&e) == nullptr) {
      // Outside a training step (evaluation, Fisher pass, optimizer state) nothing is retried.
      const std::string message =
          std::string("out of memory outside a training step (evaluation, ") +
          "consolidation or setup) under run.memory_budget; raise the budget or lower " +
          "train.eval_batch_size / the plug-ins' batch sizes. Allocator: " +
          std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
      if (!run_dir.empty()) {
        write_file_atomic((fs::path(run_dir) / "status.json").string(),
                          json{{"status", "failed"}, {"error", message}}.dump(2) + "\n");
      }
      throw RunError(message);
    }
    // A run that stopped says so, next to whatever it wrote (metrics.csv up to the failure).
    if (!run_dir.empty()) {
      try {
        write_file_atomic((fs::path(run_dir) / "status.json").string(),
                          json{{"status", "failed"}, {"error", e.what()}}.dump(2) + "\n");
      } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): keep the first error
      }
    }
    throw;
  }
}

}  // namespace clhost
