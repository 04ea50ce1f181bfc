#include "evaluation.hpp"

#include <torch/torch.h>

#include <cmath>
#include <utility>

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

int64_t split_size(const TaskData& task, EvalSplit split) {
  return split == EvalSplit::kTest ? task.test_size() : task.validation_size();
}

Samples split_range(const TaskData& task, EvalSplit split, int64_t begin, int64_t end) {
  return split == EvalSplit::kTest ? task.test_range(begin, end)
                                   : task.validation_range(begin, end);
}

// The rows [begin, end) this rank scores: its contiguous share of the task's test (or
// validation) samples.
std::pair<int64_t, int64_t> rank_shard(const TaskData& task, EvalSplit split,
                                       const Collective& collective) {
  const int64_t total = split_size(task, split);
  const int64_t ranks = collective.world_size();
  return {total * collective.rank() / ranks, total * (collective.rank() + 1) / ranks};
}

// What one rank adds up for a task: correct predictions (or nats) and the count they are over.
struct Tally {
  double sum = 0.0;
  double count = 0.0;
};

Tally count_correct(torch::nn::Sequential& model, const TaskData& task, EvalSplit split,
                    const ClassView& view, int64_t batch_size, std::pair<int64_t, int64_t> shard) {
  Tally tally;
  for (int64_t start = shard.first; start < shard.second; start += batch_size) {
    const int64_t end = std::min(shard.second, start + batch_size);
    const Samples samples = split_range(task, split, start, end);
    torch::Tensor logits = model->forward(samples.x).index_select(1, view.active);
    torch::Tensor predicted = view.active.index_select(0, logits.argmax(1));
    tally.sum += static_cast<double>(predicted.eq(samples.y).sum().item<int64_t>());
    tally.count += static_cast<double>(end - start);
  }
  return tally;
}

// Nats of the next-byte predictions over every position of the held-out windows.
Tally count_nats(torch::nn::Sequential& model, const TaskData& task, EvalSplit split,
                 int64_t batch_size, std::pair<int64_t, int64_t> shard) {
  Tally tally;
  for (int64_t start = shard.first; start < shard.second; start += batch_size) {
    const int64_t end = std::min(shard.second, start + batch_size);
    const Samples samples = split_range(task, split, start, end);
    const torch::Tensor logits = model->forward(samples.x);
    const torch::Tensor targets = samples.y.reshape({-1}).to(torch::kInt64);
    tally.sum += torch::nn::functional::cross_entropy(
                     logits.reshape({-1, logits.size(2)}), targets,
                     torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                     .item<double>();
    tally.count += static_cast<double>(targets.size(0));
  }
  return tally;
}

}  // namespace

ClassView training_view(const RunConfig& config, const TaskSequence& sequence, size_t task) {
  if (sequence.next_byte) return make_class_view(all_classes(sequence), sequence.num_classes);
  return make_class_view(training_classes(config, sequence, task), sequence.num_classes);
}

std::vector<double> evaluate_all_tasks(torch::nn::Sequential& model, const RunConfig& config,
                                       const TaskSequence& sequence, Collective& collective,
                                       EvalSplit split) {
  torch::NoGradGuard no_grad;
  model->eval();
  // Every rank scores its share of each test set; one all-reduce adds up the tallies.
  std::vector<double> tallies;
  for (size_t j = 0; j < sequence.tasks.size(); ++j) {
    const TaskData& task = sequence.tasks[j];
    const int64_t batch = config.train.eval_batch_size;
    const auto shard = rank_shard(task, split, collective);
    const Tally tally = sequence.next_byte
                            ? count_nats(model, task, split, batch, shard)
                            : count_correct(model, task, split,
                                            make_class_view(evaluation_classes(config, sequence, j),
                                                            sequence.num_classes),
                                            batch, shard);
    tallies.push_back(tally.sum);
    tallies.push_back(tally.count);
  }
  model->train();
  tallies = collective.sum(tallies);
  std::vector<double> scores;
  for (size_t j = 0; j < sequence.tasks.size(); ++j) {
    const double sum = tallies[2 * j];
    const double count = tallies[2 * j + 1];
    if (count <= 0.0) {
      scores.push_back(0.0);
    } else {
      scores.push_back(sequence.next_byte ? sum / (count * std::log(2.0)) : sum / count);
    }
  }
  return scores;
}

}  // namespace clhost
