// The services of plug-ins that see outputs (ABI 1.7): clhost.snapshot/1 (a frozen copy of the
// model per plug-in) and clhost.output_grads/1 (per-sample gradients of a function of the
// outputs, accumulated like the Fisher).
#include <cstdio>
#include <cstring>

#include "host_services.hpp"

namespace clhost {
namespace {

PluginContext& context_of(const clhost_host_t* host) {
  return *static_cast<PluginContext*>(host->host_data);
}

clhost_status_t snapshot_take(const clhost_host_t* host, clhost_error_t* error) {
  PluginContext& context = context_of(host);
  if (!context.runtime->in_task_end) {
    std::snprintf(error->message, sizeof(error->message),
                  "snapshot.take may only be called from on_task_end");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  try {
    torch::NoGradGuard no_grad;
    context.snapshot.clear();  // the old copy goes before the new one is made
    std::vector<torch::Tensor> copy;
    for (const auto& parameter : context.runtime->model->parameters())
      copy.push_back(parameter.clone());
    for (const auto& buffer : context.runtime->model->buffers()) copy.push_back(buffer.clone());
    context.snapshot = std::move(copy);
    return CLHOST_STATUS_OK;
  } catch (const std::exception& e) {
    return report_exception(e, "snapshot.take", error);
  }
}

void snapshot_release(const clhost_host_t* host) {
  context_of(host).snapshot.clear();
}

// The plug-in's df/dscores for a pass's scores, through its callback.
torch::Tensor call_output_function(const clhost_output_grads_request_t& request,
                                   const torch::Tensor& scores, const torch::Tensor& targets,
                                   clhost_error_t* error) {
  const torch::Tensor in = scores.to(torch::kFloat32).contiguous();
  const torch::Tensor labels = targets.to(torch::kInt64).contiguous();
  torch::Tensor gradient = torch::zeros_like(in);
  std::vector<int64_t> score_shape;
  std::vector<int64_t> label_shape;
  std::vector<int64_t> gradient_shape;
  const DLTensor score_view = dltensor_of(in, score_shape);
  const DLTensor label_view = dltensor_of(labels, label_shape);
  DLTensor gradient_view = dltensor_of(gradient, gradient_shape);
  const clhost_status_t status = request.output_gradient(request.function_data, &score_view,
                                                         &label_view, &gradient_view, error);
  if (status != CLHOST_STATUS_OK) throw SinkFailure{status};
  return gradient;
}

clhost_status_t output_grads_accumulate(const clhost_host_t* host,
                                        const clhost_output_grads_request_t* request,
                                        clhost_fisher_sink_fn sink, void* sink_data,
                                        clhost_error_t* error) {
  Runtime& runtime = runtime_of(host);
  if (!runtime.in_task_end) {
    std::snprintf(error->message, sizeof(error->message),
                  "output_grads.accumulate may only be called from on_task_end");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  if (request == nullptr || request->struct_size < sizeof(clhost_output_grads_request_t) ||
      request->output_gradient == nullptr || sink == nullptr ||
      (request->reduction != CLHOST_GRADIENTS_ABSOLUTE &&
       request->reduction != CLHOST_GRADIENTS_SQUARED)) {
    std::snprintf(error->message, sizeof(error->message),
                  "output_grads.accumulate: needs a sink, an output_gradient function, a "
                  "reduction (ABSOLUTE or SQUARED) and struct_size = "
                  "sizeof(clhost_output_grads_request_t)");
    return CLHOST_STATUS_INVALID_ARGUMENT;
  }
  if (runtime.fisher_context.task != nullptr && runtime.fisher_context.task->next_byte) {
    std::snprintf(error->message, sizeof(error->message),
                  "output_grads.accumulate: text tasks have no class scores (classification "
                  "tasks only)");
    return CLHOST_STATUS_UNSUPPORTED;
  }
  try {
    OutputFunction function;
    function.absolute = request->reduction == CLHOST_GRADIENTS_ABSOLUTE;
    function.gradient = [&](const torch::Tensor& scores, const torch::Tensor& targets) {
      return call_output_function(*request, scores, targets, error).to(scores.scalar_type());
    };
    clhost_fisher_request_t pass{};
    pass.struct_size = sizeof(pass);
    pass.max_samples = request->max_samples;
    pass.batch_size = request->batch_size;
    const int64_t block_size =
        request->block_size > 0 ? request->block_size : runtime.fisher_block_size;
    const FisherPassPeak measured(runtime);
    diagonal_output_gradients(context_with_progress(host), pass, block_size, function,
                              [&](size_t parameter, int64_t offset, const torch::Tensor& values) {
                                std::vector<int64_t> shape{values.numel()};
                                const torch::Tensor flat = values.to(torch::kFloat32).contiguous();
                                DLTensor view = as_dltensor(flat, shape);
                                const clhost_status_t status =
                                    sink(sink_data, static_cast<uint32_t>(parameter), offset, &view,
                                         error);
                                if (status != CLHOST_STATUS_OK) throw SinkFailure{status};
                              });
    return CLHOST_STATUS_OK;
  } catch (const SinkFailure& failure) {
    return failure.status;  // the plug-in's message is already in *error
  } catch (const std::exception& e) {
    return report_exception(e, "output gradients failed", error);
  }
}

const clhost_snapshot_service_v1_t kSnapshotService{sizeof(clhost_snapshot_service_v1_t),
                                                    &snapshot_take, &snapshot_release};
const clhost_output_grads_service_v1_t kOutputGradsService{sizeof(clhost_output_grads_service_v1_t),
                                                           &output_grads_accumulate};

}  // namespace

const void* output_service(const char* id) {
  if (std::strcmp(id, CLHOST_SERVICE_SNAPSHOT_V1) == 0) return &kSnapshotService;
  if (std::strcmp(id, CLHOST_SERVICE_OUTPUT_GRADS_V1) == 0) return &kOutputGradsService;
  return nullptr;
}

}  // namespace clhost
