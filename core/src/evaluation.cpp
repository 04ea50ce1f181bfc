#include "evaluation.hpp"

#include <torch/torch.h>

#include <cmath>

namespace clhost {
namespace {

ClassView make_class_view(const std::vector<int64_t>& classes, int64_t num_classes) {
  ClassView view;
  view.active = torch::tensor(classes, torch::kInt64);
  view.label_map = torch::full({num_classes}, -1, torch::kInt64);
  for (size_t i = 0; i < classes.size(); ++i) view.label_map[classes[i]] = static_cast<int64_t>(i);
  return view;
}

std::vector<int64_t> all_classes(const TaskSequence& sequence) {
  std::vector<int64_t> all(static_cast<size_t>(sequence.num_classes));
  for (size_t c = 0; c < all.size(); ++c) all[c] = static_cast<int64_t>(c);
  return all;
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
    default: return all_classes(sequence);
  }
}

std::vector<int64_t> evaluation_classes(const RunConfig& config, const TaskSequence& sequence,
                                        size_t task) {
  if (config.data.incremental == Incremental::kTask) return sequence.tasks[task].classes;
  return all_classes(sequence);
}

double evaluate(torch::nn::Sequential& model, const TaskData& task, const ClassView& view,
                int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  const int64_t total = task.test_size();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t end = std::min(total, start + batch_size);
    const Samples samples = task.test_range(start, end);
    torch::Tensor logits = model->forward(samples.x).index_select(1, view.active);
    torch::Tensor predicted = view.active.index_select(0, logits.argmax(1));
    correct += predicted.eq(samples.y).sum().item<int64_t>();
  }
  model->train();
  return total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
}

// Bits per byte of the next-byte predictions over every position of the held-out windows.
double bits_per_byte(torch::nn::Sequential& model, const TaskData& task, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  double nats = 0.0;
  int64_t predicted = 0;
  const int64_t total = task.test_size();
  for (int64_t start = 0; start < total; start += batch_size) {
    const int64_t end = std::min(total, start + batch_size);
    const Samples samples = task.test_range(start, end);
    const torch::Tensor logits = model->forward(samples.x);
    const torch::Tensor targets = samples.y.reshape({-1}).to(torch::kInt64);
    nats += torch::nn::functional::cross_entropy(
                logits.reshape({-1, logits.size(2)}), targets,
                torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    predicted += targets.size(0);
  }
  model->train();
  return predicted > 0 ? nats / (static_cast<double>(predicted) * std::log(2.0)) : 0.0;
}

}  // namespace

ClassView training_view(const RunConfig& config, const TaskSequence& sequence, size_t task) {
  if (sequence.next_byte) return make_class_view(all_classes(sequence), sequence.num_classes);
  return make_class_view(training_classes(config, sequence, task), sequence.num_classes);
}

std::vector<double> evaluate_all_tasks(torch::nn::Sequential& model, const RunConfig& config,
                                       const TaskSequence& sequence) {
  std::vector<double> accuracy;
  for (size_t j = 0; j < sequence.tasks.size(); ++j) {
    if (sequence.next_byte) {
      accuracy.push_back(bits_per_byte(model, sequence.tasks[j], config.train.eval_batch_size));
      continue;
    }
    accuracy.push_back(
        evaluate(model, sequence.tasks[j],
                 make_class_view(evaluation_classes(config, sequence, j), sequence.num_classes),
                 config.train.eval_batch_size));
  }
  return accuracy;
}

}  // namespace clhost
