#include "activation_checkpoint.hpp"

#include <torch/torch.h>

#include <functional>

namespace clhost {
namespace {

using Segment = std::function<torch::Tensor(const torch::Tensor&)>;

// Segments of the forward now being built; autograd nodes refer to them by index. Backward runs
// on the thread that calls backward() — the trainer thread — before the next forward clears them.
thread_local std::vector<Segment> g_segments;

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  // `anchor` is a scalar that requires grad, so that the first segment (whose input, the data,
  // does not) still gets a backward call and its parameters their gradients.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& anchor, int64_t segment) {
    (void)anchor;
    ctx->save_for_backward({input});
    ctx->saved_data["segment"] = segment;
    // The recomputation must draw the same random numbers (dropout masks) as this forward.
    ctx->saved_data["rng"] = at::detail::getDefaultCPUGenerator().get_state();
    torch::NoGradGuard no_grad;
    return g_segments.at(static_cast<size_t>(segment))(input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::Tensor saved = ctx->get_saved_variables()[0];
    const auto segment = static_cast<size_t>(ctx->saved_data["segment"].toInt());
    torch::Tensor input = saved.detach().requires_grad_(saved.requires_grad());
    torch::Tensor output;
    {
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      const torch::Tensor now = generator.get_state();
      generator.set_state(ctx->saved_data["rng"].toTensor());
      torch::AutoGradMode enable(true);
      output = g_segments.at(segment)(input);
      generator.set_state(now);
    }
    torch::autograd::backward({output}, {grad_outputs[0]});
    return {saved.requires_grad() ? input.grad() : torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpointed_forward(torch::nn::Sequential& model, const torch::Tensor& input,
                                   int64_t segments) {
  if (segments <= 1 || !torch::GradMode::is_enabled()) return model->forward(input);
  std::vector<torch::nn::AnyModule*> children;
  for (auto& any : *model) children.push_back(&any);
  const auto count = static_cast<int64_t>(children.size());
  segments = std::min(segments, count);
  g_segments.clear();
  for (int64_t s = 0; s < segments; ++s) {
    const auto begin = static_cast<size_t>(s * count / segments);
    const auto end = static_cast<size_t>((s + 1) * count / segments);
    g_segments.emplace_back([children, begin, end](const torch::Tensor& x) {
      torch::Tensor h = x;
      for (size_t i = begin; i < end; ++i) h = children[i]->forward(h);
      return h;
    });
  }
  const torch::Tensor anchor = torch::ones({}, torch::requires_grad());
  torch::Tensor h = input;
  for (int64_t s = 0; s < segments; ++s) h = CheckpointFunction::apply(h, anchor, s);
  return h;
}

}  // namespace clhost
