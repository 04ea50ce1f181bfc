// End to end: the real clhost binary on real Fashion-MNIST (the quick config).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "test_helpers.hpp"

namespace {

using Result = clhost::test::CommandResult;

Result clhost(const std::string& args) {
  return clhost::test::run_command(std::string(CLHOST_BINARY) + " " + args);
}

const std::string kQuick = std::string(CLHOST_SOURCE_DIR) + "/configs/quick.toml";

nlohmann::json results_of(const std::string& run_dir) {
  return nlohmann::json::parse(clhost::test::read_file(run_dir + "/results.json"));
}

TEST(CliEndToEnd, QuickRunWithTheCL2PluginWritesResults) {
  clhost::test::TempDir dir;
  const Result run = clhost("run --config " + kQuick + " --output " + dir.path("l2") + " --quiet");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("average accuracy"), std::string::npos) << run.output;
  const auto results = results_of(dir.path("l2"));
  EXPECT_EQ(results["accuracy_matrix"].size(), 5U);
  EXPECT_EQ(results["plugins"][0]["id"], "l2");
  EXPECT_EQ(results["plugins"][0]["kind"], "regularizer");
  EXPECT_NE(results["plugins"][0]["variant"].get<std::string>().find("0.5*lambda"),
            std::string::npos);
  EXPECT_TRUE(results["metrics"]["forgetting"].is_number());
  EXPECT_TRUE(std::filesystem::exists(dir.path("l2") + "/accuracy_matrix.csv"));
  EXPECT_FALSE(results.contains("validation")) << "without data.validation nothing is held out";
  EXPECT_EQ(results["tasks"][0]["train_samples"], 1000);
}

// --stop-after-task stops after a task's checkpoint (exit 0); --resume ends where the run that
// never stopped ends.
TEST(CliEndToEnd, StopAfterTaskThenResumeEqualsTheRunThatNeverStopped) {
  clhost::test::TempDir dir;
  const Result straight = clhost("run --config " + kQuick + " --output " + dir.path("straight") +
                                 " --quiet --set data.validation=0.1");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const Result stopped = clhost("run --config " + kQuick + " --output " + dir.path("halves") +
                                " --quiet --set data.validation=0.1 --stop-after-task 2");
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_NE(stopped.output.find("stopped after task 2 as asked"), std::string::npos)
      << stopped.output;
  const auto status =
      nlohmann::json::parse(clhost::test::read_file(dir.path("halves") + "/status.json"));
  EXPECT_EQ(status["status"], "interrupted");
  EXPECT_EQ(status["stopped_after_task"], 2);
  EXPECT_FALSE(std::filesystem::exists(dir.path("halves") + "/results.json"));
  const Result resumed = clhost("run --resume " + dir.path("halves") + " --quiet");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto a = results_of(dir.path("straight"));
  const auto b = results_of(dir.path("halves"));
  EXPECT_EQ(a["accuracy_matrix"], b["accuracy_matrix"]);
  EXPECT_EQ(a["validation"]["accuracy_matrix"], b["validation"]["accuracy_matrix"]);
  EXPECT_EQ(clhost("run --config " + kQuick + " --stop-after-task 0").exit_code, 2);
}

// data.validation: each task trains on the rest of its samples and is also scored on the held-out
// ones after every task, the test set untouched.
TEST(CliEndToEnd, ValidationSamplesAreHeldOutAndScoredAfterEveryTask) {
  clhost::test::TempDir dir;
  const Result run = clhost("run --config " + kQuick + " --output " + dir.path("v") +
                            " --quiet --set data.validation=200");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("  on validation    0."), std::string::npos) << run.output;
  const auto results = results_of(dir.path("v"));
  const auto& validation = results["validation"];
  EXPECT_EQ(validation["samples"], nlohmann::json::array({200, 200, 200, 200, 200}));
  ASSERT_EQ(validation["accuracy_matrix"].size(), 5U);
  EXPECT_EQ(validation["accuracy_matrix"][4].size(), 5U);
  EXPECT_EQ(validation["random_init_accuracy"].size(), 5U);
  ASSERT_EQ(validation["average_accuracy_seen"].size(), 5U);
  // Two-class tasks: a trained model is far above chance on held-out samples of its own task.
  EXPECT_GT(validation["accuracy_matrix"][0][0].get<double>(), 0.8);
  EXPECT_DOUBLE_EQ(validation["average_accuracy_seen"][0].get<double>(),
                   validation["accuracy_matrix"][0][0].get<double>());
  EXPECT_NEAR(validation["metrics"]["average_accuracy"].get<double>(),
              results["metrics"]["average_accuracy"].get<double>(), 0.1);
  for (const auto& task : results["tasks"]) {
    EXPECT_EQ(task["train_samples"], 800);
    EXPECT_EQ(task["validation_samples"], 200);
    EXPECT_EQ(task["test_samples"], 400);
  }
  EXPECT_TRUE(std::filesystem::exists(dir.path("v") + "/validation_accuracy_matrix.csv"));
  EXPECT_EQ(results["config"]["data"]["validation"], 200);
}

// Progress lines show a rate before the first logging window closes (slow steps, large
// run.log_every), not 0 samples/s.
TEST(CliEndToEnd, ProgressShowsARateBeforeTheFirstLogWindow) {
  clhost::test::TempDir dir;
  const Result run = clhost("run --config " + kQuick + " --output " + dir.path("rate") +
                            " --set run.log_every=1000 --set data.num_tasks=2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  size_t lines = 0;
  for (size_t at = run.output.find(" samples/s"); at != std::string::npos;
       at = run.output.find(" samples/s", at + 1)) {
    const size_t start = run.output.rfind(' ', at - 1) + 1;
    EXPECT_NE(run.output.substr(start, at - start), "0") << run.output;
    ++lines;
  }
  EXPECT_GT(lines, 0U) << run.output;
}

TEST(CliEndToEnd, L2ForgetsLessThanFineTuning) {
  clhost::test::TempDir dir;
  const Result plain =
      clhost("run --config " + kQuick + " --plugins '' --output " + dir.path("plain") + " -q");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const Result l2 = clhost("run --config " + kQuick + " --set pipeline.0.lambda=5 --output " +
                           dir.path("l2") + " -q");
  ASSERT_EQ(l2.exit_code, 0) << l2.output;
  const double plain_forgetting = results_of(dir.path("plain"))["metrics"]["forgetting"];
  const double l2_forgetting = results_of(dir.path("l2"))["metrics"]["forgetting"];
  EXPECT_TRUE(results_of(dir.path("plain"))["plugins"].empty());
  EXPECT_LT(l2_forgetting, plain_forgetting);
}

TEST(CliEndToEnd, ConfigErrorExitsTwoAndWritesNothing) {
  clhost::test::TempDir dir;
  const std::string bad = dir.file("bad.toml", "[train]\nlr = \"fast\"\n");
  const Result run = clhost("run --config " + bad + " --output " + dir.path("out"));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.output.find(bad + ":2:6: train.lr: expected a number"), std::string::npos)
      << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("out")));
  const Result validate = clhost("validate --config " + bad);
  EXPECT_EQ(validate.exit_code, 2);
}

// Runs that name their own directory (run.output_dir/<name>_<time>) and start in the same
// second each take a directory of their own; one that fails before writing leaves none behind.
TEST(CliEndToEnd, RunsStartedTogetherTakeDirectoriesOfTheirOwn) {
  clhost::test::TempDir dir;
  const std::string runs = dir.path("runs");
  const std::string one = std::string(CLHOST_BINARY) + " run --config " + kQuick +
                          " --quiet --set 'run.output_dir=\"" + runs + "\"'";
  const Result together =
      clhost::test::run_command(one + " & " + one + " & " + one + " & wait; echo all-ended");
  ASSERT_NE(together.output.find("all-ended"), std::string::npos) << together.output;
  std::vector<std::string> made;
  for (const auto& entry : std::filesystem::directory_iterator(runs)) {
    made.push_back(entry.path().string());
    EXPECT_TRUE(std::filesystem::exists(entry.path() / "results.json")) << entry.path() << "\n"
                                                                        << together.output;
  }
  EXPECT_EQ(made.size(), 3U) << together.output;

  const Result failed =
      clhost("run --config " + kQuick + " --set 'run.output_dir=\"" + dir.path("new/deeper") +
             "\"' --set 'data.dir=\"" + dir.path("no_data") + "\"'");
  EXPECT_NE(failed.exit_code, 0);
  EXPECT_NE(failed.output.find("not found"), std::string::npos) << failed.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("new"))) << "a failed start leaves nothing";
}

TEST(CliEndToEnd, UnknownPluginExitsThree) {
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + kQuick + " --plugins nonesuch --output " + dir.path("out"));
  EXPECT_EQ(run.exit_code, 3) << run.output;
  EXPECT_NE(run.output.find("plug-in 'nonesuch' not found"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("out")));
}

TEST(CliEndToEnd, ProfileMemoryWritesTheTimelineAndPrintsTheSummary) {
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + kQuick + " --profile-memory --output " + dir.path("run"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("[memory_profiler] info: peak RSS"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("peaks by phase: consolidate"), std::string::npos) << run.output;
  const auto report = results_of(dir.path("run"))["plugins"][1];
  ASSERT_EQ(report["id"], "memory_profiler");
  EXPECT_GT(report["report"]["peak"]["rss_bytes"].get<int64_t>(), 0);
  for (const char* kind : {"json", "png", "svg"}) {
    const std::string file = report["report"]["files"][kind];
    EXPECT_EQ(file.rfind(dir.path("run") + "/logs/memory_profile/memory_profile_", 0), 0U) << file;
    EXPECT_TRUE(std::filesystem::exists(file)) << file;
  }
}

TEST(CliEndToEnd, CuptiProfilerWithoutAGpuSaysSoOnceAndTheRunGoesOn) {
#ifndef CLHOST_HAVE_CUPTI
  GTEST_SKIP() << "CUPTI was not found at configure time; cupti_profiler is not built";
#endif
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + kQuick +
             " --plugins l2,cupti_profiler --profile-memory -q --output " + dir.path("run"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto report = results_of(dir.path("run"))["plugins"][1];
  ASSERT_EQ(report["id"], "cupti_profiler");
  if (report["report"]["enabled"].get<bool>()) GTEST_SKIP() << "this machine has a CUDA device";
  const std::string message = "no CUDA device: cupti_profiler disabled";
  const size_t first = run.output.find(message);
  EXPECT_NE(first, std::string::npos) << run.output;
  EXPECT_EQ(run.output.find(message, first + 1), std::string::npos) << "said more than once";
  EXPECT_FALSE(report["report"]["reason"].get<std::string>().empty());
  EXPECT_EQ(results_of(dir.path("run"))["accuracy_matrix"].size(), 5U);
}

TEST(CliEndToEnd, NewPluginRefusesBadRequestsAndWritesNothing) {
  clhost::test::TempDir dir;
  const Result kind = clhost("new-plugin --kind optimizer --name x --dir " + dir.path("a"));
  EXPECT_EQ(kind.exit_code, 2);
  EXPECT_NE(kind.output.find("regularizer, batch_policy or profiler"), std::string::npos)
      << kind.output;
  const Result name = clhost("new-plugin --kind profiler --name My-Plugin --dir " + dir.path("b"));
  EXPECT_EQ(name.exit_code, 2);
  EXPECT_NE(name.output.find("not a plug-in id"), std::string::npos) << name.output;
  const Result lang =
      clhost("new-plugin --kind profiler --name ok --lang rust --dir " + dir.path("c"));
  EXPECT_EQ(lang.exit_code, 2);
  for (const char* sub : {"a", "b", "c"}) EXPECT_FALSE(std::filesystem::exists(dir.path(sub)));
  const std::string taken = dir.path("taken");
  std::filesystem::create_directories(taken);
  (void)dir.file("taken/keep.txt", "mine");
  const Result busy = clhost("new-plugin --kind profiler --name ok --dir " + taken);
  EXPECT_EQ(busy.exit_code, 2);
  EXPECT_NE(busy.output.find("exists and is not empty"), std::string::npos) << busy.output;
  EXPECT_EQ(clhost::test::read_file(taken + "/keep.txt"), "mine");
  const Result made =
      clhost("new-plugin --kind batch_policy --name my_policy --lang c --dir " + dir.path("made"));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string source = clhost::test::read_file(dir.path("made") + "/my_policy.c");
  EXPECT_NE(source.find("\"my_policy\""), std::string::npos);
  EXPECT_EQ(source.find("my_plugin"), std::string::npos) << "placeholder left in the source";
}

TEST(CliEndToEnd, PluginsListAndShow) {
  const Result list = clhost("plugins list");
  EXPECT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("l2"), std::string::npos);
  EXPECT_NE(list.output.find("regularizer"), std::string::npos);
  const Result show = clhost("plugins show l2");
  EXPECT_EQ(show.exit_code, 0) << show.output;
  EXPECT_NE(show.output.find("lambda"), std::string::npos);
  EXPECT_NE(show.output.find("[range 0 .."), std::string::npos) << show.output;
  EXPECT_NE(show.output.find("resumable    yes"), std::string::npos) << show.output;
  const Result old = clhost(std::string("plugins show abi_1_2_regularizer --plugin-path ") +
                            CLHOST_TEST_PLUGIN_DIR);
  EXPECT_EQ(old.exit_code, 0) << old.output;
  EXPECT_NE(old.output.find("resumable    no"), std::string::npos) << old.output;
}

TEST(CliEndToEnd, VersionAndHelp) {
  EXPECT_NE(clhost("--version").output.find("plug-in ABI 1.9"), std::string::npos);
  const Result help = clhost("run --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--plugin-path"), std::string::npos);
  EXPECT_EQ(clhost("frobnicate").exit_code, 2);
}

}  // namespace

namespace {

TEST(CliEndToEndEwc, QuickRunStoresTheFisherAndForgetsLessThanFineTuning) {
  clhost::test::TempDir dir;
  const Result plain =
      clhost("run --config " + kQuick + " --plugins '' --output " + dir.path("plain") + " -q");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const Result ewc = clhost("run --config " + kQuick +
                            " --plugins ewc --use-memory-efficient --output " + dir.path("ewc"));
  ASSERT_EQ(ewc.exit_code, 0) << ewc.output;
  // The plug-in numbers tasks as the host does on the console: from 1, out of the count.
  EXPECT_NE(ewc.output.find("task 1/5: Fisher consolidated"), std::string::npos) << ewc.output;
  EXPECT_NE(ewc.output.find("task 5/5: Fisher consolidated"), std::string::npos) << ewc.output;
  const auto results = results_of(dir.path("ewc"));
  EXPECT_EQ(results["plugins"][0]["id"], "ewc");
  const std::string variant = results["plugins"][0]["variant"];
  EXPECT_NE(variant.find("0.5*lambda"), std::string::npos) << variant;
  EXPECT_NE(variant.find("exact per-sample"), std::string::npos) << variant;
  EXPECT_NE(variant.find("4-bit Fisher"), std::string::npos) << variant;
  EXPECT_LT(results["metrics"]["forgetting"].get<double>(),
            results_of(dir.path("plain"))["metrics"]["forgetting"].get<double>());

  const Result inspect = clhost("fisher inspect " + dir.path("ewc") + "/fisher.h5");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  for (const char* part :
       {"group task_0", "group task_4", "fc1.weight", "[100,784]", "blosc-zstd", "bf16"}) {
    EXPECT_NE(inspect.output.find(part), std::string::npos) << part << " in " << inspect.output;
  }
  EXPECT_EQ(clhost("fisher inspect " + dir.path("nothing.h5")).exit_code, 1);
}

TEST(CliEndToEndEwc, MemoryPlanMatchesTheMeasuredState) {
  clhost::test::TempDir dir;
  for (const std::string mode : {"separate", "efficient"}) {
    const std::string set = mode == "separate"
                                ? " --set fisher_computation.use_memory_efficient=false"
                                : " --set fisher_computation.use_memory_efficient=true";
    const Result run = clhost("run --config " + kQuick + " --plugins ewc" + set + " --output " +
                              dir.path(mode) + " -q");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto report = results_of(dir.path(mode))["plugins"][0]["report"];
    if (report["state_bytes_measured"].is_null()) {
      GTEST_SKIP() << "no glibc malloc counters in this build (a sanitizer's allocator)";
    }
    const double measured = report["state_bytes_measured"];
    const int64_t parameters = report["parameters"];
    const Result plan = clhost("memory-plan --params " + std::to_string(parameters) + " --tasks 5");
    ASSERT_EQ(plan.exit_code, 0) << plan.output;
    // The plan prints bytes/param per mode; pick this mode's line.
    const std::string marker = mode == "separate" ? "separate, fp32" : "int8 anchor (default)";
    const size_t line = plan.output.find(marker);
    ASSERT_NE(line, std::string::npos) << plan.output;
    const std::string text = plan.output.substr(line, plan.output.find('\n', line) - line);
    const double planned_per_param = std::stod(text.substr(text.find_last_of(' ') + 1));
    const double measured_per_param = measured / static_cast<double>(parameters);
    EXPECT_NEAR(measured_per_param, planned_per_param, 0.05 * planned_per_param) << text;
  }
}

// The plan of a config, printed by memory-plan and recorded by the run, against what the run
// measured: parameters exactly, the EWC state within 5%.
TEST(CliEndToEndEwc, AConfigsMemoryPlanMatchesItsRun) {
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + kQuick + " --plugins ewc,l2 --output " + dir.path("run") + " -q");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto results = results_of(dir.path("run"));
  const auto& plan = results["memory_plan"];
  const int64_t parameters = results["model"]["parameters"];
  EXPECT_EQ(plan["parameters"], parameters);
  EXPECT_EQ(plan["weight_bytes"], 4 * parameters);
  EXPECT_EQ(plan["optimizer_bytes"], results["config"]["train"]["optimizer"] == "adam"
                                         ? 8 * parameters
                                         : plan["optimizer_bytes"].get<int64_t>());
  EXPECT_EQ(plan["data_bytes"], results["scenario"]["resident_data_bytes"]);
  ASSERT_EQ(plan["plugins"].size(), 2U);
  const double planned_state = plan["plugins"][0]["state_bytes"];
  // null in a sanitizer build (no glibc malloc counters to measure with).
  const auto& measured_state = results["plugins"][0]["report"]["state_bytes_measured"];
  if (!measured_state.is_null()) {
    EXPECT_NEAR(measured_state.get<double>(), planned_state, 0.05 * planned_state);
  }
  EXPECT_EQ(plan["plugins"][1]["state_bytes"], 4 * parameters);  // l2: one fp32 anchor
  EXPECT_TRUE(plan["complete"]);
  // The activations, measured before the run on a probe model, against the run: a training
  // step's peak above the tensors held between steps (weights, gradients, optimizer state, data),
  // and the Fisher pass's peak above what was live when it began.
  EXPECT_TRUE(plan["activations_planned"]);
  EXPECT_EQ(plan["fisher_samples_per_pass"], 256);  // ewc: fisher_batch_size, all samples
  const double held = plan["weight_bytes"].get<double>() + plan["gradient_bytes"].get<double>() +
                      plan["optimizer_bytes"].get<double>() + plan["data_bytes"].get<double>();
  double step_peak = 0.0;
  std::ifstream metrics(dir.path("run") + "/metrics.csv");
  std::string line;
  std::getline(metrics, line);
  ASSERT_NE(line.find(",step_tensor_peak_bytes,"), std::string::npos) << line;
  while (std::getline(metrics, line)) {
    std::vector<std::string> fields;
    std::stringstream row(line);
    for (std::string field; std::getline(row, field, ',');) fields.push_back(field);
    if (fields.size() > 8 && !fields[8].empty())
      step_peak = std::max(step_peak, std::stod(fields[8]));
  }
  const double planned_step = plan["train_activation_bytes"];
  EXPECT_NEAR(step_peak - held, planned_step, 0.05 * planned_step);
  const double planned_pass = plan["fisher_pass_bytes"];
  EXPECT_GT(planned_pass, 8.0 * static_cast<double>(parameters)) << "activations included";
  EXPECT_NEAR(results["memory"]["fisher_pass_peak_bytes"].get<double>(), planned_pass,
              0.05 * planned_pass);
  const Result printed = clhost("memory-plan --config " + kQuick + " --plugins ewc,l2");
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  for (const std::string part :
       {"weights (fp32)", "ewc state after", "l2 state after",
        "training step activations (64 samples)", "Fisher pass (block", "= peak"}) {
    EXPECT_NE(printed.output.find(part), std::string::npos) << part << " in " << printed.output;
  }
  EXPECT_NE(printed.output.find(std::to_string(parameters) + " parameters"), std::string::npos);
  EXPECT_EQ(clhost("memory-plan --config " + kQuick + " --tasks 3").exit_code, 2);
}

// lowrank_fisher plans an upper bound on its rank; with the default byte cap that bound is the
// rank it keeps, so the plan is its state exactly.
TEST(CliEndToEndEwc, TheLowRankPlanIsItsStateWhenTheByteCapSetsTheRank) {
  clhost::test::TempDir dir;
  const Result run = clhost("run --config " + kQuick + " --plugins lowrank_fisher --output " +
                            dir.path("run") + " -q");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto results = results_of(dir.path("run"));
  EXPECT_EQ(results["plugins"][0]["report"]["rank_limited_by"], "max_bytes_per_parameter");
  EXPECT_EQ(results["memory_plan"]["plugins"][0]["state_bytes"],
            results["plugins"][0]["report"]["state_bytes"]);
  EXPECT_GT(results["memory_plan"]["plugins"][0]["consolidation_bytes"].get<int64_t>(), 0);
}

// Separate EWC's state grows by 8 bytes/parameter per task; a budget that holds the
// memory-efficient state for every task but not the separate one refuses the run before it
// trains, with the parts and the way out, and leaves no run directory.
TEST(CliEndToEndEwc, ARunWhosePlanDoesNotFitIsRefusedBeforeTraining) {
  clhost::test::TempDir dir;
  const std::string separate = " --plugins ewc --set fisher_computation.use_memory_efficient=false";
  const Result plan = clhost("memory-plan --config " + kQuick + separate);
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  const auto results_plan = [&](const std::string& set) {
    const Result run = clhost("run --config " + kQuick + set + " --output " + dir.path("probe") +
                              " -q --set train.iterations=1");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    auto out = results_of(dir.path("probe"))["memory_plan"];
    std::filesystem::remove_all(dir.path("probe"));
    return out;
  };
  // Under a budget the run is refused when even one sample per step and per Fisher pass (the
  // least out-of-memory recovery gets to) does not fit.
  const int64_t separate_peak = results_plan(separate)["least_peak_bytes"];
  const int64_t efficient_peak = results_plan(
      " --plugins ewc --set fisher_computation.use_memory_efficient=true")["least_peak_bytes"];
  ASSERT_LT(efficient_peak, separate_peak);
  const int64_t budget = (efficient_peak + separate_peak) / 2;
  const Result refused = clhost("run --config " + kQuick + separate + " --set run.memory_budget=" +
                                std::to_string(budget) + " --output " + dir.path("refused"));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  for (const std::string part : {"memory plan: this run needs", "run.memory_budget",
                                 "ewc state after", "use_memory_efficient = true"}) {
    EXPECT_NE(refused.output.find(part), std::string::npos) << part << " in " << refused.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("refused")));
  // validate checks the same plan.
  const Result validate = clhost("validate --config " + kQuick + separate +
                                 " --set run.memory_budget=" + std::to_string(budget));
  EXPECT_EQ(validate.exit_code, 1) << validate.output;
  EXPECT_NE(validate.output.find("memory plan: this run needs"), std::string::npos)
      << validate.output;
  const Result fits = clhost("validate --config " + kQuick + separate);
  EXPECT_EQ(fits.exit_code, 0) << fits.output;
  EXPECT_NE(fits.output.find("its memory plan fits"), std::string::npos) << fits.output;
}

TEST(CliEndToEndEwc, MemoryPlanPrintsTheSeedsTable) {
  const Result plan = clhost("memory-plan --params 7e9 --tasks 5");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("56.00 GB"), std::string::npos) << plan.output;  // 8 B/param
  EXPECT_NE(plan.output.find("14.01 GB"), std::string::npos) << plan.output;  // ~2 B/param
  EXPECT_NE(plan.output.find("21.01 GB"), std::string::npos) << plan.output;  // ~3 B/param
  EXPECT_EQ(clhost("memory-plan --params -5").exit_code, 2);
}

// A config's plan at 1e9 parameters: weights, gradients and Adam (16 B/param) grow with the model;
// the resident data and the replay buffer (a few MB here) stay as they are.
TEST(CliEndToEndEwc, AConfigsPlanAtMoreParametersScalesOnlyWhatGrowsWithTheModel) {
  const Result plan = clhost("memory-plan --config " + kQuick + " --plugins replay --params 1e9");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  for (const std::string part : {"= between tasks", "= peak"}) {
    const size_t at = plan.output.find(part);
    ASSERT_NE(at, std::string::npos) << plan.output;
    const std::string line = plan.output.substr(at, plan.output.find('\n', at) - at);
    const std::string scaled = line.substr(line.rfind("  ") + 2);
    ASSERT_EQ(scaled.substr(scaled.size() - 2), "GB") << line;
    const double gb = std::stod(scaled);
    EXPECT_GE(gb, 16.0) << line;
    EXPECT_LT(gb, 16.1) << line;
  }
}

}  // namespace

namespace {

TEST(CliEndToEndBatch, BudgetAndDynamicBatchSizeFromTheCommandLine) {
  clhost::test::TempDir dir;
  const Result plain =
      clhost("run --config " + kQuick + " --set data.train_samples_per_task=2000 --output " +
             dir.path("plain") + " -q");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const Result run = clhost("run --config " + kQuick +
                            " --memory-budget 40MiB --dynamic-batch-size --set "
                            "data.train_samples_per_task=2000 --output " +
                            dir.path("budget"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto results = results_of(dir.path("budget"));
  EXPECT_EQ(results["memory"]["budget_bytes"].get<int64_t>(), 40LL * 1024 * 1024);
  EXPECT_LE(results["memory"]["tensor_peak_bytes"].get<int64_t>(), 40LL * 1024 * 1024);
  EXPECT_EQ(results["plugins"].back()["id"], "dynamic");
  // Same samples, same effective batch: the same accuracies up to float summation order.
  const auto reference = results_of(dir.path("plain"));
  for (size_t i = 0; i < 5; ++i) {
    for (size_t j = 0; j < 5; ++j) {
      EXPECT_NEAR(results["accuracy_matrix"][i][j].get<double>(),
                  reference["accuracy_matrix"][i][j].get<double>(), 0.0051);
    }
  }
  EXPECT_EQ(
      clhost("run --config " + kQuick + " --memory-budget 12parsecs --output " + dir.path("bad"))
          .exit_code,
      2);
}

}  // namespace

namespace {

// The penalty column of metrics.csv, by task.
std::vector<std::vector<double>> penalties_by_task(const std::string& run_dir) {
  std::vector<std::vector<double>> out;
  std::istringstream csv(clhost::test::read_file(run_dir + "/metrics.csv"));
  std::string line;
  std::getline(csv, line);  // header: task,step,global_step,loss,penalty,...
  while (std::getline(csv, line)) {
    std::istringstream row(line);
    std::string task;
    std::string skip;
    std::string penalty;
    std::getline(row, task, ',');
    std::getline(row, skip, ',');
    std::getline(row, skip, ',');
    std::getline(row, skip, ',');
    std::getline(row, penalty, ',');
    const auto index = static_cast<size_t>(std::stoi(task));
    out.resize(std::max(out.size(), index + 1));
    out[index].push_back(std::stod(penalty));
  }
  return out;
}

// Class-incremental split Fashion-MNIST: fine-tuning predicts only the last task's classes;
// replaying a buffer of earlier samples keeps the others. The buffer is the host's, measured.
TEST(CliEndToEndOutputs, ReplayRemembersTheClassesFineTuningForgets) {
  clhost::test::TempDir dir;
  const std::string common =
      "run -q --config " + kQuick + " --set data.incremental='\"class\"' --output ";
  Result run = clhost(common + dir.path("none") + " --plugins ''");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  run = clhost(common + dir.path("replay") + " --plugins replay --set pipeline.0.capacity=500");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const double none = results_of(dir.path("none"))["metrics"]["average_accuracy"];
  const auto replay = results_of(dir.path("replay"));
  EXPECT_GT(replay["metrics"]["average_accuracy"].get<double>(), none + 0.2)
      << "fine-tuning " << none;
  const auto& held = replay["plugins"][0]["held_by_host"];
  EXPECT_EQ(held["replay_samples"], 500);
  // 784 float32 inputs, an int64 label and an int32 task per sample.
  EXPECT_EQ(held["replay_bytes"], 500 * (784 * 4 + 8 + 4));
  EXPECT_EQ(replay["plugins"][0]["report"]["samples_seen"], 5000);
  // Planned before the run (ABI 1.9): the buffer the host filled, and a step of the batch plus
  // as many replayed samples.
  const auto& plan = replay["memory_plan"];
  EXPECT_EQ(plan["plugins"][0]["state_bytes"], held["replay_bytes"]);
  EXPECT_EQ(plan["plugins"][0]["replay_capacity"], 500);
  const int64_t batch = replay["config"]["train"]["batch_size"];
  EXPECT_EQ(plan["replay_samples_per_step"], batch);
  EXPECT_EQ(plan["train_samples"], 2 * batch);
  EXPECT_TRUE(plan["replay_not_said"].empty());
}

// LwF's distillation and MAS's penalty are zero in the first task and present in the second; LwF's
// snapshot is one copy of the parameters.
TEST(CliEndToEndOutputs, LwfAndMasAddTheirTermsFromTheSecondTask) {
  clhost::test::TempDir dir;
  const Result run = clhost("run -q --config " + kQuick + " --plugins lwf,mas --output " +
                            dir.path("run") + " --set data.num_tasks=2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto penalties = penalties_by_task(dir.path("run"));
  ASSERT_EQ(penalties.size(), 2U);
  for (const double penalty : penalties[0]) EXPECT_EQ(penalty, 0.0);
  for (const double penalty : penalties[1]) EXPECT_GT(penalty, 0.0) << "task 2";
  const auto results = results_of(dir.path("run"));
  EXPECT_EQ(results["plugins"][0]["held_by_host"]["snapshot_bytes"],
            4 * results["model"]["parameters"].get<int64_t>());
  EXPECT_EQ(results["plugins"][1]["report"]["state_bytes"],
            8 * results["model"]["parameters"].get<int64_t>());
}

}  // namespace
