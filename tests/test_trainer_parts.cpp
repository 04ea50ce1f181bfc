// The trainer's parts, each on its own: TrainerState's one field list round-trips trainer.json;
// the micro-batcher retries a step that runs out of memory with what the real batch policy
// chooses; the plug-in set calls regularizer hooks in pipeline order, one instance after another.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "event_bus.hpp"
#include "host_services.hpp"
#include "metrics_log.hpp"
#include "micro_batcher.hpp"
#include "plugin_set.hpp"
#include "test_helpers.hpp"
#include "trainer_state.hpp"

namespace {

using nlohmann::json;

TEST(TrainerStateFields, EveryFieldRoundTripsThroughTrainerJson) {
  clhost::TrainerState state;
  state.global_step = 11;
  state.optimizer_steps = 10;
  state.micro_batch = 32;
  state.first_policy_call = false;
  state.out_of_memory_retries = 3;
  state.samples_processed = 700;
  state.samples_redone = 128;
  state.samples_in_steps = 640;
  state.tensor_peak_bytes = 12345;
  state.batch_changes = json::array({json{{"task", 0}, {"to", 32}}});
  state.task_reports = json::array({json{{"name", "task0"}}});
  state.accuracy_matrix = {{0.5, 0.25}};
  state.random_init_accuracy = {0.1, 0.2};
  state.validation_matrix = {{0.75, 0.5}};
  state.random_init_validation = {0.125, 0.25};
  state.wall_seconds = 4.5;
  state.checkpoint_seconds = {0.01, 0.02};
  state.resumes = json::array({json{{"task", 1}}});
  json written;
  state.write(written);
  clhost::TrainerState read;
  read.read(written);
  json again;
  read.write(again);
  EXPECT_EQ(again, written);
  // Every field differs from its default, so a field missing from the list would show here.
  json defaults;
  clhost::TrainerState().write(defaults);
  size_t fields = 0;
  clhost::TrainerState::fields(state, [&](const char* name, const auto& /*value*/) {
    ++fields;
    EXPECT_NE(written.at(name), defaults.at(name)) << name;
  });
  EXPECT_EQ(fields, written.size());
  // A trainer.json without a field is refused, naming it.
  written.erase("samples_redone");
  try {
    read.read(written);
    FAIL() << "read a trainer.json without samples_redone";
  } catch (const json::exception& e) {
    EXPECT_NE(std::string(e.what()).find("samples_redone"), std::string::npos) << e.what();
  }
}

// A run's plug-ins, created for real from a config's [[pipeline]] (no data, no model).
struct PluginsUnderTest {
  clhost::test::TempDir dir;
  clhost::RunConfig config;
  clhost::PluginLoader loader{{CLHOST_TEST_PLUGIN_DIR, CLHOST_PLUGIN_DIR}};
  clhost::LoadedPipeline pipeline;
  clhost::Runtime runtime;
  std::unique_ptr<clhost::PluginSet> plugins;

  explicit PluginsUnderTest(const std::string& pipeline_toml) {
    config = clhost::load_config(dir.file("c.toml", pipeline_toml));
    pipeline = clhost::load_pipeline(loader, config);
    plugins = std::make_unique<clhost::PluginSet>(pipeline, config, runtime, true);
  }
};

// Throws LibTorch-style out-of-memory errors while the micro-batch is above `fits`.
clhost::MicroBatcher::Attempt fake_attempt(int64_t batch, int64_t fits, int* zeroed) {
  return {[zeroed] { ++*zeroed; },
          [batch, fits](int64_t micro_batch, int64_t* samples_processed) {
            *samples_processed += std::min(micro_batch, batch);  // the first forward starts
            if (micro_batch > fits) throw std::runtime_error("CPU: out of memory (fake)");
            *samples_processed += batch - std::min(micro_batch, batch);
            return 0.25;
          },
          {},
          0};
}

TEST(MicroBatcherRetries, ShrinksWithThePolicyUntilTheStepFitsAndCountsEverySample) {
  PluginsUnderTest run("[[pipeline]]\nplugin = \"dynamic\"\n");
  clhost::EventBus events(*run.plugins, run.runtime, run.dir.path(),
                          std::chrono::steady_clock::now());
  clhost::EventJournal journal(run.dir.path("events.jsonl"));
  clhost::MetricsLog log(run.dir.path("metrics.csv"), -1, true, journal);
  clhost::TrainerState state;
  clhost::MicroBatcher batcher(run.plugins->batch_policy(), state, events, log, -1);
  log.begin_task(0);
  batcher.begin_task(0, "task0", 64, false);
  EXPECT_EQ(state.micro_batch, 64);
  int zeroed = 0;
  int64_t task_ooms = 0;
  const auto gradients = batcher.gradients(fake_attempt(64, 16, &zeroed), 64, 0, task_ooms);
  EXPECT_EQ(gradients.loss, 0.25);
  EXPECT_EQ(state.micro_batch, 16) << "64 and 32 ran out of memory; the policy halves";
  EXPECT_EQ(task_ooms, 2);
  EXPECT_EQ(state.out_of_memory_retries, 2);
  EXPECT_EQ(state.samples_redone, 128);
  EXPECT_EQ(state.samples_in_steps, 64);
  EXPECT_EQ(state.samples_processed, 64 + 32 + 64);
  EXPECT_EQ(zeroed, 3 + 2) << "before each attempt, and after each failed one";
  ASSERT_EQ(state.batch_changes.size(), 2U);
  EXPECT_EQ(state.batch_changes[1]["to"], 16);
  EXPECT_EQ(state.batch_changes[1]["step"], 1);
  log.commit();
  const std::string csv = clhost::test::read_file(run.dir.path("metrics.csv"));
  EXPECT_NE(csv.find("0,1,1,,,64,64,,,\"out of memory at micro-batch 64\""), std::string::npos)
      << csv;
  EXPECT_NE(csv.find("0,1,1,,,64,16,,,\"micro-batch 32 -> 16"), std::string::npos) << csv;
}

TEST(MicroBatcherRetries, WithoutAPolicyOrBelowOneSampleTheStepFailsWithWhatToDo) {
  PluginsUnderTest run("");
  clhost::EventBus events(*run.plugins, run.runtime, run.dir.path(),
                          std::chrono::steady_clock::now());
  clhost::EventJournal journal(run.dir.path("events.jsonl"));
  clhost::MetricsLog log(run.dir.path("metrics.csv"), -1, true, journal);
  clhost::TrainerState state;
  clhost::MicroBatcher batcher(nullptr, state, events, log, -1);
  batcher.begin_task(0, "task0", 8, false);
  int zeroed = 0;
  int64_t task_ooms = 0;
  try {
    (void)batcher.gradients(fake_attempt(8, 4, &zeroed), 8, 0, task_ooms);
    FAIL() << "a step that does not fit succeeded";
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("task task0 step 1: out of memory at micro-batch 8"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("add a batch policy"), std::string::npos) << e.what();
  }
  state.micro_batch = 1;
  try {
    (void)batcher.gradients(fake_attempt(8, 0, &zeroed), 8, 0, task_ooms);
    FAIL() << "a step where no sample fits succeeded";
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("even one sample does not fit"), std::string::npos);
  }
  // Anything else than out-of-memory is not retried.
  const clhost::MicroBatcher::Attempt broken{
      [] {}, [](int64_t, int64_t*) -> double { throw std::logic_error("shape mismatch"); }, {}, 0};
  EXPECT_THROW((void)batcher.gradients(broken, 8, 0, task_ooms), std::logic_error);
}

TEST(PluginSetDispatch, RegularizerHooksRunInPipelineOrderAndPenaltiesAdd) {
  PluginsUnderTest run(
      "[[pipeline]]\nplugin = \"call_recorder\"\ntag = \"a\"\npenalty = 1.5\n"
      "[[pipeline]]\nplugin = \"dynamic\"\n"
      "[[pipeline]]\nplugin = \"call_recorder\"\ntag = \"b\"\npenalty = 2.0\n");
  const std::string record = run.dir.path("record.txt");
  ::setenv("CLHOST_TEST_RECORD", record.c_str(), 1);
  const clhost_task_info_t task{sizeof(clhost_task_info_t), 0, 1, "task0", 10, 5};
  run.plugins->task_begin(task);
  std::string non_finite;
  const clhost_step_info_t step{sizeof(clhost_step_info_t), 0, 0, 0, 8, 0.5};
  EXPECT_EQ(run.plugins->after_backward(step, non_finite), 3.5);
  EXPECT_TRUE(non_finite.empty());
  run.plugins->task_end(task);
  ::unsetenv("CLHOST_TEST_RECORD");
  EXPECT_EQ(clhost::test::read_file(record),
            "a task_begin\nb task_begin\na after_backward\nb after_backward\na task_end\n"
            "b task_end\n");
  EXPECT_EQ(run.plugins->batch_policy(), &run.plugins->at(1));
}

TEST(PluginSetDispatch, TheFirstNonFinitePenaltyIsNamedAndLaterOnesStillRun) {
  PluginsUnderTest run(
      "[[pipeline]]\nplugin = \"call_recorder\"\ntag = \"a\"\ninfinite = true\n"
      "[[pipeline]]\nplugin = \"call_recorder\"\ntag = \"b\"\npenalty = 1.0\n");
  std::string non_finite;
  const clhost_step_info_t step{sizeof(clhost_step_info_t), 0, 3, 3, 8, 0.5};
  EXPECT_TRUE(std::isinf(run.plugins->after_backward(step, non_finite)));
  EXPECT_EQ(non_finite, "the penalty of plug-in 'call_recorder' is inf (data loss 0.500000)");
}

}  // namespace
