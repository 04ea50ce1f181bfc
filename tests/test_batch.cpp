// Batch policies on scripted memory readings, and real out-of-memory recovery under a budget.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <tuple>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/plugin_loader.hpp"
#include "clhost/runner.hpp"
#include "run_helpers.hpp"
#include "test_helpers.hpp"

namespace {

const void* no_service(const clhost_host_t*, const char*) {
  return nullptr;
}

// A batch-policy plug-in loaded through the ABI, fed scripted requests.
class Policy {
 public:
  Policy(const std::string& id, std::vector<clhost::PluginSetting> settings = {})
      : loader_({CLHOST_PLUGIN_DIR}) {
    plugin_ = &loader_.load(id);
    config_ = clhost::resolve_plugin_config(*plugin_,
                                            clhost::PluginSpec{id, std::move(settings), "t"}, 0);
    host_ = clhost_host_t{sizeof(clhost_host_t), {1, 0}, "test", &no_service, nullptr};
    clhost_error_t error{};
    EXPECT_EQ(plugin_->entry->create(&host_, config_.abi(), &instance_, &error), CLHOST_STATUS_OK);
  }
  ~Policy() { plugin_->entry->destroy(instance_); }
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;
  Policy(Policy&&) = delete;
  Policy& operator=(Policy&&) = delete;

  int64_t choose(uint32_t task, int64_t configured, int64_t current, bool oom, int64_t budget,
                 int64_t peak) {
    const clhost_batch_request_t request{
        sizeof(clhost_batch_request_t), task, configured, current, oom ? 1 : 0, budget, peak};
    int64_t chosen = -1;
    clhost_error_t error{};
    const auto* table = static_cast<const clhost_batch_policy_v1_t*>(plugin_->interface);
    EXPECT_EQ(table->choose_micro_batch(instance_, &request, &chosen, &error), CLHOST_STATUS_OK);
    last_reason_ = table->last_reason(instance_);
    return chosen;
  }
  [[nodiscard]] const std::string& reason() const { return last_reason_; }

 private:
  clhost::PluginLoader loader_;
  const clhost::LoadedPlugin* plugin_ = nullptr;
  clhost::ResolvedPluginConfig config_;
  clhost_host_t host_{};
  void* instance_ = nullptr;
  std::string last_reason_;
};

// Simulated machine: a step at micro-batch m needs base + per_sample * m bytes.
struct Machine {
  int64_t base;
  int64_t per_sample;
  int64_t budget;
  [[nodiscard]] bool fits(int64_t micro) const { return base + per_sample * micro <= budget; }
  [[nodiscard]] int64_t peak(int64_t micro) const { return base + per_sample * micro; }
  [[nodiscard]] int64_t largest_fit(int64_t configured) const {
    return std::min(configured, (budget - base) / per_sample);
  }
};

// Drives a policy until it stops changing; returns {settled size, trials}.
std::pair<int64_t, int> settle(Policy& policy, const Machine& machine, int64_t configured) {
  int64_t micro = policy.choose(0, configured, 0, false, machine.budget, -1);
  int trials = 0;
  for (int step = 0; step < 100; ++step) {
    ++trials;
    const bool oom = !machine.fits(micro);
    const int64_t next =
        policy.choose(0, configured, micro, oom, machine.budget, oom ? -1 : machine.peak(micro));
    if (!oom && next == micro) return {micro, trials};
    micro = next;
  }
  return {micro, trials};
}

TEST(DynamicPolicy, FindsTheLargestFittingMicroBatchWithinTheTrialBound) {
  for (const Machine machine : {Machine{1000, 10, 1000 + 10 * 45}, Machine{500, 3, 500 + 3 * 100},
                                Machine{0, 1, 1 << 20}}) {
    Policy policy("dynamic", {{"margin", 0.0, "t"}, {"start", int64_t{1}, "t"}});
    const int64_t configured = 128;
    const auto [size, trials] = settle(policy, machine, configured);
    EXPECT_EQ(size, machine.largest_fit(configured)) << policy.reason();
    EXPECT_LE(trials, static_cast<int>(std::ceil(std::log2(configured / 1.0))) + 3);
  }
}

TEST(DynamicPolicy, StartsWithTheWholeBatchAndHalvesUntilItFits) {
  Policy policy("dynamic", {{"margin", 0.0, "t"}});
  const Machine machine{1000, 10, 1000 + 10 * 300};
  const auto [size, trials] = settle(policy, machine, 1024);
  EXPECT_EQ(size, 300);
  EXPECT_LE(trials, 10 + 3);
}

TEST(DynamicPolicy, ShrinksOnOutOfMemoryAndReprobesAtTaskBoundaries) {
  Policy policy("dynamic", {{"start", int64_t{1}, "t"}});
  EXPECT_EQ(policy.choose(0, 64, 0, false, -1, -1), 1);
  EXPECT_EQ(policy.choose(0, 64, 1, false, -1, 100), 2);
  EXPECT_EQ(policy.choose(0, 64, 2, false, -1, 100), 4);
  EXPECT_EQ(policy.choose(0, 64, 4, true, -1, -1), 3) << "between 2 (fit) and 4 (failed)";
  EXPECT_NE(policy.reason().find("out of memory"), std::string::npos);
  EXPECT_EQ(policy.choose(0, 64, 3, false, -1, 100), 3) << "settled";
  EXPECT_EQ(policy.choose(1, 32, 3, false, -1, 100), 3) << "new task starts from what fit";
  EXPECT_EQ(policy.choose(1, 32, 3, false, -1, 100), 6) << "and probes upwards again";
}

TEST(EstimatePolicy, FitsALineThroughTwoProbes) {
  Policy policy("estimate", {{"margin", 0.0, "t"}, {"probe", int64_t{8}, "t"}});
  const Machine machine{5000, 40, 5000 + 40 * 50};
  EXPECT_EQ(policy.choose(0, 128, 0, false, machine.budget, -1), 8);
  EXPECT_EQ(policy.choose(0, 128, 8, false, machine.budget, machine.peak(8)), 16);
  EXPECT_EQ(policy.choose(0, 128, 16, false, machine.budget, machine.peak(16)), 50);
  EXPECT_EQ(policy.choose(0, 128, 50, true, machine.budget, -1), 25) << "halves on out of memory";
  EXPECT_EQ(policy.choose(1, 40, 25, false, machine.budget, -1), 40)
      << "next task: the fitted line, clamped";
  Policy unbounded("estimate");
  EXPECT_EQ(unbounded.choose(0, 128, 0, false, -1, -1), 128) << "no budget: the whole batch";
}

TEST(FixedPolicy, NeverChanges) {
  Policy policy("fixed", {{"micro_batch", int64_t{16}, "t"}});
  EXPECT_EQ(policy.choose(0, 128, 0, false, -1, -1), 16);
  EXPECT_EQ(policy.choose(0, 128, 16, true, -1, -1), 16);
  EXPECT_EQ(policy.choose(0, 8, 16, false, -1, -1), 8) << "never above the configured batch";
}

TEST(MemoryBudget, ParsesSizes) {
  EXPECT_EQ(clhost::memory::parse_bytes("1.5GiB"), 1610612736);
  EXPECT_EQ(clhost::memory::parse_bytes("512 MiB"), 536870912);
  EXPECT_EQ(clhost::memory::parse_bytes("2GB"), 2000000000);
  EXPECT_EQ(clhost::memory::parse_bytes("4096"), 4096);
  EXPECT_THROW((void)clhost::memory::parse_bytes("lots"), std::invalid_argument);
  EXPECT_THROW((void)clhost::memory::parse_bytes("3 parsecs"), std::invalid_argument);
  EXPECT_THROW((void)clhost::memory::parse_bytes("-1GiB"), std::invalid_argument);
}

// --- Real out-of-memory under a budget -----------------------------------------------------

std::string wide_config(const clhost::test::TempDir& dir, const std::string& name,
                        const std::string& pipeline) {
  return dir.file(
      name,
      "[run]\nseed = 3\nthreads = 1\nlog_every = 1\n"
      "[data]\nnum_tasks = 2\ntrain_samples_per_task = 4096\ntest_samples_per_task = 100\n"
      "[model]\nhidden = [64]\n"
      "[train]\nbatch_size = 2048\niterations = 4\neval_batch_size = 20\n" +
          pipeline);
}

nlohmann::json run(const std::string& config_path, const std::string& run_dir,
                   const std::vector<std::string>& set = {}) {
  (void)clhost::test::run_quietly(config_path, run_dir, set);
  return nlohmann::json::parse(clhost::test::read_file(run_dir + "/results.json"));
}

// Largest step_tensor_peak_bytes in metrics.csv, and the per-step losses.
std::pair<int64_t, std::vector<double>> steps_of(const std::string& run_dir) {
  std::istringstream in(clhost::test::read_file(run_dir + "/metrics.csv"));
  std::string line;
  std::getline(in, line);
  int64_t peak = 0;
  std::vector<double> losses;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::istringstream row(line);
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    if (cells.size() < 9 || cells[3].empty()) continue;
    losses.push_back(std::stod(cells[3]));
    peak = std::max<int64_t>(peak, std::stoll(cells[8]));
  }
  return {peak, losses};
}

// Runs `pipeline` (prepended to a batch policy) with the whole batch and with micro-batches of 16:
// their step peaks and the whole batch's per-step losses, for a budget between the two.
struct BudgetProbe {
  int64_t full_peak = 0;
  int64_t small_peak = 0;
  std::vector<double> full_losses;
  [[nodiscard]] int64_t midpoint() const { return (full_peak + small_peak) / 2; }
};

BudgetProbe probe_budget(const clhost::test::TempDir& dir, const std::string& pipeline) {
  (void)run(wide_config(dir, "full.toml", pipeline + "[[pipeline]]\nplugin = \"fixed\"\n"),
            dir.path("full"));
  (void)run(wide_config(dir, "small.toml",
                        pipeline + "[[pipeline]]\nplugin = \"fixed\"\nmicro_batch = 16\n"),
            dir.path("small"));
  BudgetProbe probe;
  std::tie(probe.full_peak, probe.full_losses) = steps_of(dir.path("full"));
  probe.small_peak = steps_of(dir.path("small")).first;
  return probe;
}

void expect_same_losses(const std::vector<double>& got, const std::vector<double>& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(got[i], expected[i], 1e-4 * std::abs(expected[i]) + 1e-6) << "step " << i;
  }
}

TEST(OutOfMemory, RecoveredWithoutLosingOrRepeatingASample) {
  clhost::test::TempDir dir;
  const BudgetProbe probe = probe_budget(dir, "");
  ASSERT_GT(probe.full_peak, probe.small_peak) << "a smaller micro-batch must need less memory";
  const int64_t budget = probe.midpoint();

  const auto results =
      run(wide_config(dir, "dynamic.toml", "[[pipeline]]\nplugin = \"dynamic\"\nstart = 2048\n"),
          dir.path("dynamic"), {"run.memory_budget=" + std::to_string(budget)});
  const auto& memory = results["memory"];
  EXPECT_GE(memory["out_of_memory_retries"].get<int64_t>(), 1);
  const int64_t steps = results["optimizer_steps"];
  // Every sample of every step reached the optimizer exactly once; failed attempts were redone.
  EXPECT_EQ(memory["samples_in_optimizer_steps"].get<int64_t>(), steps * 2048);
  EXPECT_GT(memory["samples_redone_after_out_of_memory"].get<int64_t>(), 0);
  // A failed attempt fed at least its first micro-batch to a forward pass: retries are counted.
  EXPECT_GT(memory["samples_processed"].get<int64_t>(), steps * 2048);
  EXPECT_LE(memory["samples_processed"].get<int64_t>() - steps * 2048,
            memory["samples_redone_after_out_of_memory"].get<int64_t>());
  const auto [dynamic_peak, dynamic_losses] = steps_of(dir.path("dynamic"));
  EXPECT_LE(dynamic_peak, budget);
  expect_same_losses(dynamic_losses, probe.full_losses);
  EXPECT_FALSE(memory["batch_size_changes"].empty());
  const auto full =
      nlohmann::json::parse(clhost::test::read_file(dir.path("full") + "/results.json"));
  for (size_t i = 0; i < 2; ++i) {
    for (size_t j = 0; j < 2; ++j) {
      EXPECT_NEAR(results["accuracy_matrix"][i][j].get<double>(),
                  full["accuracy_matrix"][i][j].get<double>(), 0.011);
    }
  }
}

// Replay under a budget: the replayed samples join every step of task 2; an out-of-memory retry
// redoes the same samples (own and replayed) in smaller micro-batches, so the losses are the
// unconstrained run's and every sample reaches the optimizer once.
TEST(OutOfMemory, ReplayedSamplesAreRedoneLikeTheStepsOwn) {
  clhost::test::TempDir dir;
  const std::string replay =
      "[[pipeline]]\nplugin = \"replay\"\ncapacity = 600\nbatch_size = 512\n";
  const BudgetProbe probe = probe_budget(dir, replay);
  const int64_t budget = probe.midpoint();
  const auto results =
      run(wide_config(dir, "dynamic.toml",
                      replay + "[[pipeline]]\nplugin = \"dynamic\"\nstart = 2048\n"),
          dir.path("dynamic"), {"run.memory_budget=" + std::to_string(budget)});
  const auto& memory = results["memory"];
  EXPECT_GE(memory["out_of_memory_retries"].get<int64_t>(), 1);
  // Task 1: 4 steps of 2048; task 2: 4 steps of 2048 own and 512 replayed samples.
  EXPECT_EQ(memory["samples_in_optimizer_steps"].get<int64_t>(), 4 * 2048 + 4 * (2048 + 512));
  EXPECT_EQ(results["plugins"][0]["held_by_host"]["replay_samples"], 600);
  const auto [dynamic_peak, dynamic_losses] = steps_of(dir.path("dynamic"));
  EXPECT_LE(dynamic_peak, budget);
  expect_same_losses(dynamic_losses, probe.full_losses);
}

TEST(OutOfMemory, WithoutAPolicyOrRoomForOneSampleTheRunStopsCleanly) {
  clhost::test::TempDir dir;
  (void)run(wide_config(dir, "full.toml", "[[pipeline]]\nplugin = \"fixed\"\n"), dir.path("full"));
  (void)run(wide_config(dir, "small.toml", "[[pipeline]]\nplugin = \"fixed\"\nmicro_batch = 16\n"),
            dir.path("small"));
  const auto [full_peak, losses] = steps_of(dir.path("full"));
  const auto [small_peak, small_losses] = steps_of(dir.path("small"));
  const std::string between = "run.memory_budget=" + std::to_string((full_peak + small_peak) / 2);
  try {
    (void)run(wide_config(dir, "none.toml", ""), dir.path("nopolicy"), {between});
    FAIL();
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("add a batch policy (--dynamic-batch-size)"),
              std::string::npos)
        << e.what();
  }
  // It stopped inside training: the directory says so, and has no results.
  const auto status =
      nlohmann::json::parse(clhost::test::read_file(dir.path("nopolicy") + "/status.json"));
  EXPECT_EQ(status["status"], "failed");
  EXPECT_NE(status["error"].get<std::string>().find("out of memory at micro-batch 2048"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.path("nopolicy") + "/results.json"));
  // A budget below what the model, its gradients, Adam's moments and the data will hold: the
  // memory plan refuses it before training.
  try {
    (void)run(wide_config(dir, "tiny.toml", "[[pipeline]]\nplugin = \"dynamic\"\n"),
              dir.path("tiny"), {"run.memory_budget=" + std::to_string(full_peak / 4)});
    FAIL();
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("memory plan: this run needs"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("tiny"))) << "refused before anything was written";
  EXPECT_EQ(clhost::memory::budget(), -1) << "the budget ends with its run";
}

}  // namespace
