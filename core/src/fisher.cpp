#include "fisher.hpp"

#include <torch/torch.h>

#include "clhost/errors.hpp"

namespace clhost {
namespace {

// Log-probabilities over the active classes.
torch::Tensor active_log_probs(const FisherContext& context, const torch::Tensor& x) {
  torch::nn::Sequential model = context.model;
  return torch::log_softmax(model->forward(x).index_select(1, context.active_classes), 1);
}

}  // namespace

std::vector<torch::Tensor> diagonal_fisher(const FisherContext& context,
                                           const clhost_fisher_request_t& request) {
  const TaskData& task = *context.task;
  torch::nn::Sequential model = context.model;
  std::vector<torch::Tensor> parameters = model->parameters();
  std::vector<torch::Tensor> fisher;
  for (const auto& parameter : parameters) fisher.push_back(torch::zeros_like(parameter));

  int64_t samples = task.train_x.size(0);
  if (request.max_samples > 0) samples = std::min(samples, request.max_samples);
  if (samples == 0) throw RunError("Fisher requested on a task without training samples");
  const int64_t chunk = std::max<int64_t>(request.batch_size, 1);
  torch::Generator generator = at::detail::createCPUGenerator(context.seed ^ 0xf15e4ULL);

  const bool was_training = model->is_training();
  model->eval();
  auto accumulate = [&](const std::vector<torch::Tensor>& grads, double weight) {
    for (size_t p = 0; p < fisher.size(); ++p) {
      if (grads[p].defined()) fisher[p].add_(grads[p].square(), weight);
    }
  };
  int64_t contributions = 0;
  for (int64_t start = 0; start < samples; start += chunk) {
    const int64_t end = std::min(samples, start + chunk);
    torch::Tensor x = task.train_x.slice(0, start, end);
    torch::Tensor y = context.label_map.index_select(0, task.train_y.slice(0, start, end));
    if (request.batched != 0) {
      // Avalanche's estimate: the squared gradient of the mini-batch's mean loss.
      torch::Tensor log_probs = active_log_probs(context, x);
      torch::Tensor labels = y;
      if (request.labels == CLHOST_FISHER_LABELS_SAMPLE) {
        labels = torch::multinomial(log_probs.exp().detach(), 1, true, generator).squeeze(1);
      }
      if (request.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
        torch::Tensor probs = log_probs.exp().detach();
        torch::Tensor loss = -(probs * log_probs).sum(1).mean();
        accumulate(torch::autograd::grad({loss}, parameters, {}, false, false, true), 1.0);
      } else {
        torch::Tensor loss = torch::nll_loss(log_probs, labels);
        accumulate(torch::autograd::grad({loss}, parameters, {}, false, false, true), 1.0);
      }
      ++contributions;
      continue;
    }
    // Exact per-sample Fisher: one backward pass per sample (and per class for EXPECTATION).
    for (int64_t i = 0; i < end - start; ++i) {
      torch::Tensor log_probs = active_log_probs(context, x.slice(0, i, i + 1)).squeeze(0);
      if (request.labels == CLHOST_FISHER_LABELS_EXPECTATION) {
        torch::Tensor probs = log_probs.exp().detach();
        const int64_t classes = log_probs.size(0);
        for (int64_t c = 0; c < classes; ++c) {
          auto grads =
              torch::autograd::grad({-log_probs[c]}, parameters, {}, c + 1 < classes, false, true);
          accumulate(grads, probs[c].item<double>());
        }
      } else {
        int64_t label = y[i].item<int64_t>();
        if (request.labels == CLHOST_FISHER_LABELS_SAMPLE) {
          label = torch::multinomial(log_probs.exp().detach(), 1, true, generator).item<int64_t>();
        }
        accumulate(torch::autograd::grad({-log_probs[label]}, parameters, {}, false, false, true),
                   1.0);
      }
      ++contributions;
    }
  }
  if (was_training) model->train();
  for (auto& entry : fisher) entry.div_(static_cast<double>(contributions));
  return fisher;
}

}  // namespace clhost
