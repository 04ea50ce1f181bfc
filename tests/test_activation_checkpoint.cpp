// Activation checkpointing: same gradients as the plain forward, less peak tensor memory.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "activation_checkpoint.hpp"
#include "clhost/memory_budget.hpp"
#include "micro_batcher.hpp"
#include "model.hpp"

namespace {

std::vector<torch::Tensor> gradients(torch::nn::Sequential& model, const torch::Tensor& x,
                                     int64_t segments) {
  model->zero_grad();
  const torch::Tensor out = clhost::checkpointed_forward(model, x, segments);
  (out.square().sum() + out.sum()).backward();
  std::vector<torch::Tensor> grads;
  for (const auto& parameter : model->parameters()) grads.push_back(parameter.grad().clone());
  return grads;
}

TEST(Checkpoint, GradientsEqualThePlainForward) {
  torch::manual_seed(5);
  clhost::ModelSection section;
  section.hidden = {64, 48, 32};
  auto model = clhost::make_model(section, 784, 28, 10);
  model->to(torch::kFloat64);
  const torch::Tensor x = torch::rand({17, 784}, torch::kFloat64);
  const auto plain = gradients(model, x, 0);
  for (int64_t segments : {2, 3, 7, 100}) {
    const auto checkpointed = gradients(model, x, segments);
    ASSERT_EQ(checkpointed.size(), plain.size());
    for (size_t p = 0; p < plain.size(); ++p) {
      const double scale = plain[p].abs().max().item<double>();
      EXPECT_LE((checkpointed[p] - plain[p]).abs().max().item<double>(), 1e-6 * scale)
          << "segments " << segments << " parameter " << p;
    }
  }
}

TEST(MicroBatches, AccumulatedGradientsEqualTheWholeBatch) {
  torch::manual_seed(11);
  clhost::ModelSection section;
  section.hidden = {64, 32};
  auto model = clhost::make_model(section, 784, 28, 10);
  const torch::Tensor x = torch::rand({300, 784});
  const torch::Tensor labels = torch::randint(0, 10, {300}, torch::kInt64);
  const torch::Tensor label_map =
      torch::tensor(std::vector<int64_t>{-1, -1, 0, 1, 2, -1, -1, -1, -1, -1});
  const torch::Tensor active = torch::tensor(std::vector<int64_t>{2, 3, 4});
  const torch::Tensor keep = (labels >= 2).logical_and(labels <= 4).nonzero().squeeze(1);
  const torch::Tensor rows = keep.slice(0, 0, 96);
  auto grads_with = [&](int64_t micro, int64_t segments, double* loss) {
    model->zero_grad();
    int64_t processed = 0;
    clhost::StepModel step;
    step.model = &model;
    step.view = clhost::ClassView{active, label_map};
    step.checkpoint_segments = segments;
    clhost::StepBatch batch;
    batch.x = x;
    batch.y = labels;
    batch.rows = rows;
    batch.samples = rows.size(0);
    *loss = clhost::accumulate_batch_gradients(step, batch, micro, &processed);
    EXPECT_EQ(processed, rows.size(0)) << "every sample exactly once";
    std::vector<torch::Tensor> out;
    for (const auto& parameter : model->parameters()) out.push_back(parameter.grad().clone());
    return out;
  };
  double whole_loss = 0.0;
  const auto whole = grads_with(96, 0, &whole_loss);
  for (const auto& [micro, segments] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {7, 0}, {32, 0}, {13, 2}}) {
    double loss = 0.0;
    const auto split = grads_with(micro, segments, &loss);
    EXPECT_NEAR(loss, whole_loss, 1e-5 * whole_loss);
    for (size_t p = 0; p < whole.size(); ++p) {
      const double scale = whole[p].abs().max().item<double>();
      EXPECT_LE((split[p] - whole[p]).abs().max().item<double>(), 1e-6 * scale)
          << "micro " << micro << " parameter " << p;
    }
  }
}

// Replayed samples in task-incremental learning: each is scored on its own task's head, the loss
// is the mean over every sample of the step, and micro-batching does not change it.
TEST(MicroBatches, ReplayedSamplesAreScoredOnTheirOwnTasksHead) {
  torch::manual_seed(12);
  clhost::ModelSection section;
  section.hidden = {16};
  auto model = clhost::make_model(section, 784, 28, 10);
  auto view_of = [](std::vector<int64_t> classes) {
    clhost::ClassView view{torch::tensor(classes), torch::full({10}, -1, torch::kInt64)};
    for (size_t i = 0; i < classes.size(); ++i)
      view.label_map[classes[i]] = static_cast<int64_t>(i);
    return view;
  };
  clhost::StepModel step;
  step.model = &model;
  step.task_views = {view_of({0, 1}), view_of({2, 3}), view_of({4, 5})};
  step.view = step.task_views[2];
  // Three samples of the current task (2), then four replayed from tasks 0 and 1.
  const torch::Tensor x = torch::rand({7, 784});
  const torch::Tensor y = torch::tensor(std::vector<int64_t>{4, 5, 4, 0, 3, 1, 2});
  const torch::Tensor tasks = torch::tensor(std::vector<int32_t>{2, 2, 2, 0, 1, 0, 1});
  clhost::StepBatch batch;
  batch.x = x.slice(0, 0, 3);
  batch.y = y.slice(0, 0, 3);
  batch.rows = torch::arange(3);
  batch.samples = 7;
  batch.task = 2;
  batch.replay_x = x.slice(0, 3, 7);
  batch.replay_y = y.slice(0, 3, 7);
  batch.replay_tasks = tasks.slice(0, 3, 7);
  double expected = 0.0;
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = model->forward(x);
    for (int64_t i = 0; i < 7; ++i) {
      const auto& view = step.task_views[static_cast<size_t>(tasks[i].item<int32_t>())];
      const torch::Tensor own = logits[i].index_select(0, view.active);
      const int64_t column = view.label_map[y[i].item<int64_t>()].item<int64_t>();
      expected += (torch::logsumexp(own, 0) - own[column]).item<double>() / 7.0;
    }
  }
  for (const int64_t micro : {7, 3, 2, 1}) {
    model->zero_grad();
    const double loss = clhost::accumulate_batch_gradients(step, batch, micro, nullptr);
    EXPECT_NEAR(loss, expected, 1e-5) << "micro-batch " << micro;
  }
}

TEST(Checkpoint, LowersThePeakOfADeepModel) {
  clhost::memory::install_counting_allocator();
  clhost::ModelSection section;
  section.hidden = std::vector<int64_t>(8, 256);  // activations, not weights, dominate
  auto model = clhost::make_model(section, 784, 28, 10);
  const torch::Tensor x = torch::rand({4096, 784});
  auto peak_of = [&](int64_t segments) {
    model->zero_grad();
    clhost::memory::reset_peak();
    const int64_t before = clhost::memory::current_bytes();
    clhost::checkpointed_forward(model, x, segments).sum().backward();
    return clhost::memory::peak_bytes() - before;
  };
  (void)peak_of(0);  // gradients allocated once, so both measurements start alike
  const int64_t plain = peak_of(0);
  const int64_t checkpointed = peak_of(4);
  RecordProperty("peak_plain", std::to_string(plain));
  RecordProperty("peak_checkpointed", std::to_string(checkpointed));
  EXPECT_LT(checkpointed, plain * 3 / 4) << plain << " vs " << checkpointed;
  std::printf("peak of forward+backward: plain %lld bytes, 4 checkpointed segments %lld bytes\n",
              static_cast<long long>(plain), static_cast<long long>(checkpointed));
}

}  // namespace
