// ABI compatibility kept by tests: plug-ins built against the previous minors (the frozen 1.0 to
// 1.7 headers in tests/abi/) load and run; struct-size growth is handled in both
// directions; a plug-in directory full of junk is listed, entry by entry, without crashing.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include <clhost/clhost_plugin.h>

#include "clhost/config.hpp"
#include "clhost/runner.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;

const std::string kQuick = std::string(CLHOST_SOURCE_DIR) + "/configs/quick.toml";

// Runs configs/quick.toml with `plugin` alone into `run_dir`; returns its results.json.
nlohmann::json run_with(const std::string& plugin, const std::string& run_dir,
                        const std::vector<std::string>& set = {}) {
  clhost::ConfigOverrides overrides;
  overrides.plugins = std::vector<std::string>{plugin};
  overrides.set = set;
  overrides.plugin_path = {CLHOST_TEST_PLUGIN_DIR, CLHOST_PLUGIN_DIR};
  clhost::RunOptions options;
  options.run_dir = run_dir;
  options.quiet = true;
  clhost::run_pipeline(clhost::load_config(kQuick, overrides), options);
  return nlohmann::json::parse(clhost::test::read_file(run_dir + "/results.json"));
}

std::map<std::string, long long> read_counts(const std::string& path) {
  std::map<std::string, long long> counts;
  std::ifstream in(path);
  std::string key;
  long long value = 0;
  while (in >> key >> value) counts[key] = value;
  return counts;
}

TEST(AbiCompat, APluginBuiltAgainstThePreviousMinorLoadsAndRuns) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 1, "the frozen header is the previous minor");
  clhost::test::TempDir dir;
  run_with("abi_1_0_profiler", dir.path("run"));
  const auto seen = read_counts(dir.path("run") + "/abi_1_0_profiler.txt");
  ASSERT_FALSE(seen.empty()) << "the 1.0 plug-in wrote nothing";
  EXPECT_EQ(seen.at("task_begins"), 5);
  // Per task: begin, consolidate x2, end, eval x2, checkpoint; the run: begin, end, the untrained
  // model's eval x2 and its checkpoint.
  EXPECT_EQ(seen.at("events"), 5 * 7 + 5);
  // The host hands it today's (larger) events; it reads only the members it knows.
  EXPECT_EQ(seen.at("smallest_event_size"), static_cast<long long>(sizeof(clhost_event_t)));
  EXPECT_LT(seen.at("own_event_size"), seen.at("smallest_event_size"));
  EXPECT_GT(seen.at("largest_rss"), 0);  // a 1.0 service called from it works
}

TEST(AbiCompat, APluginBuiltAgainstAbi11UsesItsServicesOnTheNewerHost) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 2, "1.1 is a previous minor");
  clhost::test::TempDir dir;
  run_with("abi_1_1_marker", dir.path("run"));
  const auto seen = read_counts(dir.path("run") + "/abi_1_1_marker.txt");
  ASSERT_FALSE(seen.empty()) << "the 1.1 plug-in wrote nothing";
  EXPECT_EQ(seen.at("marks_sent"), 5);
  EXPECT_EQ(seen.at("own_marks_seen"), 5) << "each mark comes back with the plug-in's id";
}

TEST(AbiCompat, APluginBuiltAgainstAbi12RunsAndIsReportedNotResumable) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 3, "1.2 is a previous minor");
  clhost::test::TempDir dir;
  // Its on_task_end checks 1.2's service.
  const auto results = run_with("abi_1_2_regularizer", dir.path("run"));
  EXPECT_EQ(results["plugins"][0]["id"], "abi_1_2_regularizer");
  // It has no clhost.state/1, so every checkpoint marks it as such (test_resume refuses it).
  std::string latest = clhost::test::read_file(dir.path("run") + "/checkpoints/LATEST");
  latest.erase(latest.find('\n'));
  const auto trainer = nlohmann::json::parse(
      clhost::test::read_file(dir.path("run") + "/checkpoints/" + latest + "/trainer.json"));
  EXPECT_EQ(trainer["plugins"][0]["resumable"], false);
}

TEST(AbiCompat, APluginBuiltAgainstAbi13RunsAndCannotSayWhichKeysTakeEffect) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 4, "1.3 is a previous minor");
  clhost::test::TempDir dir;
  // `decay` has no effect in separate mode, but without clhost.config_use/1 the host cannot know:
  // it runs, and results.json says the plug-in did not report (null), not that all keys worked.
  const auto results =
      run_with("abi_1_3_regularizer", dir.path("run"), {"abi_1_3_regularizer.decay=0.5"});
  EXPECT_EQ(results["plugins"][0]["id"], "abi_1_3_regularizer");
  EXPECT_EQ(results["plugins"][0]["config"]["decay"], 0.5);
  EXPECT_TRUE(results["plugins"][0]["not_in_effect"].is_null());
}

TEST(AbiCompat, APluginBuiltAgainstAbi14RunsAndIsNotPlanned) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 5, "1.4 is a previous minor");
  clhost::test::TempDir dir;
  const auto results = run_with("abi_1_4_regularizer", dir.path("run"));
  const auto& plan = results["memory_plan"];
  EXPECT_EQ(plan["plugins"][0]["id"], "abi_1_4_regularizer");
  EXPECT_TRUE(plan["plugins"][0]["state_bytes"].is_null());
  EXPECT_FALSE(plan["complete"]);
  EXPECT_EQ(plan["weight_bytes"], 4 * results["model"]["parameters"].get<int64_t>());
}

TEST(AbiCompat, APluginBuiltAgainstAbi15RunsAndIsPlanned) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 6, "1.5 is a previous minor");
  clhost::test::TempDir dir;
  const auto results = run_with("abi_1_5_regularizer", dir.path("run"));
  const auto& plan = results["memory_plan"];
  EXPECT_EQ(plan["plugins"][0]["id"], "abi_1_5_regularizer");
  EXPECT_EQ(plan["plugins"][0]["state_bytes"], 4 * results["model"]["parameters"].get<int64_t>());
}

TEST(AbiCompat, APluginBuiltAgainstAbi16RunsBesideOneThatUsesAbi17) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 7, "1.6 is a previous minor");
  clhost::test::TempDir dir;
  clhost::ConfigOverrides overrides;
  overrides.plugins = std::vector<std::string>{"abi_1_6_regularizer", "lwf"};
  overrides.plugin_path = {CLHOST_TEST_PLUGIN_DIR, CLHOST_PLUGIN_DIR};
  clhost::RunOptions options;
  options.run_dir = dir.path("run");
  options.quiet = true;
  clhost::run_pipeline(clhost::load_config(kQuick, overrides), options);
  const auto results =
      nlohmann::json::parse(clhost::test::read_file(dir.path("run") + "/results.json"));
  EXPECT_EQ(results["plugins"][0]["id"], "abi_1_6_regularizer");
  EXPECT_EQ(results["plugins"][1]["id"], "lwf");
  EXPECT_GT(results["plugins"][1]["held_by_host"]["snapshot_bytes"].get<int64_t>(), 0);
}

// A 1.7 plug-in's plan answer has no fisher_samples_per_pass: its state is planned, and the Fisher
// pass from its block alone, named as not planned, never from a member it did not write.
TEST(AbiCompat, APluginBuiltAgainstAbi17IsPlannedWithoutFisherActivations) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 8, "1.7 is a previous minor");
  clhost::test::TempDir dir;
  const auto results = run_with("abi_1_7_regularizer", dir.path("run"));
  const auto& plan = results["memory_plan"];
  const int64_t parameters = results["model"]["parameters"];
  EXPECT_EQ(plan["plugins"][0]["id"], "abi_1_7_regularizer");
  EXPECT_EQ(plan["plugins"][0]["state_bytes"], 4 * parameters);
  EXPECT_EQ(plan["fisher_not_said"], nlohmann::json::array({"abi_1_7_regularizer"}));
  EXPECT_EQ(plan["fisher_pass_bytes"], 8 * plan["fisher_block_elements"].get<int64_t>());
  EXPECT_TRUE(plan["activations_planned"]);
  EXPECT_GT(plan["train_activation_bytes"].get<int64_t>(), 0);
}

// A 1.8 replay plug-in's plan answer has no replay_samples_per_step or replay_capacity: the run
// is planned without its samples, which are named as not planned, and the plug-in still replays.
TEST(AbiCompat, AReplayPluginBuiltAgainstAbi18IsPlannedWithoutItsSamples) {
  static_assert(CLHOST_ABI_VERSION_MINOR >= 9, "1.8 is a previous minor");
  clhost::test::TempDir dir;
  const auto results = run_with("abi_1_8_replay", dir.path("run"));
  const auto& plan = results["memory_plan"];
  EXPECT_EQ(plan["plugins"][0]["id"], "abi_1_8_replay");
  EXPECT_EQ(plan["plugins"][0]["state_bytes"], 0);
  EXPECT_TRUE(plan["plugins"][0]["replay_capacity"].is_null());
  EXPECT_EQ(plan["replay_not_said"], nlohmann::json::array({"abi_1_8_replay"}));
  EXPECT_EQ(plan["replay_samples_per_step"], 0);
  EXPECT_EQ(plan["train_samples"], results["config"]["train"]["batch_size"]);
  EXPECT_TRUE(plan["fisher_not_said"].empty()) << "it said 0 samples per pass";
  EXPECT_EQ(results["plugins"][0]["held_by_host"]["replay_samples"], 32);
}

TEST(AbiCompat, AShorterInterfaceTableIsNotReadPastItsSize) {
  clhost::test::TempDir dir;
  // The table's last_reason would crash the host if it were called.
  const auto results = run_with("short_batch_table", dir.path("run"));
  const auto& changes = results["memory"]["batch_size_changes"];
  ASSERT_FALSE(changes.empty());
  EXPECT_EQ(changes[0]["to"], 32);
  EXPECT_EQ(changes[0]["reason"], "");
}

using Output = clhost::test::CommandResult;

Output clhost_cli(const std::string& args) {
  return clhost::test::run_command(std::string(CLHOST_BINARY) + " " + args);
}

TEST(AbiCompat, PluginsListReportsEveryJunkFileWithoutCrashing) {
  clhost::test::TempDir dir;
  const fs::path junk = dir.path("plugins");
  fs::create_directories(junk);
  std::ofstream(junk / "clhost_random.so") << std::string(5000, '\x5a');
  std::ofstream(junk / "clhost_empty.so");
  std::ofstream(junk / "clhost_truncated.so") << "\x7f"
                                                 "ELF\x02\x01\x01";
  fs::create_directories(junk / "clhost_folder.so");
  fs::create_symlink("/nonexistent/clhost_gone.so", junk / "clhost_dangling.so");
  // A real shared library that is not a plug-in: the C++ runtime the test itself uses.
  std::string libstdcxx;
  for (const char* candidate :
       {"/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/usr/lib64/libstdc++.so.6"}) {
    if (fs::exists(candidate)) libstdcxx = candidate;
  }
  if (!libstdcxx.empty()) fs::copy_file(libstdcxx, junk / "clhost_not_a_plugin.so");
  fs::copy_file(std::string(CLHOST_PLUGIN_DIR) + "/clhost_l2.so", junk / "clhost_l2.so");

  const Output list = clhost_cli("plugins list --plugin-path " + junk.string());
  ASSERT_EQ(list.exit_code, 0) << list.output;
  for (const char* expected :
       {"clhost_random.so: cannot load shared library: invalid ELF header",
        "clhost_empty.so: cannot load shared library: file too short",
        "clhost_truncated.so: cannot load shared library: file too short",
        "clhost_folder.so: cannot load shared library: cannot read file data: Is a directory",
        "clhost_dangling.so: cannot load shared library: cannot open shared object file"}) {
    EXPECT_NE(list.output.find(expected), std::string::npos) << expected << "\n" << list.output;
  }
  if (!libstdcxx.empty()) {
    EXPECT_NE(list.output.find("clhost_not_a_plugin.so: not a clhost plug-in (it does not export "
                               "'clhost_plugin_entry')"),
              std::string::npos)
        << list.output;
  }
  std::istringstream lines(list.output);
  bool l2_listed = false;
  for (std::string line; std::getline(lines, line);) {
    l2_listed =
        l2_listed || (line.rfind("l2 ", 0) == 0 && line.find(junk.string()) != std::string::npos &&
                      line.find("regularizer") != std::string::npos);
  }
  EXPECT_TRUE(l2_listed) << "the good plug-in among the junk is still listed:\n" << list.output;

  const Output run = clhost_cli("validate --config " + kQuick + " --plugins random --plugin-path " +
                                junk.string());
  EXPECT_EQ(run.exit_code, 3) << run.output;
  EXPECT_NE(run.output.find("invalid ELF header"), std::string::npos) << run.output;
}

}  // namespace
