// End to end: the real clhost binary on real Fashion-MNIST (the quick config).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_helpers.hpp"

namespace {

struct Result {
  int exit_code;
  std::string output;  // stdout and stderr
};

Result clhost(const std::string& args) {
  const std::string command = std::string(CLHOST_BINARY) + " " + args + " 2>&1";
  Result result{-1, ""};
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) result.output += buffer.data();
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
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

TEST(CliEndToEnd, UnknownPluginExitsThree) {
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + kQuick + " --plugins nonesuch --output " + dir.path("out"));
  EXPECT_EQ(run.exit_code, 3) << run.output;
  EXPECT_NE(run.output.find("plug-in 'nonesuch' not found"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("out")));
}

TEST(CliEndToEnd, SeedSwitchesNameTheMissingPlugin) {
  const Result run = clhost("validate --config " + kQuick + " --profile-memory");
  if (run.exit_code == 0) GTEST_SKIP() << "memory_profiler is installed";
  EXPECT_EQ(run.exit_code, 3);
  EXPECT_NE(run.output.find("--profile-memory needs plug-in 'memory_profiler'"), std::string::npos)
      << run.output;
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
}

TEST(CliEndToEnd, VersionAndHelp) {
  EXPECT_NE(clhost("--version").output.find("plug-in ABI 1.0"), std::string::npos);
  const Result help = clhost("run --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--plugin-path"), std::string::npos);
  EXPECT_EQ(clhost("frobnicate").exit_code, 2);
}

}  // namespace
