// No setting is silently ignored: every key and option the user gives either takes effect or is
// refused (exit 2, located, saying what would make it apply); --plugins and --set agree on the
// pipeline's order; compare reuses a finished run only when it ran the arm's exact settings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "test_helpers.hpp"

namespace {

using clhost::ConfigError;
using clhost::ConfigOverrides;
using clhost::load_config;
using Result = clhost::test::CommandResult;
using nlohmann::json;

const std::string kQuick = std::string(CLHOST_SOURCE_DIR) + "/configs/quick.toml";

Result clhost(const std::string& args) {
  return clhost::test::run_command(std::string(CLHOST_BINARY) + " " + args);
}

json results_of(const std::string& run_dir) {
  return json::parse(clhost::test::read_file(run_dir + "/results.json"));
}

// A seconds-long run: 2 tasks, few samples and steps.
std::string tiny_config(const clhost::test::TempDir& dir, const std::string& extra = "") {
  return dir.file("tiny.toml",
                  "[run]\nname = \"tiny\"\nseed = 1\n[data]\nnum_tasks = 2\n"
                  "train_samples_per_task = 200\ntest_samples_per_task = 100\n"
                  "[model]\nhidden = [16]\n[train]\nbatch_size = 32\niterations = 10\n" +
                      extra + "[[pipeline]]\nplugin = \"l2\"\nlambda = 0.5\n");
}

std::string error_of(const std::string& path, const ConfigOverrides& overrides) {
  try {
    (void)load_config(path, overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(accepted)";
}

std::string setting_of(const clhost::PluginSpec& spec, const std::string& key) {
  for (const auto& setting : spec.settings) {
    if (setting.key != key) continue;
    return std::visit(
        [](const auto& value) {
          std::ostringstream out;
          out << value;
          return out.str();
        },
        setting.value);
  }
  return "(absent)";
}

// --- --plugins and --set ------------------------------------------------------------------------

TEST(PluginsAndSet, SetIndexesThePipelineInTheOrderOfPlugins) {
  ConfigOverrides overrides;
  overrides.plugins = std::vector<std::string>{"ewc", "l2"};  // quick.toml's file pipeline: l2
  overrides.set = {"pipeline.0.lambda=7"};
  const auto config = load_config(kQuick, overrides);
  ASSERT_EQ(config.pipeline.size(), 2U);
  EXPECT_EQ(config.pipeline[0].id, "ewc");
  EXPECT_EQ(setting_of(config.pipeline[0], "lambda"), "7");
  EXPECT_EQ(config.pipeline[0].settings[0].location, "--set pipeline.0.lambda");
  EXPECT_EQ(setting_of(config.pipeline[1], "lambda"), "0.5") << "l2 keeps its file setting";
}

TEST(PluginsAndSet, SetNamesAnEntryByItsPluginId) {
  ConfigOverrides overrides;
  overrides.plugins = std::vector<std::string>{"l2", "ewc"};
  overrides.set = {"ewc.lambda=1000", "l2.lambda=3"};
  const auto config = load_config(kQuick, overrides);
  EXPECT_EQ(setting_of(config.pipeline[1], "lambda"), "1000");
  EXPECT_EQ(config.pipeline[1].settings[0].location, "--set ewc.lambda");
  EXPECT_EQ(setting_of(config.pipeline[0], "lambda"), "3");
  const auto resolved = json::parse(config.resolved_json);
  EXPECT_EQ(resolved["pipeline"][1]["lambda"], 1000);
}

TEST(PluginsAndSet, SwitchesAddTheirPluginBeforeSetApplies) {
  ConfigOverrides overrides;
  overrides.dynamic_batch_size = true;
  overrides.set = {"dynamic.margin=0.3"};
  const auto config = load_config(kQuick, overrides);
  ASSERT_EQ(config.pipeline.size(), 2U);
  EXPECT_EQ(config.pipeline[1].id, "dynamic");
  EXPECT_EQ(config.pipeline[1].location, "--dynamic-batch-size");
  EXPECT_EQ(setting_of(config.pipeline[1], "margin"), "0.3");
}

TEST(PluginsAndSet, AnIdThatIsNeitherASectionNorAPluginIsRefused) {
  ConfigOverrides overrides;
  overrides.set = {"ewc.lambda=5"};  // quick.toml has only l2
  EXPECT_NE(error_of(kQuick, overrides)
                .find("--set ewc.lambda: 'ewc' is neither a config section (run, distributed, "
                      "data, model, "),
            std::string::npos);
  overrides.plugins = std::vector<std::string>{"l2", "l2"};
  overrides.set = {"l2.lambda=5"};
  EXPECT_NE(error_of(kQuick, overrides).find("appears 2 times in the pipeline"), std::string::npos);
}

// --- keys that take effect only with other values (one table: config.cpp kConditionalKeys) ---

struct Inapplicable {
  const char* name;
  const char* set;       // the key given where it has no effect
  const char* context;   // settings that make it inapplicable
  const char* expected;  // part of the reason
};

class InapplicableKey : public ::testing::TestWithParam<Inapplicable> {};

TEST_P(InapplicableKey, IsRefusedAtItsLocationWithWhatWouldMakeItApply) {
  clhost::test::TempDir dir;
  const Inapplicable& input = GetParam();
  ConfigOverrides overrides;
  overrides.set = {input.set};
  std::stringstream context(input.context);
  for (std::string item; std::getline(context, item, ';');) {
    if (!item.empty()) overrides.set.insert(overrides.set.end() - 1, item);
  }
  const std::string key = std::string(input.set).substr(0, std::string(input.set).find('='));
  const std::string message = error_of(tiny_config(dir), overrides);
  EXPECT_NE(message.find("--set " + key + ": " + key + ": has no effect here"), std::string::npos)
      << message;
  EXPECT_NE(message.find(input.expected), std::string::npos) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Keys, InapplicableKey,
    ::testing::Values(
        Inapplicable{"momentum_with_adam", "train.momentum=0.9", "", "train.optimizer = \"sgd\""},
        Inapplicable{"iterations_with_epochs", "train.iterations=5", "train.epochs=1",
                     "train.epochs = 0"},
        Inapplicable{"path_with_idx", "data.path=\"x.h5\"", "", "data.kind = \"hdf5\""},
        Inapplicable{"train_x_with_idx", "data.train_x=\"/x\"", "", "data.kind = \"hdf5\""},
        Inapplicable{"max_resident_with_idx", "data.max_resident=\"1GiB\"", "",
                     "IDX data is always resident"},
        Inapplicable{"stream_cache_with_idx", "data.stream_cache=\"1MiB\"", "",
                     "data.kind = \"hdf5\""},
        Inapplicable{"dir_with_hdf5", "data.dir=\"/tmp\"", "data.kind=\"hdf5\";data.path=\"x.h5\"",
                     "data.kind = \"idx\""},
        Inapplicable{"class_order_with_task_classes", "data.class_order=\"shuffled\"",
                     "data.task_classes=[[0,1],[2,3]]", "without data.task_classes"},
        Inapplicable{"rotation_step_with_split", "data.rotation_step=10", "",
                     "data.scenario = \"rotated\""},
        Inapplicable{"codec_without_compression", "fisher_computation.codec=\"lz4\"",
                     "fisher_computation.use_compression=false", "use_compression = true"},
        Inapplicable{"level_with_lz4", "fisher_computation.compression_level=3",
                     "fisher_computation.codec=\"lz4\"", "codec gzip, blosc-lz4 or blosc-zstd"}),
    [](const auto& test_case) { return std::string(test_case.param.name); });

TEST(InapplicableKeys, TheResolvedConfigurationRecordsOnlyKeysThatTakeEffect) {
  clhost::test::TempDir dir;
  const auto adam = json::parse(load_config(tiny_config(dir)).resolved_json);
  EXPECT_FALSE(adam["train"].contains("momentum")) << "Adam has no momentum setting";
  EXPECT_FALSE(adam["data"].contains("max_resident")) << "IDX data is never streamed";
  EXPECT_FALSE(adam["data"].contains("path"));
  EXPECT_TRUE(adam["data"].contains("dir"));
  ConfigOverrides sgd;
  sgd.set = {"train.optimizer=\"sgd\"", "train.momentum=0.9", "train.epochs=1"};
  const std::string empty = dir.file("empty.toml", "");  // tiny.toml sets train.iterations
  const auto with_sgd = json::parse(load_config(empty, sgd).resolved_json);
  EXPECT_EQ(with_sgd["train"]["momentum"], 0.9);
  EXPECT_FALSE(with_sgd["train"].contains("iterations")) << "epochs set the steps";
  // The resolved file reads back to the same configuration (what --resume does).
  const std::string resolved = dir.file("resolved.toml", load_config(empty, sgd).resolved_toml);
  EXPECT_EQ(json::parse(load_config(resolved).resolved_json), with_sgd);
}

TEST(InapplicableKeys, ConfigFileMistakesAreRefusedWithTheirLocation) {
  clhost::test::TempDir dir;
  EXPECT_NE(error_of(dir.path(), {}).find("is a directory; --config takes a TOML file"),
            std::string::npos);
  const std::string empty_classes = dir.file("empty.toml", "[data]\ntask_classes = []\n");
  EXPECT_NE(error_of(empty_classes, {}).find(empty_classes + ":2:16: data.task_classes: is empty"),
            std::string::npos)
      << error_of(empty_classes, {});
  const std::string twice =
      dir.file("twice.toml", "[[tasks]]\nname = \"a\"\n[[tasks]]\nname = \"a\"\n");
  EXPECT_NE(error_of(twice, {}).find(twice + ":4:8: tasks[1].name: \"a\" is already the name"),
            std::string::npos)
      << error_of(twice, {});
}

TEST(SetMessages, SayWhatIsWrongWithTheKeyPath) {
  ConfigOverrides overrides;
  overrides.set = {"model.hidden.0=50"};
  EXPECT_NE(error_of(kQuick, overrides)
                .find("model.hidden is an array of values: set it whole, e.g. --set "
                      "'model.hidden=[...]'"),
            std::string::npos)
      << error_of(kQuick, overrides);
  overrides.set = {"pipeline.-1.lambda=1"};
  EXPECT_NE(error_of(kQuick, overrides).find("'-1' is not an array index"), std::string::npos);
  overrides.set = {"pipeline.3.lambda=1"};
  EXPECT_NE(error_of(kQuick, overrides).find("index 3 is past the end (the array has 1 entry)"),
            std::string::npos);
  overrides.set = {"run.name=\"a/b\""};
  EXPECT_NE(error_of(kQuick, overrides).find("--set run.name: run.name: must be non-empty"),
            std::string::npos)
      << error_of(kQuick, overrides);
}

// --- the real binary -----------------------------------------------------------------------

TEST(TrustworthyCli, SetWithPluginsReachesThePluginAndResultsRecordIt) {
  clhost::test::TempDir dir;
  const Result run =
      clhost("run --config " + tiny_config(dir) +
             " --plugins ewc --set pipeline.0.lambda=1000 --set ewc.fisher_samples=50"
             " -q --output " +
             dir.path("run"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto plugin = results_of(dir.path("run"))["plugins"][0];
  EXPECT_EQ(plugin["id"], "ewc");
  EXPECT_EQ(plugin["config"]["lambda"], 1000.0);
  EXPECT_EQ(plugin["config"]["fisher_samples"], 50);
  // The plug-in's own account: in separate mode its online decay does nothing.
  EXPECT_NE(plugin["not_in_effect"]["gamma"].get<std::string>().find("mode = \"online\""),
            std::string::npos);
}

TEST(TrustworthyCli, APluginKeyWithoutEffectExitsTwoAndWritesNothing) {
  clhost::test::TempDir dir;
  const std::string config = tiny_config(dir);
  for (const std::string command : {"validate", "run"}) {
    const Result result =
        clhost(command + " --config " + config + " --plugins ewc --set ewc.gamma=0.5" +
               (command == "run" ? " --output " + dir.path("out") : ""));
    EXPECT_EQ(result.exit_code, 2) << command << ": " << result.output;
    EXPECT_NE(result.output.find("--set ewc.gamma: pipeline[0] (ewc).gamma: has no effect here: "
                                 "applies to mode = \"online\" only"),
              std::string::npos)
        << result.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path("out")));
  const Result dtype = clhost("validate --config " + config +
                              " --plugins ewc --set fisher_computation.use_memory_efficient=false"
                              " --set ewc.state_dtype='\"int8\"'");
  EXPECT_EQ(dtype.exit_code, 2) << dtype.output;
  EXPECT_NE(dtype.output.find("applies only with fisher_computation.use_memory_efficient = true"),
            std::string::npos)
      << dtype.output;
}

TEST(TrustworthyCli, HarmlessSettingsWithoutEffectAreNamedInAWarning) {
  clhost::test::TempDir dir;
  const Result result =
      clhost("validate --config " + tiny_config(dir) + " --set fisher_computation.block_size=100");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("warning: fisher_computation.block_size has no effect: no plug-in "
                               "in the pipeline computes a Fisher"),
            std::string::npos)
      << result.output;
}

TEST(TrustworthyCli, TwoBatchPoliciesAreABadConfigurationNotAFailedRun) {
  clhost::test::TempDir dir;
  const std::string config = tiny_config(dir);
  const Result validate = clhost("validate --config " + config + " --plugins fixed,dynamic");
  EXPECT_EQ(validate.exit_code, 2) << validate.output;
  const Result run =
      clhost("run --config " + config + " --plugins fixed,dynamic --output " + dir.path("out"));
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("two batch policies"), std::string::npos) << run.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("out")));
}

TEST(TrustworthyCli, ConfigThatIsADirectoryIsRefused) {
  clhost::test::TempDir dir;
  for (const std::string command : {"validate", "run"}) {
    const Result result = clhost(command + " --config " + dir.path());
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_NE(result.output.find("is a directory"), std::string::npos) << result.output;
  }
}

TEST(TrustworthyCli, AnUnusableOutputIsAUsageError) {
  clhost::test::TempDir dir;
  const std::string config = tiny_config(dir);
  std::filesystem::create_directories(dir.path("full"));
  (void)dir.file("full/something", "x");
  const Result full = clhost("run --config " + config + " --output " + dir.path("full"));
  EXPECT_EQ(full.exit_code, 2) << full.output;
  EXPECT_NE(full.output.find("directory exists and is not empty"), std::string::npos);
  const std::string file = dir.file("plain_file", "x");
  const Result under = clhost("run --config " + config + " --output " + file + "/run");
  EXPECT_EQ(under.exit_code, 2) << under.output;
  EXPECT_NE(under.output.find(file + " is a file, not a directory"), std::string::npos)
      << under.output;
}

TEST(TrustworthyCli, SigintDuringStartUpSaysNothingWasWritten) {
  clhost::test::TempDir dir;
  const Result interrupted = clhost::test::run_command(
      "CLHOST_TEST_KILL_AT=startup:1:SIGINT " + std::string(CLHOST_BINARY) + " run --config " +
      tiny_config(dir) + " --output " + dir.path("interrupted"));
  EXPECT_EQ(interrupted.exit_code, 130) << interrupted.output;
  EXPECT_NE(interrupted.output.find("SIGINT during start-up, before the first step: nothing was "
                                    "written"),
            std::string::npos)
      << interrupted.output;
  EXPECT_FALSE(std::filesystem::exists(dir.path("interrupted")));
  EXPECT_FALSE(std::filesystem::exists("status.json")) << "nothing lands in the working directory";
}

TEST(TrustworthyCli, ValidateTakesRunOptionsAndChecksTheDataFiles) {
  clhost::test::TempDir dir;
  const std::string config = tiny_config(dir);
  const Result every = clhost("validate --config " + config + " --checkpoint-every 5");
  EXPECT_EQ(every.exit_code, 0) << every.output;
  const Result missing = clhost("validate --config " + config + " --set data.dir=" + dir.path());
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("data.train_images: " + dir.path() +
                                "/train-images-idx3-ubyte (or .gz): no such file"),
            std::string::npos)
      << missing.output;
}

TEST(TrustworthyCli, ReportAndFisherErrorsNameTheirCommand) {
  clhost::test::TempDir dir;
  const Result no_argument = clhost("report");
  EXPECT_EQ(no_argument.exit_code, 2) << no_argument.output;
  EXPECT_NE(no_argument.output.find("missing RUN_DIR"), std::string::npos) << no_argument.output;
  EXPECT_EQ(no_argument.output.find("--run-dir"), std::string::npos) << no_argument.output;
  const Result not_a_run = clhost("report " + dir.path());
  EXPECT_NE(not_a_run.output.find("clhost report: "), std::string::npos) << not_a_run.output;
  EXPECT_NE(not_a_run.output.find("not a clhost run directory (no status.json)"), std::string::npos)
      << not_a_run.output;
  EXPECT_EQ(not_a_run.output.find("run failed"), std::string::npos) << not_a_run.output;
  const Result fisher = clhost("fisher inspect " + dir.path("none.h5"));
  EXPECT_NE(fisher.output.find("clhost fisher: "), std::string::npos) << fisher.output;
  EXPECT_EQ(fisher.output.find("run failed"), std::string::npos) << fisher.output;
}

TEST(TrustworthyCli, EventRowsUseTheStepNumbersOfTheStepRowsAndNoBlankLinesInAPipe) {
  clhost::test::TempDir dir;
  const Result run = clhost("run --config " + tiny_config(dir) +
                            " --plugins fixed --set fixed.micro_batch=8 --set run.log_every=1"
                            " --output " +
                            dir.path("run"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output.find("\n\n[batch]"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("[batch] task 1 step 1: "), std::string::npos) << run.output;
  // metrics.csv: the event before the first step is step 1 / global step 1, like the first
  // step's own row; results.json says the same.
  const std::string csv = clhost::test::read_file(dir.path("run") + "/metrics.csv");
  const size_t event = csv.find("\n0,1,1,,,32,8,");
  EXPECT_NE(event, std::string::npos) << csv.substr(0, 400);
  EXPECT_NE(csv.find("\n0,1,1,", event + 1), std::string::npos) << csv.substr(0, 400);
  const auto change = results_of(dir.path("run"))["memory"]["batch_size_changes"][0];
  EXPECT_EQ(change["task"], 0);
  EXPECT_EQ(change["step"], 1);
  EXPECT_EQ(change["global_step"], 1);
}

// --- compare -------------------------------------------------------------------------------

TEST(TrustworthyCompare, AChangedArmIsNotAnsweredWithTheOldRuns) {
  clhost::test::TempDir dir;
  const std::string base = tiny_config(dir);
  const std::string common =
      "compare --config " + base + " --seeds 1 -q --output " + dir.path("cmp") + " --a 'plugins='";
  const Result first = clhost(common + " --b 'plugins=ewc;ewc.lambda=1000'");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("one seed: no interval"), std::string::npos) << first.output;
  const auto compared = json::parse(clhost::test::read_file(dir.path("cmp") + "/compare.json"));
  EXPECT_EQ(compared["arms"][1]["ran"]["plugins"][0]["config"]["lambda"], 1000.0);
  EXPECT_EQ(results_of(dir.path("cmp") + "/b/seed_0")["plugins"][0]["config"]["lambda"], 1000.0);

  const Result same = clhost(common + " --b 'plugins=ewc;ewc.lambda=1000'");
  EXPECT_EQ(same.exit_code, 0) << same.output;
  const Result changed = clhost(common + " --b 'plugins=l2'");
  EXPECT_EQ(changed.exit_code, 2) << changed.output;
  EXPECT_NE(changed.output.find("arm B ('plugins=l2') seed 0"), std::string::npos)
      << changed.output;
  EXPECT_NE(changed.output.find("plug-ins: ran ewc 1.3.0, the arm has l2 1.0.0"), std::string::npos)
      << changed.output;
  const Result forced = clhost(common + " --b 'plugins=l2' --force");
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_EQ(results_of(dir.path("cmp") + "/b/seed_0")["plugins"][0]["id"], "l2");
}

TEST(TrustworthyCompare, ArmErrorsNameTheArm) {
  clhost::test::TempDir dir;
  const Result result = clhost("compare --config " + tiny_config(dir) +
                               " --a 'train.lrr=0.1' --b 'plugins=' --output " + dir.path("cmp"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("arm A ('train.lrr=0.1'): --set train.lrr: train.lrr: unknown key"),
            std::string::npos)
      << result.output;
}

}  // namespace

// --- the key sweep: every documented host key takes effect where it applies, and is refused
// where it does not --------------------------------------------------------------------------

namespace sweep {

struct KeyCase {
  const char* key;
  const char* value;         // TOML, as for --set
  const char* recorded;      // the value in the resolved configuration, as JSON
  const char* applies;       // --set items (';'-separated) that make the key apply, or ""
  const char* inapplicable;  // --set items where it has no effect, or nullptr: it always applies
};

// Text tasks with the transformer: where the text and transformer keys apply.
constexpr const char* kText =
    "data.kind=\"text\";data.languages=[\"en\"];model.kind=\"transformer\"";

const KeyCase kCases[] = {
    {"run.name", "\"sweep\"", "\"sweep\"", "", nullptr},
    {"run.seed", "7", "7", "", nullptr},
    {"run.threads", "2", "2", "", nullptr},
    {"run.output_dir", "\"elsewhere\"", "\"elsewhere\"", "", nullptr},
    {"run.plugin_path", "[\"/opt/p\"]", "[\"/opt/p\"]", "", nullptr},
    {"run.log_every", "7", "7", "", nullptr},
    {"run.checkpoint_every", "0", "0", "", nullptr},
    {"run.memory_budget", "\"1GiB\"", "1073741824", "", nullptr},
    {"run.keep_freed_memory", "\"64MiB\"", "67108864", "", nullptr},
    {"distributed.backend", "\"gloo\"", "\"gloo\"", "", nullptr},
    {"distributed.timeout", "60", "60.0", "", nullptr},
    {"distributed.bucket_size", "\"1MiB\"", "1048576", "", nullptr},
    {"data.kind", "\"hdf5\"", "\"hdf5\"", "data.path=\"x.h5\"", nullptr},
    {"data.path", "\"x.h5\"", "\"x.h5\"", "data.kind=\"hdf5\"", ""},
    {"data.train_x", "\"/a\"", "\"/a\"", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.train_y", "\"/a\"", "\"/a\"", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.test_x", "\"/a\"", "\"/a\"", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.test_y", "\"/a\"", "\"/a\"", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.max_resident", "\"1GiB\"", "1073741824", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.stream_cache", "\"1MiB\"", "1048576", "data.kind=\"hdf5\";data.path=\"x.h5\"", ""},
    {"data.dir", "\"/tmp\"", "\"/tmp\"", "", "data.kind=\"hdf5\";data.path=\"x.h5\""},
    {"data.train_images", "\"a\"", "\"a\"", "", "data.kind=\"hdf5\";data.path=\"x.h5\""},
    {"data.train_labels", "\"a\"", "\"a\"", "", "data.kind=\"hdf5\";data.path=\"x.h5\""},
    {"data.test_images", "\"a\"", "\"a\"", "", "data.kind=\"hdf5\";data.path=\"x.h5\""},
    {"data.test_labels", "\"a\"", "\"a\"", "", "data.kind=\"hdf5\";data.path=\"x.h5\""},
    {"data.num_classes", "20", "20", "", kText},
    {"data.normalize", "\"standard\"", "\"standard\"", "", kText},
    {"data.scenario", "\"permuted\"", "\"permuted\"", "", kText},
    {"data.num_tasks", "2", "2", "", kText},
    {"data.rotation_step", "10.0", "10.0", "data.scenario=\"rotated\"", ""},
    {"data.task_classes", "[[0,1],[2,3]]", "[[0,1],[2,3]]", "", "data.scenario=\"permuted\""},
    {"data.class_order", "\"shuffled\"", "\"shuffled\"", "", "data.task_classes=[[0,1]]"},
    {"data.incremental", "\"class\"", "\"class\"", "", kText},
    {"data.languages", "[\"en\",\"de\"]", "[\"en\",\"de\"]", kText, ""},
    {"data.fortunes_dir", "\"/tmp\"", "\"/tmp\"", kText, ""},
    {"data.test_fraction", "0.2", "0.2", kText, ""},
    {"model.layers", "3", "3", kText, ""},
    {"model.heads", "2", "2", kText, ""},
    {"model.d_model", "32", "32", kText, ""},
    {"model.context", "16", "16", kText, ""},
    {"model.mlp_ratio", "2", "2", kText, ""},
    {"model.dropout", "0.1", "0.1", kText, ""},
    {"model.tied_head", "true", "true", kText, ""},
    {"data.train_samples_per_task", "5", "5", "", nullptr},
    {"data.test_samples_per_task", "5", "5", "", nullptr},
    {"data.validation", "0.25", "0.25", "", nullptr},
    {"model.kind", "\"cnn\"", "\"cnn\"", "", nullptr},
    {"model.hidden", "[8]", "[8]", "", "model.kind=\"torchscript\";model.path=\"m.pt\""},
    {"model.path", "\"m.pt\"", "\"m.pt\"", "model.kind=\"torchscript\"", ""},
    {"model.input_shape", "[1,28,28]", "[1,28,28]",
     "model.kind=\"torchscript\";model.path=\"m.pt\"", ""},
    {"train.optimizer", "\"sgd\"", "\"sgd\"", "", nullptr},
    {"train.lr", "0.5", "0.5", "", nullptr},
    {"train.momentum", "0.9", "0.9", "train.optimizer=\"sgd\"", ""},
    {"train.batch_size", "7", "7", "", nullptr},
    {"train.iterations", "9", "9", "", "train.epochs=1"},
    {"train.epochs", "2", "2", "", nullptr},
    {"train.eval_batch_size", "9", "9", "", nullptr},
    {"train.checkpoint_segments", "2", "2", "", nullptr},
    {"fisher_computation.use_memory_efficient", "false", "false", "", nullptr},
    {"fisher_computation.block_size", "99", "99", "", nullptr},
    {"fisher_computation.use_compression", "false", "false", "", nullptr},
    {"fisher_computation.compression_level", "3", "3", "", "fisher_computation.codec=\"lz4\""},
    {"fisher_computation.codec", "\"lz4\"", "\"lz4\"", "",
     "fisher_computation.use_compression=false"},
    {"fisher_computation.store_dtype", "\"fp16\"", "\"fp16\"", "", nullptr},
    {"fisher_computation.compression_ratio", "0.5", "0.5", "", nullptr},
};

std::vector<std::string> items(const std::string& joined) {
  std::vector<std::string> out;
  std::stringstream stream(joined);
  for (std::string item; std::getline(stream, item, ';');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// The keys of docs/config.md's tables for [run], [data], [model], [train], [fisher_computation].
std::vector<std::string> documented_keys() {
  std::stringstream docs(
      clhost::test::read_file(std::string(CLHOST_SOURCE_DIR) + "/docs/config.md"));
  std::vector<std::string> keys;
  std::string section;
  for (std::string line; std::getline(docs, line);) {
    if (line.rfind("## `[", 0) == 0) {
      const size_t open = line.find('[');
      section = line.substr(open + 1, line.find(']') - open - 1);
      if (section.front() == '[') section.clear();  // [[pipeline]], [[tasks]]: plug-in/task keys
      continue;
    }
    if (section.empty() || line.rfind("| `", 0) != 0) continue;
    const std::string cell = line.substr(2, line.find(" |", 2) - 2);
    for (size_t at = cell.find('`'); at != std::string::npos; at = cell.find('`', at)) {
      const size_t end = cell.find('`', at + 1);
      keys.push_back(section + "." + cell.substr(at + 1, end - at - 1));
      at = end + 1;
    }
  }
  return keys;
}

}  // namespace sweep

TEST(KeySweep, EveryDocumentedKeyIsSwept) {
  const auto keys = sweep::documented_keys();
  EXPECT_GE(keys.size(), 45U);
  for (const auto& key : keys) {
    const bool swept = std::any_of(std::begin(sweep::kCases), std::end(sweep::kCases),
                                   [&](const sweep::KeyCase& c) { return key == c.key; });
    EXPECT_TRUE(swept) << key << " is documented but not in the sweep";
  }
}

TEST(KeySweep, EachKeyReachesTheResolvedConfigWhereItAppliesAndIsRefusedWhereItDoesNot) {
  clhost::test::TempDir dir;
  const std::string base = dir.file("empty.toml", "");
  size_t refused = 0;
  for (const auto& c : sweep::kCases) {
    ConfigOverrides overrides;
    overrides.set = sweep::items(c.applies);
    overrides.set.push_back(std::string(c.key) + "=" + c.value);
    const std::string key(c.key);
    try {
      const auto resolved = json::parse(load_config(base, overrides).resolved_json);
      const std::string section = key.substr(0, key.find('.'));
      const std::string name = key.substr(key.find('.') + 1);
      EXPECT_EQ(resolved[section][name], json::parse(c.recorded)) << key;
    } catch (const ConfigError& e) {
      ADD_FAILURE() << key << " = " << c.value << " refused where it applies: " << e.what();
    }
    if (c.inapplicable == nullptr) continue;
    overrides.set = sweep::items(c.inapplicable);
    overrides.set.push_back(std::string(c.key) + "=" + c.value);
    const std::string message = error_of(base, overrides);
    EXPECT_NE(message.find("--set " + key + ": " + key + ": has no effect here"), std::string::npos)
        << key << ": " << message;
    ++refused;
  }
  std::printf("key sweep: %zu keys, %zu of them also checked where they do not apply\n",
              std::size(sweep::kCases), refused);
}
