// The exact batched per-sample Fisher against the batch-of-1 reference, and its block plan.
#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/torch.h>

#include <map>

#include "activation_probe.hpp"
#include "clhost/memory_budget.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "model.hpp"

namespace {

using clhost::FisherContext;
using clhost::FisherMethod;

struct Fixture {
  torch::nn::Sequential model;
  clhost::TaskData task;
  FisherContext context;
};

Fixture make_fixture(clhost::ModelKind kind, torch::Dtype dtype, int64_t samples,
                     std::vector<int64_t> hidden = {24, 12}) {
  torch::manual_seed(3);
  Fixture fixture;
  clhost::ModelSection section;
  section.kind = kind;
  section.hidden = std::move(hidden);
  fixture.model = clhost::make_model(section, 784, 28, 10);
  fixture.model->to(dtype);
  fixture.task.train_x = torch::rand({samples, 784}, dtype);
  fixture.task.train_y = torch::randint(0, 10, {samples}, torch::kInt64);
  fixture.task.classes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  fixture.context.model = fixture.model;
  fixture.context.task = &fixture.task;
  fixture.context.active_classes = torch::arange(10, torch::kInt64);
  fixture.context.label_map = torch::arange(10, torch::kInt64);
  return fixture;
}

std::vector<torch::Tensor> fisher_of(const FisherContext& context, clhost_fisher_labels_t labels,
                                     int64_t block_size, FisherMethod method, int64_t batch = 16) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = labels;
  request.batch_size = batch;
  const auto parameters = context.model->parameters();
  std::vector<torch::Tensor> out;
  for (const auto& parameter : parameters)
    out.push_back(torch::full({parameter.numel()}, -1.0, parameter.options().requires_grad(false)));
  clhost::diagonal_fisher(context, request, block_size, method,
                          [&](size_t p, int64_t offset, const torch::Tensor& values) {
                            out[p].slice(0, offset, offset + values.numel()).copy_(values);
                          });
  return out;
}

double max_relative_error(const std::vector<torch::Tensor>& a,
                          const std::vector<torch::Tensor>& b) {
  double worst = 0.0;
  for (size_t p = 0; p < a.size(); ++p) {
    const torch::Tensor scale = b[p].abs().max();
    // Relative to the tensor's largest entry: entries near zero have no meaningful relative error.
    worst = std::max(worst, ((a[p] - b[p]).abs().max() / scale.clamp_min(1e-30)).item<double>());
  }
  return worst;
}

class ExactFisher
    : public ::testing::TestWithParam<std::tuple<clhost::ModelKind, clhost_fisher_labels_t>> {};

TEST_P(ExactFisher, BatchedEqualsTheBatchOfOneLoop) {
  const auto [kind, labels] = GetParam();
  Fixture fixture = make_fixture(kind, torch::kFloat64, 40);
  const auto fast = fisher_of(fixture.context, labels, 1 << 30, FisherMethod::kAuto);
  const auto reference = fisher_of(fixture.context, labels, 1 << 30, FisherMethod::kPerSampleLoop);
  for (const auto& tensor : fast)
    EXPECT_GE(tensor.min().item<double>(), 0.0) << "every element written";
  EXPECT_LE(max_relative_error(fast, reference), 1e-5);
  EXPECT_GT(reference[0].sum().item<double>(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Models, ExactFisher,
                         ::testing::Combine(::testing::Values(clhost::ModelKind::kMlp,
                                                              clhost::ModelKind::kCnn),
                                            ::testing::Values(CLHOST_FISHER_LABELS_TRUE,
                                                              CLHOST_FISHER_LABELS_EXPECTATION)));

// The rows of clhost.sample_grads/1: (1/n) * sum of squared rows is the diagonal Fisher, and the
// batched rows equal the per-sample loop's, for every labels mode that has rows.
class SampleGradients
    : public ::testing::TestWithParam<std::tuple<clhost::ModelKind, clhost_fisher_labels_t>> {};

std::vector<torch::Tensor> squared_rows_of(const FisherContext& context,
                                           clhost_fisher_labels_t labels, FisherMethod method,
                                           std::vector<torch::Tensor>* all_rows) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = labels;
  request.batch_size = 16;
  const auto parameters = context.model->parameters();
  std::vector<torch::Tensor> out;
  for (const auto& parameter : parameters)
    out.push_back(torch::zeros({parameter.numel()}, parameter.options().requires_grad(false)));
  clhost::per_sample_gradients(
      context, request, 3000, method,
      [&](size_t, size_t, const clhost::FisherBlock& block, const torch::Tensor& rows,
          int64_t samples, bool) {
        all_rows->push_back(rows.clone());
        int64_t column = 0;
        for (const auto& segment : block) {
          const auto& parameter = parameters[segment.parameter];
          const int64_t row = parameter.dim() == 0 ? 1 : parameter.numel() / parameter.size(0);
          const int64_t count = (segment.row_end - segment.row_begin) * row;
          out[segment.parameter]
              .slice(0, segment.row_begin * row, segment.row_begin * row + count)
              .add_(rows.slice(1, column, column + count).square().sum(0) /
                    static_cast<double>(samples));
          column += count;
        }
      });
  return out;
}

TEST_P(SampleGradients, SquaredRowsAreTheDiagonalFisherAndBothPathsAgree) {
  const auto [kind, labels] = GetParam();
  Fixture fixture = make_fixture(kind, torch::kFloat64, 24);
  std::vector<torch::Tensor> fast_rows;
  std::vector<torch::Tensor> loop_rows;
  const auto from_rows = squared_rows_of(fixture.context, labels, FisherMethod::kAuto, &fast_rows);
  (void)squared_rows_of(fixture.context, labels, FisherMethod::kPerSampleLoop, &loop_rows);
  const auto diagonal = fisher_of(fixture.context, labels, 3000, FisherMethod::kAuto);
  EXPECT_LE(max_relative_error(from_rows, diagonal), 1e-6);
  ASSERT_EQ(fast_rows.size(), loop_rows.size());
  // 16 samples in the first chunk, times the 10 classes for expectation.
  EXPECT_EQ(fast_rows[0].size(0), labels == CLHOST_FISHER_LABELS_EXPECTATION ? 160 : 16);
  for (size_t i = 0; i < fast_rows.size(); ++i) {
    EXPECT_TRUE(torch::allclose(fast_rows[i], loop_rows[i], 1e-6, 1e-9)) << "chunk " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SampleGradients,
                         ::testing::Combine(::testing::Values(clhost::ModelKind::kMlp,
                                                              clhost::ModelKind::kCnn),
                                            ::testing::Values(CLHOST_FISHER_LABELS_TRUE,
                                                              CLHOST_FISHER_LABELS_EXPECTATION)));

TEST(FisherBlocks, FollowLayerBoundariesAndSplitLargeLayersByRows) {
  const std::vector<torch::Tensor> parameters = {torch::zeros({10, 5}), torch::zeros({10}),
                                                 torch::zeros({4, 10}), torch::zeros({4})};
  const auto blocks = clhost::plan_fisher_blocks(parameters, 60);
  // 50 + 10 fit one block; 40 + 4 the next.
  ASSERT_EQ(blocks.size(), 2U);
  EXPECT_EQ(blocks[0].size(), 2U);
  EXPECT_EQ(blocks[1].size(), 2U);
  const auto small = clhost::plan_fisher_blocks(parameters, 20);
  // [10,5] splits into 4-row blocks (4,4,2 rows), the rest fit whole.
  ASSERT_GE(small.size(), 5U);
  EXPECT_EQ(small[0][0].row_end - small[0][0].row_begin, 4);
  int64_t covered = 0;
  for (const auto& block : small) {
    int64_t size = 0;
    for (const auto& segment : block) {
      size += (segment.row_end - segment.row_begin) *
              (parameters[segment.parameter].numel() /
               std::max<int64_t>(parameters[segment.parameter].size(0), 1));
    }
    EXPECT_LE(size, 20);
    covered += size;
  }
  EXPECT_EQ(covered, 50 + 10 + 40 + 4);
}

// Memory planning sizes models without allocating them: the shapes must be make_model's, in its
// order, for every built-in kind, and the block plan from shapes the one from tensors.
TEST(ModelShapes, EqualTheBuiltModelsParametersForEveryKind) {
  std::vector<clhost::ModelSection> sections(4);
  sections[0].kind = clhost::ModelKind::kMlp;
  sections[0].hidden = {30, 20};
  sections[1].kind = clhost::ModelKind::kCnn;
  sections[1].hidden = {12};
  for (size_t i = 2; i < 4; ++i) {
    sections[i].kind = clhost::ModelKind::kTransformer;
    sections[i].layers = 2;
    sections[i].heads = 2;
    sections[i].d_model = 8;
    sections[i].context = 6;
    sections[i].mlp_ratio = 3;
    sections[i].tied_head = i == 2;
  }
  for (const auto& section : sections) {
    SCOPED_TRACE(static_cast<int>(section.kind));
    torch::nn::Sequential model = clhost::make_model(section, 28 * 28, 28, 10);
    std::vector<std::vector<int64_t>> built;
    for (const auto& parameter : model->parameters()) built.push_back(parameter.sizes().vec());
    const auto planned = clhost::model_parameter_shapes(section, 28 * 28, 28, 10);
    EXPECT_EQ(planned, built);
    for (const int64_t block : {int64_t{7}, int64_t{100}, int64_t{5000}}) {
      const auto from_shapes = clhost::plan_fisher_blocks(planned, block);
      const auto from_tensors = clhost::plan_fisher_blocks(model->parameters(), block);
      ASSERT_EQ(from_shapes.size(), from_tensors.size());
      for (size_t b = 0; b < from_shapes.size(); ++b) {
        ASSERT_EQ(from_shapes[b].size(), from_tensors[b].size());
        for (size_t k = 0; k < from_shapes[b].size(); ++k) {
          EXPECT_EQ(from_shapes[b][k].parameter, from_tensors[b][k].parameter);
          EXPECT_EQ(from_shapes[b][k].row_begin, from_tensors[b][k].row_begin);
          EXPECT_EQ(from_shapes[b][k].row_end, from_tensors[b][k].row_end);
        }
      }
      EXPECT_LE(clhost::largest_block_elements(from_shapes, planned),
                std::max<int64_t>(block, 28 * 28));
    }
  }
}

TEST(FisherBlocks, SmallBlocksGiveTheSameFisher) {
  Fixture fixture = make_fixture(clhost::ModelKind::kMlp, torch::kFloat32, 64);
  const auto whole =
      fisher_of(fixture.context, CLHOST_FISHER_LABELS_TRUE, 1 << 30, FisherMethod::kAuto);
  const auto blocked =
      fisher_of(fixture.context, CLHOST_FISHER_LABELS_TRUE, 500, FisherMethod::kAuto);
  EXPECT_LE(max_relative_error(blocked, whole), 1e-6);
}

int64_t heap_bytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

// Peak heap growth while blocks are emitted, measured with the allocator's counters.
int64_t peak_growth(const FisherContext& context, int64_t block_size) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = 8;
  const int64_t baseline = heap_bytes();
  int64_t peak = 0;
  clhost::diagonal_fisher(context, request, block_size, FisherMethod::kAuto,
                          [&](size_t, int64_t, const torch::Tensor&) {
                            peak = std::max(peak, heap_bytes() - baseline);
                          });
  return peak;
}

TEST(FisherBlocks, TemporaryMemoryIsBoundedByTheBlock) {
  if (!clhost::memory::glibc_allocator()) {
    GTEST_SKIP() << "no glibc malloc counters in this build (a sanitizer's allocator)";
  }
  torch::manual_seed(1);
  Fixture fixture = make_fixture(clhost::ModelKind::kMlp, torch::kFloat32, 16);
  clhost::ModelSection wide;
  wide.hidden = {1024, 1024};  // ~1.9M parameters: 7.6 MB of fp32 Fisher
  fixture.model = clhost::make_model(wide, 784, 28, 10);
  fixture.context.model = fixture.model;
  int64_t total = 0;
  for (const auto& parameter : fixture.model->parameters()) total += parameter.numel();
  const int64_t whole_bytes = total * 4;
  const int64_t small = peak_growth(fixture.context, 50000);
  const int64_t large = peak_growth(fixture.context, 1 << 30);
  RecordProperty("peak_growth_small_block", std::to_string(small));
  RecordProperty("peak_growth_whole_model", std::to_string(large));
  EXPECT_GE(large, whole_bytes) << "one block = the whole model's Fisher held at once";
  EXPECT_LT(small, whole_bytes / 4) << "blocks of 50k parameters must not hold the model's Fisher";
}

// Peak tensor growth of one exact Fisher pass with `batch` samples per pass.
int64_t pass_peak(const FisherContext& context, int64_t block_size, int64_t batch) {
  clhost::memory::reset_peak();
  const int64_t before = clhost::memory::current_bytes();
  (void)fisher_of(context, CLHOST_FISHER_LABELS_TRUE, block_size, FisherMethod::kAuto, batch);
  return clhost::memory::peak_bytes() - before;
}

// The Fisher of one block of the whole model, `batch` samples per pass, under a memory budget of
// `extra` bytes above what is live now (removed however the pass ends).
std::vector<torch::Tensor> fisher_under_budget(const FisherContext& context, int64_t extra,
                                               int64_t batch) {
  clhost::memory::set_budget(clhost::memory::current_bytes() + extra);
  struct Unset {
    ~Unset() { clhost::memory::set_budget(-1); }
  } const unset;
  return fisher_of(context, CLHOST_FISHER_LABELS_TRUE, 1 << 30, FisherMethod::kAuto, batch);
}

// Under a memory budget the per-sample pass that does not fit starts the block over with half
// the samples per pass, until it fits; the Fisher is the one a small batch gives.
TEST(FisherBlocks, OutOfMemoryStartsTheBlockOverWithSmallerPasses) {
  namespace memory = clhost::memory;
  memory::install_counting_allocator();
  Fixture fixture = make_fixture(clhost::ModelKind::kMlp, torch::kFloat32, 256);
  const int64_t small = pass_peak(fixture.context, 1 << 30, 4);
  const int64_t large = pass_peak(fixture.context, 1 << 30, 256);
  ASSERT_GT(large, 2 * small) << "the pass's memory must grow with the batch for this test";
  const auto reference =
      fisher_of(fixture.context, CLHOST_FISHER_LABELS_TRUE, 1 << 30, FisherMethod::kAuto, 4);

  std::vector<std::string> lines;
  fixture.context.progress = [&](const std::string& line) { lines.push_back(line); };
  const auto fisher = fisher_under_budget(fixture.context, (small + large) / 2, 256);
  EXPECT_LE(max_relative_error(fisher, reference), 1e-5);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.front().find("out of memory in the Fisher pass (block 1/1): the block starts "
                               "over with 128 samples per pass"),
            std::string::npos)
      << lines.front();
}

// When one sample per pass does not fit either, the block starts over as two blocks, halved
// again until they fit; the Fisher is the same.
TEST(FisherBlocks, OutOfMemoryWithOneSamplePerPassSplitsTheBlock) {
  namespace memory = clhost::memory;
  memory::install_counting_allocator();
  Fixture fixture = make_fixture(clhost::ModelKind::kMlp, torch::kFloat32, 32, {512});
  const int64_t whole = pass_peak(fixture.context, 1 << 30, 1);   // one block of 407,050 elements
  const int64_t quarter = pass_peak(fixture.context, 100000, 1);  // blocks of at most 100,000
  ASSERT_GT(whole, 2 * quarter) << "the pass's memory must grow with the block for this test";
  const auto reference =
      fisher_of(fixture.context, CLHOST_FISHER_LABELS_TRUE, 1 << 30, FisherMethod::kAuto, 4);

  std::vector<std::string> lines;
  fixture.context.progress = [&](const std::string& line) { lines.push_back(line); };
  const auto fisher = fisher_under_budget(fixture.context, (whole + quarter) / 2, 4);
  EXPECT_LE(max_relative_error(fisher, reference), 1e-5);
  std::string log;
  for (const auto& line : lines) log += line + "\n";
  EXPECT_NE(log.find("(block 1/1): the block starts over with 1 samples per pass"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("(block 1/1): the block starts over as two blocks of 401408 and 5642 "
                     "parameters"),
            std::string::npos)
      << log;
}

// Nothing smaller than one row of a parameter: then the pass stops with what to change.
TEST(FisherBlocks, OutOfMemoryInOneRowStopsWithAdvice) {
  namespace memory = clhost::memory;
  memory::install_counting_allocator();
  Fixture fixture = make_fixture(clhost::ModelKind::kMlp, torch::kFloat32, 8, {512});
  int64_t output_bytes = 0;  // fisher_of's own result tensors
  for (const auto& parameter : fixture.model->parameters()) output_bytes += 4 * parameter.numel();
  std::string error;
  try {
    (void)fisher_under_budget(fixture.context, output_bytes + 1024, 2);
  } catch (const std::exception& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("out of memory in the Fisher pass (block 1/"), std::string::npos) << error;
  EXPECT_NE(error.find("one row of parameters (784 elements) with 2 samples per pass does not "
                       "fit; raise run.memory_budget"),
            std::string::npos)
      << error;
}

}  // namespace

namespace {

// clhost.output_grads/1 with MAS's f = ||scores||^2 (df/dscores = 2 scores): the mean over samples
// of |g_i| or g_i^2, against one autograd pass per sample.
std::vector<torch::Tensor> output_gradients_by_loop(Fixture& fixture, int64_t samples,
                                                    bool absolute) {
  const auto parameters = fixture.model->parameters();
  std::vector<torch::Tensor> sums;
  for (const auto& parameter : parameters) sums.push_back(torch::zeros({parameter.numel()}));
  fixture.model->eval();
  for (int64_t i = 0; i < samples; ++i) {
    const torch::Tensor scores = fixture.model->forward(fixture.task.train_x.slice(0, i, i + 1))
                                     .index_select(1, fixture.context.active_classes);
    const auto grads = torch::autograd::grad({scores.square().sum()}, parameters);
    for (size_t p = 0; p < grads.size(); ++p) {
      const torch::Tensor flat = grads[p].reshape({-1});
      sums[p] += absolute ? flat.abs() : flat.square();
    }
  }
  fixture.model->train();
  for (auto& sum : sums) sum /= static_cast<double>(samples);
  return sums;
}

class OutputGradients : public ::testing::TestWithParam<std::tuple<clhost::ModelKind, bool>> {};

TEST_P(OutputGradients, MeanAbsoluteOrSquaredPerSampleGradientsOfTheOutputFunction) {
  const auto [kind, absolute] = GetParam();
  Fixture fixture = make_fixture(kind, torch::kFloat32, 37);
  fixture.context.active_classes = torch::tensor(std::vector<int64_t>{2, 3, 7});
  fixture.context.label_map = torch::zeros({10}, torch::kInt64);
  clhost::OutputFunction function;
  function.absolute = absolute;
  int64_t calls = 0;
  function.gradient = [&](const torch::Tensor& scores, const torch::Tensor&) {
    ++calls;
    EXPECT_EQ(scores.size(1), 3) << "the active classes' logits only";
    return 2 * scores;
  };
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.batch_size = 8;
  const auto parameters = fixture.model->parameters();
  std::vector<torch::Tensor> got;
  for (const auto& parameter : parameters) got.push_back(torch::full({parameter.numel()}, -1.0));
  // Small blocks: several per layer, so rows of one parameter come in pieces.
  clhost::diagonal_output_gradients(
      fixture.context, request, 700, function,
      [&](size_t p, int64_t offset, const torch::Tensor& values) {
        got[p].slice(0, offset, offset + values.numel()).copy_(values);
      });
  EXPECT_GT(calls, 0);
  const auto expected = output_gradients_by_loop(fixture, 37, absolute);
  EXPECT_LT(max_relative_error(got, expected), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(MlpAndCnn, OutputGradients,
                         ::testing::Combine(::testing::Values(clhost::ModelKind::kMlp,
                                                              clhost::ModelKind::kCnn),
                                            ::testing::Bool()));

}  // namespace

namespace {

clhost::RunConfig transformer_config(int64_t layers) {
  clhost::RunConfig config;
  config.model.kind = clhost::ModelKind::kTransformer;
  config.model.layers = layers;
  config.model.heads = 4;
  config.model.d_model = 64;
  config.model.context = 32;
  config.model.mlp_ratio = 4;
  config.train.batch_size = 16;
  config.fisher.block_size = 20000;
  config.data.kind = clhost::DataKind::kText;
  config.data.languages = {"en"};
  config.data.num_tasks = 1;
  config.data.train_samples_per_task = 64;
  config.data.test_samples_per_task = 1;
  return config;
}

// The probe extrapolates a transformer from one and two decoder blocks; measured on the whole
// six-block model, the training step and the Fisher pass agree within 5%.
TEST(ActivationProbe, ATransformersDepthIsExtrapolatedFromTwoBlocks) {
  const clhost::RunConfig config = transformer_config(6);
  const clhost::TaskSequence sequence =
      clhost::build_text_tasks(config.data, config.model.context, {}, 0);
  const auto probed = clhost::probe_activations(config, sequence, 32);
  ASSERT_TRUE(probed.has_value());
  EXPECT_NE(probed->method.find("extrapolated"), std::string::npos) << probed->method;
  const clhost::ActivationPlan whole = clhost::measure_whole_model(config, sequence, 32);
  RecordProperty("train_probed", std::to_string(probed->train_step_bytes));
  RecordProperty("train_whole", std::to_string(whole.train_step_bytes));
  EXPECT_NEAR(probed->train_step_bytes, whole.train_step_bytes, 0.05 * whole.train_step_bytes);
  EXPECT_NEAR(probed->fisher_pass_bytes, whole.fisher_pass_bytes, 0.05 * whole.fisher_pass_bytes);
  EXPECT_NEAR(probed->train_one_sample_bytes, whole.train_one_sample_bytes,
              0.05 * whole.train_one_sample_bytes);
  EXPECT_LT(probed->train_one_sample_bytes, probed->train_step_bytes);
}

// The probe draws from LibTorch's default generator and allocates tensors; the run's next draw
// and its recorded peak are what they would have been without it.
TEST(ActivationProbe, LeavesTheRunsDrawsAndPeakAsTheyWere) {
  namespace memory = clhost::memory;
  memory::install_counting_allocator();
  const clhost::RunConfig config = transformer_config(3);
  const clhost::TaskSequence sequence =
      clhost::build_text_tasks(config.data, config.model.context, {}, 0);
  torch::manual_seed(11);
  const torch::Tensor expected = torch::rand({4});
  torch::manual_seed(11);
  memory::reset_peak();
  const int64_t peak = memory::peak_bytes();
  ASSERT_TRUE(clhost::probe_activations(config, sequence, 8).has_value());
  EXPECT_EQ(memory::peak_bytes(), peak);
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
}

}  // namespace
