// mas — Memory Aware Synapses (Aljundi et al., ECCV 2018): a parameter's importance is how much
// the squared L2 norm of the model's output moves with it, measured without labels:
//   Omega_k = mean over the task's samples i of |d ||f(x_i)||^2 / d theta_k|,
// with f the logits of the task's active classes. The host computes the per-sample gradients
// (clhost.output_grads/1) from df/dscores = 2 f that this plug-in supplies. Across tasks the
// importance is blended as Avalanche does, Omega <- alpha * Omega + (1 - alpha) * Omega_task, and
// the penalty is
//   lambda * sum_k Omega_k (theta_k - theta*_k)^2,   gradient 2 lambda Omega_k (theta_k -
//   theta*_k),
// with theta* the parameters at the end of the previous task.
#include <clhost/plugin.hpp>

#include <cstring>
#include <string>
#include <vector>

namespace {

const clhost_config_key_t kSchema[] = {
    {"lambda", CLHOST_CONFIG_TYPE_FLOAT, "1.0",
     "penalty strength (the penalty is lambda*sum(Omega*(theta-theta*)^2))", 1, 0.0, 1e12, nullptr},
    {"alpha", CLHOST_CONFIG_TYPE_FLOAT, "0.5",
     "weight of the importance so far when a task's is blended in (0: the last task's only)", 1,
     0.0, 1.0, nullptr},
    {"samples", CLHOST_CONFIG_TYPE_INT, "0",
     "training samples of each task the importance is measured on (0: all)", 1, 0, 1LL << 40,
     nullptr},
    {"batch_size", CLHOST_CONFIG_TYPE_INT, "64",
     "samples per forward/backward pass of the importance measurement (bounds its memory)", 1, 1,
     1 << 20, nullptr},
};
const clhost_plugin_descriptor_t kDescriptor{sizeof(clhost_plugin_descriptor_t),
                                             "mas",
                                             CLHOST_PLUGIN_KIND_REGULARIZER,
                                             "1.0.0",
                                             "Memory Aware Synapses: importance from the gradient "
                                             "of the outputs' squared L2 norm",
                                             "clhost",
                                             kSchema,
                                             sizeof(kSchema) / sizeof(kSchema[0])};

float* floats(const DLTensor& tensor) {
  return reinterpret_cast<float*>(static_cast<char*>(tensor.data) + tensor.byte_offset);
}

void check_float32_cpu(const DLTensor& tensor, const char* what) {
  if (tensor.device.device_type != kDLCPU || tensor.dtype.code != kDLFloat ||
      tensor.dtype.bits != 32 || tensor.dtype.lanes != 1 || tensor.strides != nullptr) {
    throw clhost::sdk::Error(std::string("mas: ") + what + " must be contiguous CPU float32",
                             CLHOST_STATUS_UNSUPPORTED);
  }
}

// d ||f||^2 / df = 2 f, row by row.
clhost_status_t squared_norm_gradient(void* /*data*/, const DLTensor* scores,
                                      const DLTensor* /*targets*/, DLTensor* gradient,
                                      clhost_error_t* /*error*/) {
  const int64_t count = scores->shape[0] * scores->shape[1];
  const float* in = floats(*scores);
  float* out = floats(*gradient);
  for (int64_t i = 0; i < count; ++i) out[i] = 2.0F * in[i];
  return CLHOST_STATUS_OK;
}

class Mas : public clhost::sdk::Regularizer {
 public:
  // clhost.memory_plan/1: Omega and theta* in float32, 8 bytes per parameter between tasks, and
  // the task's importance (4 bytes per parameter) while it is blended in.
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& config,
                                             const clhost::sdk::Settings& /*host*/,
                                             const clhost::sdk::MemoryPlanRequest& request) {
    int64_t elements = 0;
    for (const int64_t numel : request.parameter_numels) elements += numel;
    clhost::sdk::MemoryPlan plan;
    plan.state_bytes = 8 * elements;
    plan.consolidation_bytes = 4 * elements;
    plan.fisher_samples_per_pass =
        clhost::sdk::samples_per_pass(config.get_int("batch_size"), config.get_int("samples"));
    plan.advice =
        "mas keeps two float32 copies of the parameters; nothing in its settings shrinks "
        "them";
    return plan;
  }

  Mas(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Regularizer(host),
        lambda_(config.get_float("lambda")),
        alpha_(config.get_float("alpha")),
        samples_(config.get_int("samples")),
        batch_size_(config.get_int("batch_size")) {
    if (this->host().settings().get_string("data.kind", "") == "text") {
      throw clhost::sdk::Error(
          "mas measures importance on class outputs; text tasks (data.kind = \"text\") have "
          "none: use ewc with labels = \"true\" there",
          CLHOST_STATUS_INVALID_ARGUMENT);
    }
    const uint32_t count = this->host().parameter_count();
    importance_.resize(count);
    anchor_.resize(count);
    for (uint32_t p = 0; p < count; ++p) {
      const clhost_parameter_t parameter = this->host().parameter(p);
      check_float32_cpu(parameter.value, "every parameter");
      importance_[p].assign(static_cast<size_t>(parameter.numel), 0.0F);
    }
  }

  double after_backward(const clhost_step_info_t& /*step*/) override {
    if (!anchored_) return 0.0;
    double penalty = 0.0;
    for (uint32_t p = 0; p < importance_.size(); ++p) {
      const clhost_parameter_t parameter = host().parameter(p);
      if (parameter.grad.data == nullptr) continue;
      const float* theta = floats(parameter.value);
      float* grad = floats(parameter.grad);
      const float* omega = importance_[p].data();
      const float* star = anchor_[p].data();
      const auto scale = static_cast<float>(2.0 * lambda_);
      for (size_t k = 0; k < importance_[p].size(); ++k) {
        const float difference = theta[k] - star[k];
        penalty += static_cast<double>(omega[k] * difference * difference);
        grad[k] += scale * omega[k] * difference;
      }
    }
    return lambda_ * penalty;
  }

  void on_task_end(const clhost_task_info_t& task) override {
    blend(measure());
    for (uint32_t p = 0; p < anchor_.size(); ++p) {
      const clhost_parameter_t parameter = host().parameter(p);
      const float* theta = floats(parameter.value);
      anchor_[p].assign(theta, theta + parameter.numel);
    }
    anchored_ = true;
    host().log(CLHOST_LOG_INFO, "task " + std::to_string(task.task_index + 1) + "/" +
                                    std::to_string(task.task_count) +
                                    ": importance measured, anchors taken");
  }

  [[nodiscard]] std::string describe() const override {
    return "MAS: lambda*sum(Omega*(theta-theta*)^2), Omega = mean |d||f||^2/dtheta| per sample, "
           "blended with alpha = " +
           std::to_string(alpha_);
  }

  [[nodiscard]] std::string report_json() const override {
    int64_t elements = 0;
    for (const auto& omega : importance_) elements += static_cast<int64_t>(omega.size());
    return "{\"state_bytes\": " + std::to_string(elements * 2 * int64_t{sizeof(float)}) + "}";
  }

  void save_state(clhost::sdk::StateWriter& out) const {
    out.value<int8_t>(anchored_ ? 1 : 0);
    for (size_t p = 0; p < importance_.size(); ++p) {
      out.vector(importance_[p]);
      out.vector(anchor_[p]);
    }
  }
  void restore_state(clhost::sdk::StateReader& in) {
    anchored_ = in.value<int8_t>() != 0;
    for (size_t p = 0; p < importance_.size(); ++p) {
      std::vector<float> omega = in.vector<float>();
      std::vector<float> star = in.vector<float>();
      if (omega.size() != importance_[p].size() || (anchored_ && star.size() != omega.size())) {
        throw clhost::sdk::Error("mas: the saved state is of another model",
                                 CLHOST_STATUS_INVALID_ARGUMENT);
      }
      importance_[p] = std::move(omega);
      anchor_[p] = std::move(star);
    }
  }

 private:
  // This task's importance, parameter by parameter, from the host's per-sample pass.
  std::vector<std::vector<float>> measure() {
    std::vector<std::vector<float>> task(importance_.size());
    for (size_t p = 0; p < task.size(); ++p) task[p].assign(importance_[p].size(), 0.0F);
    clhost_output_grads_request_t request{};
    request.struct_size = sizeof(request);
    request.reduction = CLHOST_GRADIENTS_ABSOLUTE;
    request.max_samples = samples_;
    request.batch_size = batch_size_;
    request.output_gradient = &squared_norm_gradient;
    clhost_error_t error{};
    clhost::sdk::Host::check(
        host().output_grads().accumulate(host().raw(), &request, &receive, &task, &error), error);
    return task;
  }

  static clhost_status_t receive(void* data, uint32_t parameter, int64_t offset,
                                 const DLTensor* block, clhost_error_t* error) {
    auto& task = *static_cast<std::vector<std::vector<float>>*>(data);
    const int64_t count = block->shape[0];
    if (parameter >= task.size() || offset < 0 ||
        offset + count > static_cast<int64_t>(task[parameter].size())) {
      std::snprintf(error->message, sizeof(error->message), "mas: a block outside parameter %u",
                    parameter);
      return CLHOST_STATUS_INTERNAL;
    }
    std::memcpy(task[parameter].data() + offset, floats(*block),
                static_cast<size_t>(count) * sizeof(float));
    return CLHOST_STATUS_OK;
  }

  void blend(const std::vector<std::vector<float>>& task) {
    const auto keep = static_cast<float>(anchored_ ? alpha_ : 0.0);
    for (size_t p = 0; p < importance_.size(); ++p) {
      for (size_t k = 0; k < importance_[p].size(); ++k) {
        importance_[p][k] = keep * importance_[p][k] + (1.0F - keep) * task[p][k];
      }
    }
  }

  double lambda_;
  double alpha_;
  int64_t samples_;
  int64_t batch_size_;
  bool anchored_ = false;
  std::vector<std::vector<float>> importance_;
  std::vector<std::vector<float>> anchor_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(Mas, kDescriptor, nullptr)
