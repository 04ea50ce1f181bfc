// data.validation for image tasks: each task's training samples are divided into the samples it
// trains on and the samples settings are tuned on (clhost sweep), so tuning never sees the test
// set. Text tasks hold out whole documents instead (text_data.cpp): windows cut from the same
// text would overlap the training windows.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "clhost/errors.hpp"
#include "data.hpp"

namespace clhost {

int64_t ValidationSplit::samples_of(int64_t train_size) const {
  if (count > 0) return count;
  if (fraction <= 0.0) return 0;
  return std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(train_size))));
}

namespace {

// Rows of another source, in the order given; what it reads is counted here as well as there.
class SubsetSource final : public SampleSource {
 public:
  SubsetSource(std::shared_ptr<const SampleSource> whole, torch::Tensor rows)
      : whole_(std::move(whole)), rows_(std::move(rows)) {}

  [[nodiscard]] int64_t size() const override { return rows_.numel(); }
  [[nodiscard]] Samples gather(const torch::Tensor& indices) const override {
    const int64_t before = whole_->bytes_read();
    Samples samples = whole_->gather(rows_.index_select(0, indices.to(torch::kInt64)));
    bytes_read_ += whole_->bytes_read() - before;
    return samples;
  }
  [[nodiscard]] int64_t bytes_read() const override { return bytes_read_; }
  [[nodiscard]] std::vector<torch::Tensor> resident_tensors() const override {
    std::vector<torch::Tensor> tensors = whole_->resident_tensors();
    tensors.push_back(rows_);
    return tensors;
  }

 private:
  std::shared_ptr<const SampleSource> whole_;
  torch::Tensor rows_;
  mutable int64_t bytes_read_ = 0;
};

// The held-out rows and the rows kept for training, each ascending.
std::pair<torch::Tensor, torch::Tensor> draw_rows(int64_t train_size, int64_t held_out,
                                                  uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(train_size));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const auto split = order.begin() + held_out;
  std::sort(order.begin(), split);
  std::sort(split, order.end());
  const std::vector<int64_t> held(order.begin(), split);
  const std::vector<int64_t> kept(split, order.end());
  return {torch::tensor(held, torch::kInt64), torch::tensor(kept, torch::kInt64)};
}

// Throws when a task would keep no training or no validation samples.
void check_held_out(const TaskData& task, size_t index, int64_t held_out,
                    const ValidationSplit& split) {
  const int64_t size = task.train_size();
  if (held_out < size) return;
  const std::string given = split.count > 0 ? std::to_string(split.count) + " samples"
                                            : "a fraction " + std::to_string(split.fraction);
  throw RunError("data.validation: task " + std::to_string(index + 1) + " (" + task.name +
                 ") has " + std::to_string(size) + " training samples; holding out " + given +
                 " leaves none to train on. Give a smaller data.validation");
}

}  // namespace

void hold_out_validation(TaskSequence& sequence, const ValidationSplit& split, uint64_t seed) {
  if (!split.enabled()) return;
  for (size_t index = 0; index < sequence.tasks.size(); ++index) {
    TaskData& task = sequence.tasks[index];
    const int64_t held_out = split.samples_of(task.train_size());
    check_held_out(task, index, held_out, split);
    // One shuffle per task, apart from the sample order's and the scenario's draws.
    const auto [held, kept] = draw_rows(task.train_size(), held_out,
                                        seed ^ 0x7a11da7e5eedULL ^ (0x9e3779b97f4a7c15ULL * index));
    if (task.train_source) {
      task.validation_source = std::make_shared<SubsetSource>(task.train_source, held);
      task.train_source = std::make_shared<SubsetSource>(task.train_source, kept);
    } else {
      task.validation_x = task.train_x.index_select(0, held);
      task.train_x = task.train_x.index_select(0, kept);
    }
    if (task.train_y.defined()) {
      task.validation_y = task.train_y.index_select(0, held);
      task.train_y = task.train_y.index_select(0, kept);
    }
  }
}

}  // namespace clhost
