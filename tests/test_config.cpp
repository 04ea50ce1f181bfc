// Configuration parsing: every bad input names the file, line, column and key path.
#include <gtest/gtest.h>

#include <filesystem>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "test_helpers.hpp"

namespace {

using clhost::ConfigError;
using clhost::load_config;

struct BadInput {
  const char* name;
  const char* toml;
  const char* expected_location;  // ":line:column:" that must appear
  const char* expected_text;      // key path and reason fragment
};

class BadConfig : public ::testing::TestWithParam<BadInput> {};

TEST_P(BadConfig, NamesThePlace) {
  clhost::test::TempDir dir;
  const BadInput& input = GetParam();
  const std::string path = dir.file("bad.toml", input.toml);
  try {
    (void)load_config(path);
    FAIL() << "accepted bad config " << input.name;
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path + input.expected_location), std::string::npos) << message;
    EXPECT_NE(message.find(input.expected_text), std::string::npos) << message;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, BadConfig,
    ::testing::Values(
        BadInput{"syntax", "[run]\nname = \"x\nseed = 1\n", ":2:", "TOML syntax error"},
        BadInput{"unknown_section", "[trian]\nlr = 1\n", ":1:2:", "trian: unknown key"},
        BadInput{"unknown_key", "[train]\nlearning_rate = 0.1\n",
                 ":2:1:", "train.learning_rate: unknown key"},
        BadInput{"wrong_type", "[train]\nbatch_size = \"128\"\n",
                 ":2:14:", "train.batch_size: expected an integer, got a string"},
        BadInput{"out_of_range", "[train]\nbatch_size = 0\n",
                 ":2:14:", "train.batch_size: value 0 is out of range"},
        BadInput{"negative_lr", "[train]\nlr = -0.5\n",
                 ":2:6:", "train.lr: value -0.5 is out of range"},
        BadInput{"bad_choice", "[data]\nscenario = \"shuffled\"\n",
                 ":2:12:", "data.scenario: \"shuffled\" is not one of: split, permuted, rotated"},
        BadInput{"bad_split", "[data]\nscenario = \"split\"\nnum_tasks = 3\n",
                 ":3:13:", "data.num_tasks: a split scenario needs a divisor"},
        BadInput{"hidden_not_array", "[model]\nhidden = 400\n",
                 ":2:10:", "model.hidden: expected an array of integers"},
        BadInput{"hidden_element", "[model]\nhidden = [400, -1]\n",
                 ":2:16:", "model.hidden: element -1 is out of range"},
        BadInput{"pipeline_without_id", "[[pipeline]]\nlambda = 1.0\n",
                 ":1:1:", "pipeline[0].plugin: missing or not a string"},
        BadInput{"pipeline_nested_value", "[[pipeline]]\nplugin = \"l2\"\nx = [1, 2]\n",
                 ":3:5:", "pipeline[0].x: plug-in settings must be"},
        BadInput{"task_unknown_key", "[[tasks]]\nname = \"a\"\nbatch = 4\n",
                 ":3:1:", "tasks[0].batch: unknown key"},
        BadInput{"section_not_table", "run = 5\n", ":1:7:", "run: expected a table"},
        BadInput{"bool_as_string", "[fisher_computation]\nuse_compression = \"yes\"\n",
                 ":2:19:", "fisher_computation.use_compression: expected a boolean"},
        BadInput{"setting_name_control", "[[pipeline]]\nplugin = \"l2\"\n\"a\\nb\" = 1\n",
                 ":3:10:", "pipeline[0]: a setting's name holds a control character (0x0a)"},
        BadInput{"validation_fraction_one", "[data]\nvalidation = 1.0\n", ":2:14:",
                 "data.validation: a fraction must be in [0, 1) (give a number of samples"},
        BadInput{"validation_negative", "[data]\nvalidation = -3\n",
                 ":2:14:", "data.validation: a count must not be negative"},
        BadInput{"validation_string", "[data]\nvalidation = \"10%\"\n", ":2:14:",
                 "data.validation: expected a fraction (0.1) or a count of samples (1000), got "
                 "a string"}),
    [](const ::testing::TestParamInfo<BadInput>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(Config, DefaultsAreTheSplitProtocol) {
  clhost::test::TempDir dir;
  const auto config = load_config(dir.file("empty.toml", ""));
  EXPECT_EQ(config.data.num_tasks, 5);
  EXPECT_EQ(config.train.batch_size, 128);
  EXPECT_EQ(config.train.iterations, 2000);
  EXPECT_EQ(config.model.hidden, (std::vector<int64_t>{400, 400}));
  EXPECT_EQ(config.fisher.block_size, 1000000);
  EXPECT_TRUE(config.pipeline.empty());
}

TEST(Config, SetOverridesAreTypedAndLocated) {
  clhost::test::TempDir dir;
  const std::string path =
      dir.file("c.toml", "[train]\nlr = 0.001\n[[pipeline]]\nplugin = \"l2\"\nlambda = 1.0\n");
  clhost::ConfigOverrides overrides;
  overrides.set = {"train.lr=0.01", "run.name=demo", "pipeline.0.lambda=5"};
  const auto config = load_config(path, overrides);
  EXPECT_DOUBLE_EQ(config.train.lr, 0.01);
  EXPECT_EQ(config.run.name, "demo");
  ASSERT_EQ(config.pipeline.size(), 1U);
  EXPECT_EQ(std::get<int64_t>(config.pipeline[0].settings[0].value), 5);

  overrides.set = {"train.batch_size=-3"};
  try {
    (void)load_config(path, overrides);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--set train.batch_size"), std::string::npos) << e.what();
  }
  overrides.set = {"noequals"};
  EXPECT_THROW((void)load_config(path, overrides), ConfigError);
  overrides.set = {"pipeline.3.lambda=1"};
  EXPECT_THROW((void)load_config(path, overrides), ConfigError);
  // An index past size_t is past the end too; a key with a control character cannot be written
  // back into the run's config.toml.
  overrides.set = {"pipeline.99999999999999999999999.lambda=1"};
  EXPECT_THROW((void)load_config(path, overrides), ConfigError);
  overrides.set = {"l2.\nx=1"};
  try {
    (void)load_config(path, overrides);
    FAIL() << "a key with a newline was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("the key holds a control character (0x0a)"),
              std::string::npos)
        << e.what();
  }
}

TEST(Config, PluginsFlagReplacesThePipelineAndKeepsSettings) {
  clhost::test::TempDir dir;
  const std::string path = dir.file(
      "c.toml", "[[pipeline]]\nplugin = \"l2\"\nlambda = 3.0\n[[pipeline]]\nplugin = \"other\"\n");
  clhost::ConfigOverrides overrides;
  overrides.plugins = std::vector<std::string>{"l2", "fresh"};
  overrides.profile_memory = true;
  const auto config = load_config(path, overrides);
  ASSERT_EQ(config.pipeline.size(), 3U);
  EXPECT_EQ(config.pipeline[0].id, "l2");
  EXPECT_EQ(config.pipeline[0].settings.size(), 1U);
  EXPECT_EQ(config.pipeline[1].id, "fresh");
  EXPECT_EQ(config.pipeline[2].id, "memory_profiler");
  EXPECT_EQ(config.pipeline[2].location, "--profile-memory");
}

TEST(Config, ValidationIsAFractionOrACountWrittenBackAsGiven) {
  clhost::test::TempDir dir;
  const auto none = load_config(dir.file("none.toml", "[data]\n"));
  EXPECT_FALSE(none.data.validation.enabled());
  const auto fraction = load_config(dir.file("f.toml", "[data]\nvalidation = 0.1\n"));
  EXPECT_DOUBLE_EQ(fraction.data.validation.fraction, 0.1);
  EXPECT_EQ(fraction.data.validation.samples_of(1000), 100);
  EXPECT_EQ(fraction.data.validation.samples_of(3), 1) << "at least one";
  EXPECT_NE(fraction.resolved_toml.find("validation = 0.1"), std::string::npos);
  const auto count = load_config(dir.file("c.toml", "[data]\nvalidation = 500\n"));
  EXPECT_EQ(count.data.validation.count, 500);
  EXPECT_EQ(count.data.validation.samples_of(12000), 500);
  EXPECT_NE(count.resolved_toml.find("validation = 500"), std::string::npos);
  const auto again = load_config(dir.file("again.toml", count.resolved_toml));
  EXPECT_EQ(again.resolved_json, count.resolved_json);
}

TEST(Config, MissingFileIsAConfigError) {
  try {
    (void)load_config("/nonexistent/clhost.toml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/clhost.toml: cannot open"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace

namespace {

// A run directory's config.toml is what `clhost run --resume` reads back: it must give the very
// configuration the run started with, for every shipped config and for the keys that only some
// configs have (task overrides, class lists, rotation, HDF5 data, TorchScript models, budgets).
TEST(Config, ResolvedTomlReadsBackToTheSameConfiguration) {
  clhost::test::TempDir dir;
  std::vector<std::string> paths;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(CLHOST_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() == ".toml") paths.push_back(entry.path().string());
  }
  ASSERT_GE(paths.size(), 15U) << "the shipped configs were not found";
  paths.push_back(dir.file("rich.toml", R"([run]
memory_budget = "300MiB"
checkpoint_every = 0
plugin_path = ["/opt/x"]
[data]
kind = "hdf5"
path = "/data/set.h5"
scenario = "rotated"
rotation_step = 15.5
num_tasks = 2
normalize = "standard"
max_resident = "1GiB"
[model]
kind = "torchscript"
path = "/models/m.pt"
input_shape = [1, 28, 28]
[train]
optimizer = "sgd"
lr = 0.0123456789
momentum = 0.9
[[tasks]]
name = "first"
batch_size = 16
[[tasks]]
batch_size = 32
[[pipeline]]
plugin = "ewc"
lambda = 1e-7
mode = "online"
)"));
  paths.push_back(dir.file("classes.toml", R"([data]
task_classes = [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9]]
incremental = "class"
[train]
epochs = 2
)"));
  for (const auto& path : paths) {
    const clhost::RunConfig original = clhost::load_config(path);
    const std::string copy = dir.file("copy.toml", original.resolved_toml);
    const clhost::RunConfig again = clhost::load_config(copy);
    EXPECT_EQ(again.resolved_json, original.resolved_json) << path << "\n"
                                                           << original.resolved_toml;
  }
}

}  // namespace
