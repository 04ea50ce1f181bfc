// Plug-in loading: each way a plug-in can be wrong produces a message naming the file and cause.
#include <gtest/gtest.h>

#include <filesystem>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "clhost/plugin_loader.hpp"
#include "clhost/runner.hpp"
#include "test_helpers.hpp"

namespace {

using clhost::PluginError;
using clhost::PluginLoader;

PluginLoader test_loader() {
  return PluginLoader({CLHOST_TEST_PLUGIN_DIR, CLHOST_PLUGIN_DIR});
}

std::string load_error(const std::string& id) {
  PluginLoader loader = test_loader();
  try {
    (void)loader.load(id);
  } catch (const PluginError& e) {
    return e.what();
  }
  return "(loaded without error)";
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "missing '" << part << "' in: " << text;
}

TEST(Loader, LoadsTheCRegularizer) {
  PluginLoader loader = test_loader();
  const auto& plugin = loader.load("l2");
  EXPECT_EQ(plugin.id, "l2");
  EXPECT_EQ(plugin.descriptor->kind, CLHOST_PLUGIN_KIND_REGULARIZER);
  EXPECT_NE(plugin.interface, nullptr);
  EXPECT_EQ(plugin.entry->fingerprint, nullptr);
  EXPECT_EQ(&loader.load("l2"), &plugin) << "a second load reuses the loaded library";
}

TEST(Loader, RefusesADifferentAbiMajor) {
  const std::string error = load_error("bad_abi");
  expect_contains(error, "clhost_bad_abi.so");
  expect_contains(error, "plug-in built for clhost ABI 99.0");
  expect_contains(error, "this host implements ABI " + std::to_string(CLHOST_ABI_VERSION_MAJOR) +
                             "." + std::to_string(CLHOST_ABI_VERSION_MINOR));
}

TEST(Loader, RefusesANewerMinor) {
  const std::string error = load_error("newer_minor");
  expect_contains(error, "clhost_newer_minor.so");
  expect_contains(error, "ABI " + std::to_string(CLHOST_ABI_VERSION_MAJOR) + "." +
                             std::to_string(CLHOST_ABI_VERSION_MINOR + 1));
}

TEST(Loader, RefusesALibraryWithoutTheEntrySymbol) {
  expect_contains(load_error("no_entry"),
                  "not a clhost plug-in (it does not export 'clhost_plugin_entry')");
}

TEST(Loader, RefusesAnIdThatDiffersFromTheFileName) {
  expect_contains(load_error("wrong_id"), "the plug-in declares id 'something_else'");
}

TEST(Loader, RefusesAnotherLibTorchBuild) {
  const std::string error = load_error("torch_mismatch");
  expect_contains(error, "build fingerprint mismatch");
  expect_contains(error, "LibTorch 0.9.9");
}

TEST(Loader, NotFoundListsWhatWasFoundAndWhere) {
  const std::string error = load_error("does_not_exist");
  expect_contains(error, "plug-in 'does_not_exist' not found");
  expect_contains(error, std::string("looked in ") + CLHOST_TEST_PLUGIN_DIR);
  expect_contains(error, "l2");
  expect_contains(error, "failing_create");
}

TEST(Loader, DiscoverReportsEveryCandidate) {
  PluginLoader loader = test_loader();
  bool saw_l2 = false;
  bool saw_bad = false;
  for (const auto& candidate : loader.discover()) {
    if (candidate.id == "l2") saw_l2 = candidate.plugin != nullptr;
    if (candidate.id == "bad_abi")
      saw_bad = candidate.plugin == nullptr && !candidate.error.empty();
  }
  EXPECT_TRUE(saw_l2);
  EXPECT_TRUE(saw_bad);
}

clhost::PluginSpec spec_with(const std::string& key,
                             std::variant<bool, int64_t, double, std::string> value) {
  return clhost::PluginSpec{
      "failing_create", {{key, std::move(value), "cfg.toml:7:3"}}, "cfg.toml:5:1"};
}

std::string config_error(const clhost::PluginSpec& spec) {
  PluginLoader loader = test_loader();
  try {
    (void)clhost::resolve_plugin_config(loader.load("failing_create"), spec, 2);
  } catch (const clhost::ConfigError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(PluginConfig, ValidatesAgainstTheSchema) {
  expect_contains(
      config_error(spec_with("strenght", 1.0)),
      "cfg.toml:7:3: pipeline[2] (failing_create).strenght: unknown key for this plug-in");
  expect_contains(config_error(spec_with("strength", std::string("high"))),
                  "cfg.toml:7:3: pipeline[2] (failing_create).strength: expected a number");
  expect_contains(config_error(spec_with("strength", 11.0)), "value 11 is out of range [0, 10]");
  expect_contains(config_error(spec_with("mode", std::string("c"))), "\"c\" is not one of: a|b");
  expect_contains(config_error(spec_with("fail", int64_t{1})), "expected a boolean");
}

TEST(PluginConfig, FillsDefaults) {
  PluginLoader loader = test_loader();
  const auto resolved = clhost::resolve_plugin_config(loader.load("failing_create"),
                                                      spec_with("strength", int64_t{3}), 0);
  const auto* strength = clhost_config_find(resolved.abi(), "strength");
  ASSERT_NE(strength, nullptr);
  EXPECT_DOUBLE_EQ(strength->float_value, 3.0);
  EXPECT_STREQ(clhost_config_find(resolved.abi(), "reason")->string_value, "no GPU found");
  EXPECT_EQ(clhost_config_find(resolved.abi(), "fail")->bool_value, 1);
}

TEST(PluginCreate, AFailingCreateReportsThePluginsMessageAndWritesNothing) {
  clhost::test::TempDir dir;
  const std::string config_path =
      dir.file("c.toml", std::string("[run]\noutput_dir = \"") + dir.path("runs") +
                             "\"\n[data]\ntrain_samples_per_task = 10\ntest_samples_per_task = 10\n"
                             "[train]\niterations = 1\n[[pipeline]]\nplugin = \"failing_create\"\n"
                             "reason = \"needs a GPU\"\n");
  clhost::ConfigOverrides overrides;
  overrides.plugin_path = {CLHOST_TEST_PLUGIN_DIR};
  const auto config = clhost::load_config(config_path, overrides);
  clhost::RunOptions options;
  options.quiet = true;
  try {
    (void)clhost::run_pipeline(config, options);
    FAIL() << "run started with a plug-in whose create fails";
  } catch (const PluginError& e) {
    expect_contains(e.what(), "c.toml:8:1: plug-in 'failing_create' refused to start");
    expect_contains(e.what(), "cannot start: needs a GPU");
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("runs")));
}

}  // namespace
