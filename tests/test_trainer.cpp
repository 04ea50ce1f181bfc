// The trainer: determinism, micro-batch accumulation, and the regularizer hook.
#include <gtest/gtest.h>

#include <filesystem>

#include "clhost/config.hpp"
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

}  // namespace
