// The trainer: determinism, micro-batch accumulation, and the regularizer hook.
#include <gtest/gtest.h>

#include <filesystem>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/runner.hpp"
#include "run_helpers.hpp"
#include "test_helpers.hpp"

namespace {

std::string tiny_config(const clhost::test::TempDir& dir, const std::string& extra = "") {
  return dir.file(
      "tiny.toml",
      "[run]\nseed = 7\nthreads = 1\nlog_every = 5\n"
      "[data]\nnum_tasks = 2\ntrain_samples_per_task = 300\ntest_samples_per_task = 200\n"
      "[model]\nhidden = [32]\n"
      "[train]\nbatch_size = 32\niterations = 20\n" +
          extra);
}

clhost::RunSummary run(const std::string& config_path, const std::string& run_dir,
                       const std::vector<std::string>& set = {}) {
  return clhost::test::run_quietly(config_path, run_dir, set);
}

// metrics.csv without the samples/s column (timing).
std::string losses(const std::string& run_dir) {
  std::string out;
  std::istringstream in(clhost::test::read_file(run_dir + "/metrics.csv"));
  // Drop samples/s, step_tensor_peak_bytes and event: the last three columns.
  for (std::string line; std::getline(in, line);) {
    for (int column = 0; column < 3; ++column) line = line.substr(0, line.rfind(','));
    out += line + "\n";
  }
  return out;
}

TEST(Trainer, SameSeedGivesBitIdenticalResults) {
  clhost::test::TempDir dir;
  const std::string path = tiny_config(dir, "[[pipeline]]\nplugin = \"l2\"\nlambda = 2.0\n");
  const auto a = run(path, dir.path("a"));
  const auto b = run(path, dir.path("b"));
  EXPECT_EQ(a.accuracy, b.accuracy);  // exact, not approximate
  EXPECT_EQ(a.metrics.average_accuracy, b.metrics.average_accuracy);
  EXPECT_EQ(losses(dir.path("a")), losses(dir.path("b")));
  const auto c = run(path, dir.path("c"), {"run.seed=8"});
  EXPECT_NE(losses(dir.path("a")), losses(dir.path("c"))) << "the seed must matter";
}

TEST(Trainer, WritesTheRunDirectory) {
  clhost::test::TempDir dir;
  const auto summary = run(tiny_config(dir), dir.path("out"));
  for (const char* name : {"results.json", "accuracy_matrix.csv", "metrics.csv"}) {
    EXPECT_TRUE(std::filesystem::exists(dir.path("out") + "/" + name)) << name;
  }
  ASSERT_EQ(summary.accuracy.size(), 2U);
  EXPECT_GT(summary.accuracy[0][0], 0.6) << "better than chance (0.5) after 20 steps";
  EXPECT_EQ(summary.optimizer_steps, 40);
}

TEST(Trainer, RefusesANonEmptyOutputDirectory) {
  clhost::test::TempDir dir;
  (void)dir.file("keep.txt", "precious");
  EXPECT_THROW(run(tiny_config(dir), dir.path()), std::runtime_error);
  EXPECT_EQ(clhost::test::read_file(dir.path("keep.txt")), "precious");
}

TEST(Trainer, L2PenaltyAppearsAfterTheFirstTask) {
  clhost::test::TempDir dir;
  (void)run(tiny_config(dir, "[[pipeline]]\nplugin = \"l2\"\nlambda = 2.0\n"), dir.path("out"));
  std::istringstream in(clhost::test::read_file(dir.path("out") + "/metrics.csv"));
  std::string line;
  std::getline(in, line);
  double first_task_penalty = 0.0;
  double second_task_penalty = 0.0;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::istringstream row(line);
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    if (cells[4].empty()) continue;  // an event row
    (cells[0] == "0" ? first_task_penalty : second_task_penalty) += std::stod(cells[4]);
  }
  EXPECT_EQ(first_task_penalty, 0.0);
  EXPECT_GT(second_task_penalty, 0.0);
}

// A non-finite term stops the run before its update, naming the term, the task and the step.
void expect_stops(const std::string& config, const std::string& run_dir,
                  const std::vector<std::string>& plugin_path, const std::vector<std::string>& set,
                  const std::vector<std::string>& expected) {
  clhost::ConfigOverrides overrides;
  overrides.set = set;
  overrides.plugin_path = plugin_path;
  clhost::RunOptions options;
  options.run_dir = run_dir;
  options.quiet = true;
  try {
    clhost::run_pipeline(clhost::load_config(config, overrides), options);
    FAIL() << "the run should have stopped";
  } catch (const clhost::RunError& e) {
    for (const auto& part : expected) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << part << " in: " << e.what();
    }
  }
  const std::string status = clhost::test::read_file(run_dir + "/status.json");
  EXPECT_NE(status.find("\"failed\""), std::string::npos) << status;
  EXPECT_FALSE(std::filesystem::exists(run_dir + "/results.json"));
}

TEST(Trainer, ANanPenaltyStopsTheRunNamingThePlugin) {
  clhost::test::TempDir dir;
  const std::string config =
      tiny_config(dir, "[[pipeline]]\nplugin = \"nan_penalty\"\nat_step = 26\n");
  // Global step 26 is the 7th step of task 2 (20 steps per task).
  expect_stops(config, dir.path("nan"), {CLHOST_TEST_PLUGIN_DIR}, {},
               {"task 2 (task1) step 7", "the penalty of plug-in 'nan_penalty' is nan",
                "stopped before this step's update"});
  expect_stops(config, dir.path("inf"), {CLHOST_TEST_PLUGIN_DIR},
               {"pipeline.0.infinite=true", "pipeline.0.at_step=3"},
               {"task 1 (task0) step 4", "'nan_penalty' is inf"});
}

TEST(Trainer, ANanDataLossStopsTheRun) {
  clhost::test::TempDir dir;
  // A NaN gradient at global step 5 makes the parameters NaN; step 6's data loss is NaN.
  expect_stops(tiny_config(dir,
                           "[[pipeline]]\nplugin = \"nan_penalty\"\npoison_gradient = true\n"
                           "at_step = 5\n"),
               dir.path("run"), {CLHOST_TEST_PLUGIN_DIR}, {},
               {"task 1 (task0) step 7", "the data loss is nan"});
}

TEST(Trainer, ACnnTrainsUnderTheCountingAllocator) {
  // Convolution kernels allocate scratch through raw_allocate(), which the counting allocator
  // must support.
  clhost::test::TempDir dir;
  const auto summary = run(tiny_config(dir), dir.path("run"), {"model.kind=\"cnn\""});
  EXPECT_GT(summary.metrics.average_accuracy, 0.5);
}

}  // namespace
