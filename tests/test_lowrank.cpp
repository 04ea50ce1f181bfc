// The low-rank + diagonal Fisher (plugins/lowrank_fisher): exactness at full rank, error falling
// with the rank, the exact diagonal, online merging, and the plug-in end to end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "clhost/plugin_torch.hpp"
#include "lowrank.hpp"
#include "run_helpers.hpp"
#include "test_helpers.hpp"

namespace {

namespace lowrank = clhost::lowrank;

// Gradient rows with a decaying spectrum (like real per-sample gradients): R = A S B, m x p.
torch::Tensor spectral_rows(int64_t m, int64_t p, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t k = std::min(m, p);
  const torch::Tensor scales = torch::pow(0.8, torch::arange(k, torch::kFloat64));
  const torch::Tensor left = std::get<0>(at::linalg_qr(torch::randn({m, k}, torch::kFloat64)));
  const torch::Tensor right = std::get<0>(at::linalg_qr(torch::randn({p, k}, torch::kFloat64)));
  return (left * scales).mm(right.t()).to(torch::kFloat32);
}

lowrank::Factor build(const torch::Tensor& rows, int64_t rank, int64_t samples, int64_t chunk = 7) {
  lowrank::FactorBuilder builder(rows.size(1), rank, rows.size(0), 11);
  for (int64_t start = 0; start < rows.size(0); start += chunk) {
    builder.add(rows.slice(0, start, std::min(rows.size(0), start + chunk)));
  }
  return builder.finish(samples);
}

torch::Tensor exact_fisher(const torch::Tensor& rows, int64_t samples) {
  const torch::Tensor r = rows.to(torch::kFloat64);
  return r.t().mm(r) / static_cast<double>(samples);
}

double relative(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

TEST(LowRankFisher, FullRankIsTheExactFisherAndItsQuadraticForm) {
  const torch::Tensor rows = spectral_rows(40, 30, 1);  // e.g. 20 samples x 2 classes, 30 params
  const torch::Tensor fisher = exact_fisher(rows, 20);
  const auto factor = build(rows, lowrank::rank_for(1.0, 40, 0), 20);
  EXPECT_EQ(factor.rank(), 40);
  EXPECT_LE(relative(lowrank::dense(factor), fisher), 1e-5);
  torch::manual_seed(3);
  const torch::Tensor d = torch::randn({30});
  torch::Tensor gradient;
  const double value = lowrank::quadratic(factor, d, &gradient);
  const torch::Tensor d64 = d.to(torch::kFloat64);
  const double expected = d64.dot(fisher.mv(d64)).item<double>();
  EXPECT_LE(std::abs(value - expected) / expected, 1e-4);
  EXPECT_LE(relative(gradient.to(torch::kFloat64), fisher.mv(d64)), 1e-4);
}

TEST(LowRankFisher, TheErrorFallsAsTheRankGrowsAndTheDiagonalStaysExact) {
  const torch::Tensor rows = spectral_rows(120, 50, 2);
  const torch::Tensor fisher = exact_fisher(rows, 60);
  double previous = 1e9;
  for (int64_t rank : {1, 2, 4, 8, 16, 32, 50}) {
    SCOPED_TRACE(rank);
    const auto factor = build(rows, rank, 60);
    EXPECT_EQ(factor.rank(), rank);
    const torch::Tensor approximation = lowrank::dense(factor);
    // diag(D + U U^T) is the exact diagonal whatever the rank.
    EXPECT_LE(relative(approximation.diagonal(), fisher.diagonal()), 1e-5);
    EXPECT_GE(factor.diag.min().item<double>(), 0.0);
    // The off-diagonal error (what the rank buys) falls.
    const torch::Tensor off = torch::ones_like(fisher) - torch::eye(50, torch::kFloat64);
    const double error = relative(approximation * off, fisher * off);
    EXPECT_LT(error, previous);
    previous = error;
  }
  EXPECT_LE(previous, 1e-4) << "rank = number of parameters: exact";
}

TEST(LowRankFisher, OnlineMergeKeepsTheRankAndTheExactDiagonal) {
  const torch::Tensor first = spectral_rows(60, 40, 4);
  const torch::Tensor second = spectral_rows(60, 40, 5);
  const double gamma = 0.7;
  const auto merged = lowrank::merge(build(first, 6, 30), build(second, 6, 30), gamma, 6);
  EXPECT_EQ(merged.rank(), 6);
  const torch::Tensor total = gamma * exact_fisher(first, 30) + exact_fisher(second, 30);
  EXPECT_LE(relative(lowrank::dense(merged).diagonal(), total.diagonal()), 1e-5);
  // At full rank the merge is the exact sum.
  const auto exact = lowrank::merge(build(first, 60, 30), build(second, 60, 30), gamma, 120);
  EXPECT_LE(relative(lowrank::dense(exact), total), 1e-5);
}

TEST(LowRankFisher, RankFollowsTheCompressionRatio) {
  EXPECT_EQ(lowrank::rank_for(0.1, 1000, 0), 100);
  EXPECT_EQ(lowrank::rank_for(0.001, 500, 0), 1);
  EXPECT_EQ(lowrank::rank_for(0.5, 1000, 64), 64);
  EXPECT_EQ(lowrank::rank_for(1.0, 77, 0), 77);
}

TEST(LowRankFisher, PluginRunsEndToEndAndStoresItsFactors) {
  clhost::test::TempDir dir;
  const std::string config = dir.file(
      "run.toml",
      "[run]\nseed = 1\n[data]\nnum_tasks = 3\nscenario = \"permuted\"\n"
      "train_samples_per_task = 400\ntest_samples_per_task = 200\n"
      "[model]\nhidden = [32]\n[train]\nbatch_size = 32\niterations = 20\n"
      "[fisher_computation]\nblock_size = 10000\n"
      "[[pipeline]]\nplugin = \"lowrank_fisher\"\nlambda = 100.0\ncompression_ratio = 0.05\n"
      "fisher_samples = 40\nlabels = \"true\"\n");
  const auto summary = clhost::test::run_quietly(config, dir.path("run"));
  ASSERT_EQ(summary.accuracy.size(), 3U);
  const auto results =
      nlohmann::json::parse(clhost::test::read_file(dir.path("run") + "/results.json"));
  const auto& report = results["plugins"][0]["report"];
  EXPECT_EQ(report["rank"], 2);  // ceil(0.05 * 40 rows)
  EXPECT_EQ(report["tasks_consolidated"], 3);
  // 784*32 + 32 + 32*10 + 10 parameters in blocks of at most 10000 elements, whole rows.
  EXPECT_EQ(report["parameters"], 25450);
  EXPECT_GT(report["blocks"].size(), 2U);
  for (const auto& block : report["blocks"]) EXPECT_EQ(block["rank"], 2) << "online: still rank r";
  // Online: one U (rank 2), D and anchor per element: (2 + 1 + 1) * 4 bytes.
  EXPECT_NEAR(report["state_bytes_per_parameter"].get<double>(), 16.0, 1e-9);
  const auto inspect = clhost::test::run_command(std::string(CLHOST_BINARY) + " fisher inspect " +
                                                 dir.path("run") + "/fisher.h5");
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  for (const char* group : {"group lowrank_task_0_u:", "group lowrank_task_2_d:", "2x[32,784]"}) {
    EXPECT_NE(inspect.output.find(group), std::string::npos) << group << "\n" << inspect.output;
  }
  EXPECT_NE(inspect.output.find("rank 2"), std::string::npos) << inspect.output;
}

// The default byte budget caps a rank the ratio asks for, says so, and what the report measures
// as resident is the state alone (not the task's own factor, freed once merged).
TEST(LowRankFisher, ByteBudgetCapsTheRankAndStateIsMeasuredAfterTheMerge) {
  clhost::test::TempDir dir;
  const std::string config =
      dir.file("run.toml",
               "[run]\nseed = 1\n[data]\nnum_tasks = 3\nscenario = \"permuted\"\n"
               "train_samples_per_task = 400\ntest_samples_per_task = 200\n"
               "[model]\nhidden = [32]\n[train]\nbatch_size = 32\niterations = 20\n"
               "[[pipeline]]\nplugin = \"lowrank_fisher\"\ncompression_ratio = 0.5\n"
               "fisher_samples = 40\nlabels = \"true\"\nstore = false\n");
  const auto run = clhost::test::run_command(std::string(CLHOST_BINARY) + " run --config " +
                                             config + " -o " + dir.path("run"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("[lowrank_fisher] warning: compression_ratio 0.5000 of 40 gradient "
                            "rows asks for rank 20; max_bytes_per_parameter caps it at 2"),
            std::string::npos)
      << run.output;
  const auto results =
      nlohmann::json::parse(clhost::test::read_file(dir.path("run") + "/results.json"));
  const auto& report = results["plugins"][0]["report"];
  EXPECT_EQ(report["rank"], 2);
  EXPECT_EQ(report["rank_limited_by"], "max_bytes_per_parameter");
  EXPECT_NEAR(report["state_bytes_per_parameter"].get<double>(), 16.0, 1e-9);
  const auto state = report["state_bytes"].get<double>();
  if (report["state_bytes_measured"].is_null()) {
    GTEST_SKIP() << "no glibc malloc counters in this build (a sanitizer's allocator)";
  }
  const auto measured = report["state_bytes_measured"].get<double>();
  EXPECT_GT(measured, 0.8 * state);
  EXPECT_LT(measured, 1.5 * state) << "three tasks merged online hold one factor, not three";
}

TEST(LowRankFisher, AByteBudgetWithoutRoomForRankOneIsRefused) {
  clhost::test::TempDir dir;
  const std::string config =
      dir.file("run.toml",
               "[data]\nnum_tasks = 2\nscenario = \"permuted\"\ntrain_samples_per_task = 100\n"
               "test_samples_per_task = 50\n[model]\nhidden = [8]\n[train]\niterations = 2\n"
               "[[pipeline]]\nplugin = \"lowrank_fisher\"\nmax_bytes_per_parameter = 8.0\n");
  const auto run = clhost::test::run_command(std::string(CLHOST_BINARY) + " run --config " +
                                             config + " -o " + dir.path("run"));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.output.find("max_bytes_per_parameter = 8.00 leaves no room for rank 1"),
            std::string::npos)
      << run.output;
}

// The tensors of checkpointed state (model.bin, a plug-in's .held file, lowrank_fisher's factors):
// a forged dtype or shape is refused before anything is allocated for it.
TEST(StateTensors, ForgedDtypesAndShapesAreRefusedBeforeAllocating) {
  auto forged = [](int32_t dtype, const std::vector<int64_t>& sizes, size_t payload) {
    std::string bytes(1, '\1');
    bytes.append(reinterpret_cast<const char*>(&dtype), sizeof(dtype));
    const uint64_t count = sizes.size();
    bytes.append(reinterpret_cast<const char*>(&count), sizeof(count));
    bytes.append(reinterpret_cast<const char*>(sizes.data()), sizes.size() * sizeof(int64_t));
    bytes.append(payload, '\0');
    return bytes;
  };
  auto read = [](const std::string& bytes) {
    clhost::sdk::StateReader in(bytes.data(), bytes.size());
    return clhost::sdk::read_tensor(in);
  };
  const auto kFloat = static_cast<int32_t>(torch::kFloat32);
  EXPECT_EQ(read(forged(kFloat, {2, 3}, 24)).sizes(), (std::vector<int64_t>{2, 3}));
  const auto message = [&](const std::string& bytes) {
    try {
      (void)read(bytes);
    } catch (const clhost::sdk::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  // 2^62 elements would be 16 EiB: refused from the shape, not by the allocator.
  EXPECT_NE(message(forged(kFloat, {int64_t{1} << 31, int64_t{1} << 31}, 24)).find("does not fit"),
            std::string::npos);
  EXPECT_NE(message(forged(kFloat, {4, -1}, 24)).find("does not fit"), std::string::npos);
  EXPECT_NE(message(forged(kFloat, {2, 4}, 24)).find("does not fit"), std::string::npos);
  EXPECT_NE(message(forged(99, {2}, 8)).find("dtype code 99"), std::string::npos);
  EXPECT_NE(message(forged(-1, {2}, 8)).find("dtype code -1"), std::string::npos);
}

}  // namespace
