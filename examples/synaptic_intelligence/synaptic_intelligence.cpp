// synaptic_intelligence: a clhost regularizer in C++ with LibTorch — Synaptic Intelligence
// (Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017).
//
// While a task trains, every parameter accumulates its contribution to the drop in loss along
// the optimisation path, w += -g * delta_theta (g: the data loss's gradient, delta_theta: the
// optimizer's update). When the task ends, its importance is
//     Omega += w / ((theta_end - theta_start)^2 + xi)
// and later tasks pay c * sum Omega * (theta - theta*)^2, theta* = the parameters at the end of
// the previous task. Unlike EWC it needs no extra pass over the data: only the parameters and the
// gradients the host already has (clhost.params/1), which it views as tensors without copying
// (clhost::sdk::tensor_view). State: 6 floats per parameter.
//
// Keys: c (penalty strength, dimensionless), xi (damping, in squared parameter units).
#include <clhost/plugin_torch.hpp>

#include <sstream>
#include <vector>

namespace {

const clhost_config_key_t kSchema[] = {
    {"c", CLHOST_CONFIG_TYPE_FLOAT, "100.0", "penalty strength (dimensionless)", 1, 0.0, 1e9,
     nullptr},
    {"xi", CLHOST_CONFIG_TYPE_FLOAT, "0.1", "damping of the importance, squared parameter units", 1,
     1e-12, 1e9, nullptr},
};

const clhost_plugin_descriptor_t kDescriptor{
    sizeof(clhost_plugin_descriptor_t),
    "synaptic_intelligence",
    CLHOST_PLUGIN_KIND_REGULARIZER,
    "1.0.0",
    "Synaptic Intelligence (Zenke et al. 2017): path-integral importance, quadratic penalty",
    "clhost examples",
    kSchema,
    sizeof(kSchema) / sizeof(kSchema[0])};

struct ParameterState {
  torch::Tensor importance;     // Omega, summed over finished tasks
  torch::Tensor anchor;         // theta* (end of the previous task)
  torch::Tensor path;           // w, this task's path integral
  torch::Tensor task_start;     // theta at the start of this task
  torch::Tensor previous;       // theta at the last step
  torch::Tensor previous_grad;  // the data loss's gradient at the last step
};

class SynapticIntelligence : public clhost::sdk::Regularizer {
 public:
  SynapticIntelligence(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Regularizer(host), c_(config.get_float("c")), xi_(config.get_float("xi")) {}

  void on_task_begin(const clhost_task_info_t& /*task*/) override {
    const torch::NoGradGuard no_grad;
    if (state_.empty()) {
      for (uint32_t i = 0; i < host().parameter_count(); ++i) {
        const torch::Tensor value = clhost::sdk::tensor_view(host().parameter(i).value);
        state_.push_back({torch::zeros_like(value), value.clone(), torch::zeros_like(value),
                          value.clone(), value.clone(), torch::zeros_like(value)});
      }
    }
    for (auto& state : state_) {
      state.path.zero_();
      state.previous_grad.zero_();
    }
    for (uint32_t i = 0; i < state_.size(); ++i) {
      const torch::Tensor value = clhost::sdk::tensor_view(host().parameter(i).value);
      state_[i].task_start.copy_(value);
      state_[i].previous.copy_(value);
    }
  }

  double after_backward(const clhost_step_info_t& /*step*/) override {
    const torch::NoGradGuard no_grad;
    double penalty = 0.0;
    for (uint32_t i = 0; i < state_.size(); ++i) {
      const clhost_parameter_t parameter = host().parameter(i);
      if (parameter.grad.data == nullptr) continue;
      ParameterState& state = state_[i];
      const torch::Tensor value = clhost::sdk::tensor_view(parameter.value);
      torch::Tensor grad = clhost::sdk::tensor_view(parameter.grad);
      // The update the optimizer made since the last step, paid for by the last gradient.
      state.path.sub_(state.previous_grad * (value - state.previous));
      state.previous.copy_(value);
      state.previous_grad.copy_(grad);  // the data loss's gradient: before our penalty's
      if (tasks_done_ > 0) {
        const torch::Tensor difference = value - state.anchor;
        penalty += c_ * (state.importance * difference * difference).sum().item<double>();
        grad.add_(state.importance * difference, 2.0 * c_);
      }
    }
    return penalty;
  }

  void on_task_end(const clhost_task_info_t& task) override {
    const torch::NoGradGuard no_grad;
    double importance_sum = 0.0;
    for (uint32_t i = 0; i < state_.size(); ++i) {
      ParameterState& state = state_[i];
      const torch::Tensor value = clhost::sdk::tensor_view(host().parameter(i).value);
      state.path.sub_(state.previous_grad * (value - state.previous));  // the last update
      const torch::Tensor moved = value - state.task_start;
      // Negative path integrals (the loss went up along a parameter) carry no importance.
      state.importance.add_(state.path.clamp_min(0.0) / (moved * moved + xi_));
      state.anchor.copy_(value);
      importance_sum += state.importance.sum().item<double>();
    }
    ++tasks_done_;
    std::ostringstream line;
    line << "task " << task.task_index + 1 << ": importance sum " << importance_sum;
    host().log(CLHOST_LOG_INFO, line.str());
  }

  // Checkpoints (clhost.state/1): the tasks done and every parameter's six tensors, so a run
  // resumed mid-task continues its path integrals exactly where they were.
  void save_state(clhost::sdk::StateWriter& out) const {
    out.value<int32_t>(tasks_done_);
    out.value<uint64_t>(state_.size());
    for (const ParameterState& state : state_) {
      for (const torch::Tensor* tensor :
           {&state.importance, &state.anchor, &state.path, &state.task_start, &state.previous,
            &state.previous_grad}) {
        clhost::sdk::write_tensor(out, *tensor);
      }
    }
  }
  void restore_state(clhost::sdk::StateReader& in) {
    tasks_done_ = in.value<int32_t>();
    const auto count = in.value<uint64_t>();
    if (count != 0 && count != host().parameter_count()) {
      throw clhost::sdk::Error("saved state is for a model with " + std::to_string(count) +
                                   " parameters; this one has " +
                                   std::to_string(host().parameter_count()),
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
    state_.clear();
    for (uint32_t i = 0; i < count; ++i) {
      ParameterState state;
      for (torch::Tensor* tensor : {&state.importance, &state.anchor, &state.path,
                                    &state.task_start, &state.previous, &state.previous_grad}) {
        *tensor = clhost::sdk::read_tensor(in);
        const torch::Tensor value = clhost::sdk::tensor_view(host().parameter(i).value);
        if (!tensor->defined() || tensor->sizes() != value.sizes() ||
            tensor->scalar_type() != value.scalar_type()) {
          throw clhost::sdk::Error("saved state does not fit parameter " + std::to_string(i),
                                   CLHOST_STATUS_INVALID_ARGUMENT);
        }
      }
      state_.push_back(std::move(state));
    }
    in.finish();
  }

  [[nodiscard]] std::string describe() const override {
    std::ostringstream text;
    text << "penalty c*sum(Omega*(theta-theta*)^2), Omega = sum over tasks of "
            "max(w,0)/((delta theta)^2+xi); c="
         << c_ << ", xi=" << xi_;
    return text.str();
  }

 private:
  double c_;
  double xi_;
  int tasks_done_ = 0;
  std::vector<ParameterState> state_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(SynapticIntelligence, kDescriptor, CLHOST_TORCH_FINGERPRINT);
