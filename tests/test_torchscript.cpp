// TorchScript models: trained like the built-in ones, Fisher paths, saved modules, bad inputs.
// The .pt files come from tests/fixtures/make_fixtures.py (CTest fixture "python_fixtures").
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "fisher.hpp"
#include "model.hpp"
#include "run_helpers.hpp"
#include "scripted_model.hpp"
#include "test_helpers.hpp"

namespace {

std::string fixture(const std::string& name) {
  return std::string(CLHOST_FIXTURE_DIR) + "/" + name;
}

#define REQUIRE_FIXTURES()                                                         \
  if (!std::filesystem::exists(fixture("mlp_32.pt"))) {                            \
    GTEST_SKIP() << "no fixtures in " CLHOST_FIXTURE_DIR                           \
                    ": run tests/fixtures/make_fixtures.py (needs python3-torch)"; \
  }

clhost::ModelSection scripted_section(const std::string& path, std::vector<int64_t> shape = {}) {
  clhost::ModelSection section;
  section.kind = clhost::ModelKind::kTorchScript;
  section.path = path;
  section.input_shape = std::move(shape);
  return section;
}

std::string load_error(const clhost::ModelSection& section, int64_t classes = 10) {
  try {
    clhost::load_scripted_model(section, 784, classes);
  } catch (const clhost::RunError& e) {
    return e.what();
  }
  return "";
}

// Writes a copy of the scripted MLP holding the built-in MLP's initial weights for `seed`.
std::string scripted_copy_of_builtin(const clhost::test::TempDir& dir, uint64_t seed,
                                     const std::vector<int64_t>& hidden) {
  torch::manual_seed(seed);  // what the runner does before building its model
  clhost::ModelSection section;
  section.hidden = hidden;
  const auto builtin = clhost::make_model(section, 784, 28, 10);
  torch::jit::Module module = torch::jit::load(fixture("mlp_400_400.pt"));
  const auto source = builtin->parameters();
  size_t index = 0;
  torch::NoGradGuard no_grad;
  for (auto parameter : module.parameters()) parameter.copy_(source.at(index++));
  EXPECT_EQ(index, source.size());
  const std::string path = dir.path("same_weights.pt");
  module.save(path);
  return path;
}

std::vector<double> loss_column(const std::string& run_dir) {
  std::vector<double> out;
  std::istringstream in(clhost::test::read_file(run_dir + "/metrics.csv"));
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream row(line);
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    out.push_back(std::stod(cells.at(3)));
  }
  return out;
}

TEST(TorchScript, ScriptedMlpTrainsLikeTheBuiltInMlpWithTheSameWeights) {
  REQUIRE_FIXTURES();
  clhost::test::TempDir dir;
  const std::string scripted = scripted_copy_of_builtin(dir, 5, {400, 400});
  const std::string base =
      "[run]\nseed = 5\nthreads = 1\nlog_every = 1\n"
      "[data]\nnum_tasks = 2\ntrain_samples_per_task = 400\ntest_samples_per_task = 200\n"
      "[train]\nbatch_size = 32\niterations = 15\n"
      "[[pipeline]]\nplugin = \"ewc\"\nlambda = 100.0\n";
  const auto builtin = clhost::test::run_quietly(
      dir.file("builtin.toml", base + "[model]\nhidden = [400, 400]\n"), dir.path("builtin"));
  const auto script = clhost::test::run_quietly(
      dir.file("script.toml",
               base + "[model]\nkind = \"torchscript\"\npath = \"" + scripted + "\"\n"),
      dir.path("script"));
  const auto a = loss_column(dir.path("builtin"));
  const auto b = loss_column(dir.path("script"));
  ASSERT_EQ(a.size(), 30U);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << "row " << i;
  for (size_t i = 0; i < builtin.accuracy.size(); ++i) {
    for (size_t j = 0; j < builtin.accuracy[i].size(); ++j) {
      EXPECT_NEAR(builtin.accuracy[i][j], script.accuracy[i][j], 1e-9);
    }
  }
  // The trained module of each task, loadable again; the last one is the trained model.
  torch::jit::Module saved = torch::jit::load(dir.path("script") + "/model_task_2.pt");
  torch::jit::Module initial = torch::jit::load(scripted);
  const auto trained = saved.parameters();
  const auto before = initial.parameters();
  EXPECT_FALSE(torch::equal(*trained.begin(), *before.begin())) << "training changed the weights";
  EXPECT_TRUE(std::filesystem::exists(dir.path("script") + "/model_task_1.pt"));
  const auto inspect = clhost::test::run_command(std::string(CLHOST_BINARY) + " fisher inspect " +
                                                 dir.path("script") + "/fisher.h5");
  EXPECT_NE(inspect.output.find("  0.weight "), std::string::npos)
      << "the Fisher store keeps the Python parameter names: " << inspect.output;
  const std::string results = clhost::test::read_file(dir.path("script") + "/results.json");
  EXPECT_NE(results.find("2 (Linear): batched exact"), std::string::npos);
}

clhost::TaskData random_task(int64_t samples) {
  clhost::TaskData task;
  task.train_x = torch::rand({samples, 784});
  task.train_y = torch::randint(0, 10, {samples}, torch::kInt64);
  return task;
}

std::vector<torch::Tensor> fisher_of(torch::nn::Sequential model, const clhost::TaskData& task,
                                     clhost::FisherMethod method) {
  clhost::FisherContext context;
  context.model = model;
  context.task = &task;
  context.active_classes = torch::arange(10, torch::kInt64);
  context.label_map = torch::arange(10, torch::kInt64);
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = CLHOST_FISHER_LABELS_TRUE;
  request.batch_size = 16;
  std::vector<torch::Tensor> out;
  for (const auto& parameter : model->parameters())
    out.push_back(torch::zeros({parameter.numel()}));
  clhost::diagonal_fisher(context, request, 1 << 30, method,
                          [&](size_t p, int64_t offset, const torch::Tensor& values) {
                            out[p].slice(0, offset, offset + values.numel()).copy_(values);
                          });
  return out;
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b,
                  double tolerance) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t p = 0; p < a.size(); ++p) {
    const double scale = b[p].abs().max().item<double>();
    EXPECT_GT(scale, 0.0) << "parameter " << p;
    EXPECT_LE((a[p] - b[p]).abs().max().item<double>(), tolerance * scale) << "parameter " << p;
  }
}

TEST(TorchScript, FisherOfTheScriptedMlpEqualsTheBuiltInMlps) {
  REQUIRE_FIXTURES();
  clhost::test::TempDir dir;
  const std::string path = scripted_copy_of_builtin(dir, 2, {400, 400});
  torch::manual_seed(2);
  clhost::ModelSection section;
  const auto builtin = clhost::make_model(section, 784, 28, 10);
  const auto scripted = clhost::load_scripted_model(scripted_section(path), 784, 10);
  torch::manual_seed(9);
  const clhost::TaskData task = random_task(48);
  expect_close(fisher_of(scripted.net, task, clhost::FisherMethod::kAuto),
               fisher_of(builtin, task, clhost::FisherMethod::kAuto), 1e-5);
}

TEST(TorchScript, BatchedFisherOfTracedAndScriptedCnnsEqualsThePerSampleLoop) {
  REQUIRE_FIXTURES();
  for (const char* name : {"cnn_traced.pt", "cnn_scripted.pt"}) {
    SCOPED_TRACE(name);
    const auto model =
        clhost::load_scripted_model(scripted_section(fixture(name), {1, 28, 28}), 784, 10);
    ASSERT_EQ(model.layer_notes.size(), 10U);
    EXPECT_EQ(model.layer_notes[0], "0 (Conv2d): batched exact");
    EXPECT_EQ(model.layer_notes[3], "3 (Conv2d): batched exact");  // padding 1
    EXPECT_EQ(model.layer_notes[9], "9 (Linear): batched exact");
    torch::manual_seed(4);
    const clhost::TaskData task = random_task(24);
    expect_close(fisher_of(model.net, task, clhost::FisherMethod::kAuto),
                 fisher_of(model.net, task, clhost::FisherMethod::kPerSampleLoop), 1e-4);
  }
}

TEST(TorchScript, AForwardThatIsNotAChainIsTrainedWholeWithThePerSampleFisher) {
  REQUIRE_FIXTURES();
  const auto model =
      clhost::load_scripted_model(scripted_section(fixture("custom_forward.pt")), 784, 10);
  ASSERT_EQ(model.layer_notes.size(), 1U);
  EXPECT_EQ(model.layer_notes[0], "(whole model) (CustomForward): per-sample loop");
  EXPECT_EQ(model.parameter_names,
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));
  torch::manual_seed(4);
  const clhost::TaskData task = random_task(8);
  const auto fisher = fisher_of(model.net, task, clhost::FisherMethod::kAuto);
  EXPECT_GT(fisher[0].sum().item<double>(), 0.0);
}

TEST(TorchScript, NestedSequentialsAreFlattenedUnderTheirPythonNames) {
  REQUIRE_FIXTURES();
  const auto model =
      clhost::load_scripted_model(scripted_section(fixture("mlp_nested.pt")), 784, 10);
  EXPECT_EQ(model.parameter_names,
            (std::vector<std::string>{"0.0.weight", "0.0.bias", "1.weight", "1.bias"}));
  EXPECT_EQ(model.layer_notes.front(), "0.0 (Linear): batched exact");
}

TEST(TorchScript, Float64ModelsAreConvertedAndTrain) {
  REQUIRE_FIXTURES();
  const auto model =
      clhost::load_scripted_model(scripted_section(fixture("mlp_float64.pt")), 784, 10);
  for (const auto& parameter : model.net->parameters())
    EXPECT_EQ(parameter.scalar_type(), torch::kFloat32);
}

TEST(TorchScript, BadModelsAreRefusedWithTheReason) {
  REQUIRE_FIXTURES();
  const std::vector<std::pair<clhost::ModelSection, std::string>> cases = {
      {scripted_section(fixture("missing.pt")), "missing.pt\": no such file"},
      {scripted_section(fixture("not_torchscript.pt")), "not a TorchScript archive"},
      {scripted_section(fixture("two_inputs.pt")),
       "forward must take one Tensor and return one Tensor"},
      {scripted_section(fixture("tuple_output.pt")),
       "forward must take one Tensor and return one Tensor"},
      {scripted_section(fixture("seven_classes.pt")),
       "forward returns [2, 7] for 2 samples; it must return logits [N, data.num_classes] = [2, "
       "10]"},
      {scripted_section(fixture("mlp_32.pt"), {3, 28, 28}),
       "model.input_shape = [3, 28, 28] holds 2352 values per sample, but the data has 784"},
      {scripted_section(fixture("cnn_traced.pt")),
       "forward on a zero batch of shape [2, 784] failed (set model.input_shape"},
  };
  for (const auto& [section, expected] : cases) {
    const std::string message = load_error(section);
    EXPECT_NE(message.find(expected), std::string::npos) << "got: " << message;
    EXPECT_NE(message.find("model.path"), std::string::npos) << message;
  }
}

TEST(TorchScript, ConfigNeedsAPathAndKeepsTorchScriptKeysToTorchScript) {
  clhost::test::TempDir dir;
  auto error_of = [&](const std::string& body) {
    try {
      clhost::load_config(dir.file("c.toml", body));
    } catch (const clhost::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("[model]\nkind = \"torchscript\"\n")
                .find("c.toml:2:8: model.kind: \"torchscript\" needs model.path"),
            std::string::npos)
      << error_of("[model]\nkind = \"torchscript\"\n");
  EXPECT_NE(error_of("[model]\ninput_shape = [1, 28, 28]\n")
                .find("model.input_shape: has no effect here: it applies only with model.kind = "
                      "\"torchscript\""),
            std::string::npos);
}

}  // namespace

namespace {

// The fenced block of `language` that follows `heading` in a Markdown file.
std::string fenced_block(const std::string& markdown, const std::string& heading,
                         const std::string& language) {
  const size_t section = markdown.find(heading);
  const size_t open = markdown.find("```" + language + "\n", section);
  const size_t body = open + 4 + language.size();
  return markdown.substr(body, markdown.find("```", body) - body);
}

TEST(TorchScript, PythonMadeModelAndHdf5SourcesRunStreamedWithEwc) {
  REQUIRE_FIXTURES();
  clhost::test::TempDir dir;
  // Both made by make_fixtures.py: the model in TorchScript, the tasks as two HDF5 groups.
  const std::string config = dir.file(
      "run.toml", "[run]\nseed = 0\n[data]\nkind = \"hdf5\"\npath = \"" + fixture("quadrants.h5") +
                      "\"\nnum_classes = 4\nscenario = \"sources\"\nmax_resident = \"16KiB\"\n"
                      "[[tasks]]\nname = \"top\"\ngroup = \"/task_a\"\n"
                      "[[tasks]]\nname = \"bottom\"\ngroup = \"/task_b\"\n"
                      "[model]\nkind = \"torchscript\"\npath = \"" +
                      fixture("mlp_144_4.pt") +
                      "\"\n[train]\nbatch_size = 32\niterations = 60\n"
                      "[[pipeline]]\nplugin = \"ewc\"\nlambda = 100.0\n");
  const auto summary = clhost::test::run_quietly(config, dir.path("run"));
  ASSERT_EQ(summary.accuracy.size(), 2U);
  // Each class is a bright quadrant: both tasks are learnt and EWC keeps the first.
  EXPECT_GT(summary.accuracy[0][0], 0.95);
  EXPECT_GT(summary.accuracy[1][0], 0.9);
  EXPECT_GT(summary.accuracy[1][1], 0.95);
  const auto results =
      nlohmann::json::parse(clhost::test::read_file(dir.path("run") + "/results.json"));
  EXPECT_EQ(results["scenario"]["kind"], "sources");
  EXPECT_EQ(results["scenario"]["streamed"], true);
  EXPECT_GT(results["scenario"]["streamed_bytes_read"].get<int64_t>(), 0);
  EXPECT_EQ(results["tasks"][0]["classes"], nlohmann::json({0, 1}));
  EXPECT_EQ(results["tasks"][1]["classes"], nlohmann::json({2, 3}));
  EXPECT_TRUE(std::filesystem::exists(dir.path("run") + "/model_task_2.pt"));
}

TEST(TorchScript, TheGuidesPythonSnippetAndTomlRunAsWritten) {
  REQUIRE_FIXTURES();
  clhost::test::TempDir dir;
  const std::string guide = clhost::test::read_file(CLHOST_SOURCE_DIR "/docs/models-and-data.md");
  (void)dir.file("export.py", fenced_block(guide, "## 1. Export from Python", "python"));
  (void)dir.file("run.toml", fenced_block(guide, "## 2. Run it", "toml"));
  const auto exported =
      clhost::test::run_command("cd " + dir.path() + " && " CLHOST_SYSTEM_PYTHON " export.py");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  const auto run = clhost::test::run_command(
      "cd " + dir.path() + " && " CLHOST_BINARY " run --config run.toml --quiet --plugin-path " +
      CLHOST_PLUGIN_DIR +
      " --output out --set train.iterations=10 --set data.train_samples_per_task=300"
      " --set data.test_samples_per_task=100");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_TRUE(std::filesystem::exists(dir.path("out") + "/model_task_5.pt"));
  const std::string results = clhost::test::read_file(dir.path("out") + "/results.json");
  EXPECT_NE(results.find("3 (Conv2d): batched exact"), std::string::npos);
}

}  // namespace

namespace {

// A TorchScript CNN killed mid-task and resumed: its parameters live in the archive's module and
// are restored in place, so the saved modules and results equal an uninterrupted run's.
TEST(TorchScript, KilledAndResumedRunEqualsUninterruptedOne) {
  REQUIRE_FIXTURES();
  clhost::test::TempDir dir;
  const std::string config =
      dir.file("cnn.toml",
               "[run]\nseed = 2\ncheckpoint_every = 30\n[data]\nnum_tasks = 5\n"
               "train_samples_per_task = 300\ntest_samples_per_task = 100\n"
               "[model]\nkind = \"torchscript\"\npath = \"" +
                   fixture("cnn_scripted.pt") +
                   "\"\ninput_shape = [1, 28, 28]\n[train]\nbatch_size = 16\niterations = 40\n"
                   "[[pipeline]]\nplugin = \"ewc\"\nfisher_samples = 50\n");
  const std::string run = std::string(CLHOST_BINARY) + " run -q --plugin-path " +
                          CLHOST_PLUGIN_DIR + " --config " + config + " --output ";
  ASSERT_EQ(clhost::test::run_command(run + dir.path("reference")).exit_code, 0);
  const auto killed =
      clhost::test::run_command("CLHOST_TEST_KILL_AT=step:70 " + run + dir.path("killed"));
  ASSERT_FALSE(std::filesystem::exists(dir.path("killed") + "/results.json")) << killed.output;
  const auto resumed = clhost::test::run_command(std::string(CLHOST_BINARY) + " run -q --resume " +
                                                 dir.path("killed"));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto reference =
      nlohmann::json::parse(clhost::test::read_file(dir.path("reference") + "/results.json"));
  const auto continued =
      nlohmann::json::parse(clhost::test::read_file(dir.path("killed") + "/results.json"));
  EXPECT_EQ(reference["accuracy_matrix"], continued["accuracy_matrix"]);
  EXPECT_EQ(reference["metrics"], continued["metrics"]);
  EXPECT_EQ(continued["resumes"].size(), 1U);
  for (int task = 1; task <= 5; ++task) {
    const std::string name = "/model_task_" + std::to_string(task) + ".pt";
    EXPECT_EQ(clhost::test::read_file(dir.path("reference") + name),
              clhost::test::read_file(dir.path("killed") + name))
        << name;
  }
}

}  // namespace
