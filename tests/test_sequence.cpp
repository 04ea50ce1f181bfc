// Sequence models: the built-in transformer, its exact per-sample Fisher against the per-sample
// loop, text tasks and the lower-is-better evaluation metric.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "activation_checkpoint.hpp"
#include "clhost/errors.hpp"
#include "clhost/metrics.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "fisher_layers.hpp"
#include "model.hpp"
#include "run_helpers.hpp"
#include "test_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using clhost::FisherContext;
using clhost::FisherMethod;

clhost::ModelSection tiny_transformer(bool tied) {
  clhost::ModelSection section;
  section.kind = clhost::ModelKind::kTransformer;
  section.layers = 2;
  section.heads = 2;
  section.d_model = 16;
  section.context = 8;
  section.mlp_ratio = 2;
  section.tied_head = tied;
  return section;
}

struct Fixture {
  torch::nn::Sequential model;
  clhost::TaskData task;
  FisherContext context;
};

Fixture make_fixture(bool tied, int64_t samples) {
  torch::manual_seed(5);
  Fixture fixture;
  fixture.model = clhost::make_model(tiny_transformer(tied), 8, 0, 256);
  fixture.model->to(torch::kFloat64);
  // Few distinct bytes, so that the embedding rows see repeated indices within a sample.
  const torch::Tensor windows =
      torch::randint(40, 48, {samples, 9}, torch::kInt64).to(torch::kUInt8);
  fixture.task.train_x = windows.narrow(1, 0, 8);
  fixture.task.train_y = windows.narrow(1, 1, 8);
  fixture.task.next_byte = true;
  fixture.context.model = fixture.model;
  fixture.context.task = &fixture.task;
  fixture.context.active_classes = torch::arange(256, torch::kInt64);
  fixture.context.label_map = torch::arange(256, torch::kInt64);
  fixture.context.seed = 11;
  return fixture;
}

clhost_fisher_request_t request_for(clhost_fisher_labels_t labels) {
  clhost_fisher_request_t request{};
  request.struct_size = sizeof(request);
  request.labels = labels;
  request.batch_size = 6;
  return request;
}

std::vector<torch::Tensor> fisher_of(const FisherContext& context, clhost_fisher_labels_t labels,
                                     int64_t block_size, FisherMethod method) {
  std::vector<torch::Tensor> out;
  for (const auto& parameter : context.model->parameters())
    out.push_back(torch::full({parameter.numel()}, -1.0, parameter.options().requires_grad(false)));
  clhost::diagonal_fisher(context, request_for(labels), block_size, method,
                          [&](size_t p, int64_t offset, const torch::Tensor& values) {
                            out[p].slice(0, offset, offset + values.numel()).copy_(values);
                          });
  return out;
}

std::vector<torch::Tensor> rows_of(const FisherContext& context, clhost_fisher_labels_t labels,
                                   int64_t block_size, FisherMethod method) {
  std::vector<torch::Tensor> rows;
  clhost::per_sample_gradients(
      context, request_for(labels), block_size, method,
      [&](size_t, size_t, const clhost::FisherBlock&, const torch::Tensor& chunk, int64_t, bool) {
        rows.push_back(chunk.clone());
      });
  return rows;
}

// Per parameter, relative to its largest entry (entries near zero have no meaningful relative
// error); the name of the worst parameter for the message.
std::pair<double, std::string> worst_error(torch::nn::Sequential& model,
                                           const std::vector<torch::Tensor>& a,
                                           const std::vector<torch::Tensor>& b) {
  double worst = 0.0;
  std::string name;
  const auto named = model->named_parameters();
  for (size_t p = 0; p < a.size(); ++p) {
    const double scale = b[p].abs().max().item<double>();
    const double error = (a[p] - b[p]).abs().max().item<double>() / std::max(scale, 1e-30);
    if (error >= worst) {
      worst = error;
      name = named[p].key();
    }
  }
  return {worst, name};
}

class SequenceFisher
    : public ::testing::TestWithParam<std::tuple<bool, clhost_fisher_labels_t, int64_t>> {};

TEST_P(SequenceFisher, BatchedExactEqualsThePerSampleLoopForEveryParameter) {
  const auto [tied, labels, block_size] = GetParam();
  Fixture fixture = make_fixture(tied, 14);
  const auto fast = fisher_of(fixture.context, labels, block_size, FisherMethod::kAuto);
  const auto loop = fisher_of(fixture.context, labels, block_size, FisherMethod::kPerSampleLoop);
  for (size_t p = 0; p < fast.size(); ++p) {
    EXPECT_GE(fast[p].min().item<double>(), 0.0) << "every element written";
    EXPECT_GT(loop[p].sum().item<double>(), 0.0) << "parameter " << p << " has a Fisher";
  }
  const auto [error, name] = worst_error(fixture.model, fast, loop);
  EXPECT_LE(error, 1e-5) << name;
}

TEST_P(SequenceFisher, PerSampleRowsEqualTheLoopsRows) {
  const auto [tied, labels, block_size] = GetParam();
  Fixture fixture = make_fixture(tied, 8);
  const auto fast = rows_of(fixture.context, labels, block_size, FisherMethod::kAuto);
  const auto loop = rows_of(fixture.context, labels, block_size, FisherMethod::kPerSampleLoop);
  ASSERT_EQ(fast.size(), loop.size());
  for (size_t i = 0; i < fast.size(); ++i) {
    const double scale = loop[i].abs().max().item<double>();
    EXPECT_LE((fast[i] - loop[i]).abs().max().item<double>(), 1e-5 * scale) << "chunk " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Transformer, SequenceFisher,
    ::testing::Combine(::testing::Bool(),
                       ::testing::Values(CLHOST_FISHER_LABELS_TRUE, CLHOST_FISHER_LABELS_SAMPLE),
                       // one block for everything; blocks that cut the embeddings and the MLP
                       ::testing::Values(int64_t{1} << 30, int64_t{100})));

// Otherwise the batched path would quietly be the loop, and the comparison above would be moot.
TEST(SequenceFisher, EveryTransformerParameterHasAClosedForm) {
  for (const bool tied : {false, true}) {
    auto model = clhost::make_model(tiny_transformer(tied), 8, 0, 256);
    const auto parameters = model->parameters();
    const clhost::ModelMap map = clhost::map_model(model, parameters);
    const auto named = model->named_parameters();
    for (size_t p = 0; p < parameters.size(); ++p) {
      EXPECT_FALSE(map.uses[p].empty()) << named[p].key();
    }
    // The byte embedding is also the output matrix when tied.
    EXPECT_EQ(map.uses[0].size(), tied ? 2U : 1U);
  }
}

TEST(SequenceFisher, ExpectationLabelsAreRefusedForSequences) {
  Fixture fixture = make_fixture(false, 4);
  try {
    fisher_of(fixture.context, CLHOST_FISHER_LABELS_EXPECTATION, 1 << 30, FisherMethod::kAuto);
    FAIL() << "expected a RunError";
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("labels = expectation"), std::string::npos) << e.what();
  }
}

TEST(Transformer, IsCausalAndPredictsEveryPosition) {
  torch::manual_seed(1);
  auto model = clhost::make_model(tiny_transformer(false), 8, 0, 256);
  model->eval();
  torch::Tensor bytes = torch::randint(0, 256, {3, 8}, torch::kInt64);
  const torch::Tensor before = model->forward(bytes);
  ASSERT_EQ(before.sizes(), (std::vector<int64_t>{3, 8, 256}));
  bytes.select(1, 5).fill_(7);
  const torch::Tensor after = model->forward(bytes);
  EXPECT_TRUE(torch::equal(before.narrow(1, 0, 5), after.narrow(1, 0, 5)))
      << "positions before the change do not see it";
  EXPECT_FALSE(torch::equal(before.narrow(1, 5, 3), after.narrow(1, 5, 3)));
}

// The recomputed blocks draw the same dropout masks as the forward did.
TEST(Transformer, CheckpointedBlocksWithDropoutGiveThePlainGradients) {
  clhost::ModelSection section = tiny_transformer(false);
  section.dropout = 0.2;
  torch::manual_seed(2);
  auto model = clhost::make_model(section, 8, 0, 256);
  model->to(torch::kFloat64);
  model->train();
  const torch::Tensor bytes = torch::randint(0, 256, {4, 8}, torch::kInt64);
  auto gradients = [&](int64_t segments) {
    model->zero_grad();
    torch::manual_seed(9);
    clhost::checkpointed_forward(model, bytes, segments).square().sum().backward();
    std::vector<torch::Tensor> out;
    for (const auto& p : model->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  const auto plain = gradients(1);
  const auto checkpointed = gradients(3);
  for (size_t p = 0; p < plain.size(); ++p) {
    EXPECT_TRUE(torch::allclose(plain[p], checkpointed[p], 1e-10, 1e-12)) << "parameter " << p;
  }
}

TEST(Transformer, TiedHeadSharesTheEmbeddingMatrix) {
  auto untied = clhost::make_model(tiny_transformer(false), 8, 0, 256);
  auto tied = clhost::make_model(tiny_transformer(true), 8, 0, 256);
  EXPECT_EQ(untied->parameters().size(), tied->parameters().size() + 1);
  int64_t difference = 0;
  for (const auto& p : untied->parameters()) difference += p.numel();
  for (const auto& p : tied->parameters()) difference -= p.numel();
  EXPECT_EQ(difference, 256 * 16);
}

TEST(Transformer, WindowLongerThanTheContextIsAClearError) {
  auto model = clhost::make_model(tiny_transformer(false), 8, 0, 256);
  try {
    model->forward(torch::zeros({1, 9}, torch::kInt64));
    FAIL() << "expected a RunError";
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("model.context = 8"), std::string::npos) << e.what();
  }
}

// --- text tasks ------------------------------------------------------------------------------

class TextTasks : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("clhost_text_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }

  static std::string fortunes(int count, const std::string& word) {
    std::string text;
    for (int i = 0; i < count; ++i) {
      text += word + " number " + std::to_string(i) + " says something worth reading.\n%\n";
    }
    return text;
  }

  // Text tasks drawing `train_samples` training windows each.
  static clhost::DataSection text_data(int64_t tasks, int64_t train_samples) {
    clhost::DataSection data;
    data.kind = clhost::DataKind::kText;
    data.num_tasks = tasks;
    data.train_samples_per_task = train_samples;
    return data;
  }

  // One task over `paths`.
  static std::vector<clhost::TaskOverride> one_task(std::vector<std::string> paths) {
    std::vector<clhost::TaskOverride> tasks(1);
    tasks[0].text_paths = std::move(paths);
    return tasks;
  }

  clhost::TaskSequence build(const std::vector<std::vector<std::string>>& paths,
                             int64_t context = 16) {
    clhost::DataSection data = text_data(static_cast<int64_t>(paths.size()), 50);
    std::vector<clhost::TaskOverride> tasks(paths.size());
    for (size_t k = 0; k < paths.size(); ++k) tasks[k].text_paths = paths[k];
    return clhost::build_text_tasks(data, context, tasks, 3);
  }

  std::string error_of(const std::vector<std::vector<std::string>>& paths, int64_t context = 16) {
    try {
      build(paths, context);
    } catch (const clhost::RunError& e) {
      return e.what();
    }
    return "no error";
  }

  fs::path dir_;
};

TEST_F(TextTasks, WindowsAreNextByteTargetsOfHeldOutDocuments) {
  const std::string a = write("a.txt", fortunes(40, "alpha"));
  const std::string b = write("b/one.txt", fortunes(30, "beta"));
  write("b/two.txt", fortunes(30, "gamma"));
  const clhost::TaskSequence sequence = build({{a}, {(dir_ / "b").string()}});
  ASSERT_EQ(sequence.tasks.size(), 2U);
  EXPECT_TRUE(sequence.next_byte);
  const clhost::TaskData& task = sequence.tasks[0];
  EXPECT_EQ(task.train_x.sizes(), (std::vector<int64_t>{50, 16}));
  EXPECT_TRUE(torch::equal(task.train_x.narrow(1, 1, 15), task.train_y.narrow(1, 0, 15)));
  EXPECT_GT(task.test_size(), 0);
  // The same seed gives the same windows.
  const clhost::TaskSequence again = build({{a}, {(dir_ / "b").string()}});
  EXPECT_TRUE(torch::equal(task.train_x, again.tasks[0].train_x));
  EXPECT_TRUE(torch::equal(task.test_x, again.tasks[0].test_x));
}

TEST_F(TextTasks, GzipFilesAndGlobsAreRead) {
  const std::string plain = fortunes(40, "delta");
  const std::string path = (dir_ / "c.txt.gz").string();
  gzFile out = gzopen(path.c_str(), "wb");
  gzwrite(out, plain.data(), static_cast<unsigned>(plain.size()));
  gzclose(out);
  write("d1.txt", fortunes(20, "eps"));
  write("d2.txt", fortunes(20, "zeta"));
  const auto sequence = build({{path}, {(dir_ / "d*.txt").string()}});
  EXPECT_EQ(sequence.tasks.size(), 2U);
  const torch::Tensor first = sequence.tasks[0].train_x;
  EXPECT_LT(first.max().item<int64_t>(), 128) << "decompressed text, not gzip bytes";
}

TEST_F(TextTasks, BadInputNamesTheTaskAndThePath) {
  const std::string empty = write("empty.txt", "");
  EXPECT_NE(error_of({{empty}}).find("task0: " + empty + ": is empty"), std::string::npos);
  const std::string binary = write("binary.bin", std::string("abc\0def", 7));
  EXPECT_NE(error_of({{binary}}).find(binary + ": is not text"), std::string::npos);
  const std::string glob = (dir_ / "*.nothing").string();
  EXPECT_NE(error_of({{glob}}).find(glob + ": matches no file"), std::string::npos);
  const std::string missing = (dir_ / "missing.txt").string();
  EXPECT_NE(error_of({{missing}}).find("no such file or folder"), std::string::npos);
  const std::string short_text = write("short.txt", "one\n%\ntwo\n%\nthree\n");
  EXPECT_NE(error_of({{short_text}}).find("less than one window of model.context + 1 = 17"),
            std::string::npos);
  const std::string one = write("one.txt", std::string(500, 'x'));
  EXPECT_NE(error_of({{one}}).find("1 document(s)"), std::string::npos);
}

// --- configuration and whole runs ---------------------------------------------------------------

std::string config_error(const std::string& text) {
  clhost::test::TempDir dir;
  const std::string path = dir.file("c.toml", text);
  try {
    clhost::load_config(path);
  } catch (const clhost::ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(TextConfig, MismatchedModelsAndBadKeysAreLocatedErrors) {
  EXPECT_NE(config_error("[data]\nkind = \"text\"\nlanguages = [\"en\"]\n")
                .find("c.toml:2:8: data.kind: data.kind = \"text\" (next-byte prediction) "
                      "needs model.kind = \"transformer\""),
            std::string::npos);
  EXPECT_NE(config_error("[model]\nkind = \"transformer\"\n").find("model.kind: model.kind = "),
            std::string::npos);
  const std::string text = "[data]\nkind = \"text\"\n[model]\nkind = \"transformer\"\n";
  EXPECT_NE(config_error(text).find("needs data.languages"), std::string::npos);
  const std::string languages =
      "[data]\nkind = \"text\"\nlanguages = [\"en\", \"fr\"]\n"
      "[model]\nkind = \"transformer\"\n";
  EXPECT_NE(config_error(languages).find("c.toml:3:"), std::string::npos);
  EXPECT_NE(config_error(languages).find("\"fr\" is not one of the fortunes languages"),
            std::string::npos);
  EXPECT_NE(config_error("[data]\nkind = \"text\"\nlanguages = [\"en\"]\n[model]\nkind = "
                         "\"transformer\"\nd_model = 30\n")
                .find("model.d_model: 30 is not a multiple of model.heads = 4"),
            std::string::npos);
  EXPECT_NE(config_error("[data]\nkind = \"text\"\nlanguages = [\"en\"]\n[model]\nkind = "
                         "\"transformer\"\n[[tasks]]\npath = \"x.txt\"\n")
                .find("data.languages already names each task's text"),
            std::string::npos);
  EXPECT_NE(config_error("[run]\nkeep_freed_memory = \"4GiB\"\n")
                .find("c.toml:2:21: run.keep_freed_memory: at most 2.0 GiB (2147483647 bytes)"),
            std::string::npos)
      << config_error("[run]\nkeep_freed_memory = \"4GiB\"\n");
  const std::string two_paths =
      text + "[[tasks]]\npath = [\"a.h5\", \"b.h5\"]\ntokens = \"/ids\"\n";
  EXPECT_NE(config_error(two_paths).find("c.toml:7:10: tasks[0].tokens: names a dataset of token "
                                         "ids in one HDF5 file"),
            std::string::npos)
      << config_error(two_paths);
  EXPECT_NE(config_error("[data]\nscenario = \"sources\"\nkind = \"hdf5\"\npath = \"x.h5\"\n"
                         "[[tasks]]\ngroup = \"a\"\ntokens = \"/ids\"\n")
                .find("tasks[0].tokens: names an HDF5 dataset of token ids, which only "
                      "data.kind = \"text\" reads"),
            std::string::npos);
}

// What the documents of a file were before streaming: the whole text cut with std::string::find.
std::vector<std::string> reference_documents(const std::string& text) {
  const std::string separator = text.find("\n%\n") != std::string::npos ? "\n%\n" : "\n\n";
  std::vector<std::string> out;
  size_t begin = text.rfind("%\n", 0) == 0 ? 2 : 0;
  while (begin < text.size()) {
    size_t end = text.find(separator, begin);
    if (end == std::string::npos) end = text.size();
    std::string document = text.substr(begin, end - begin);
    if (document.find_first_not_of(" \t\r\n%") != std::string::npos) out.push_back(document);
    begin = end + separator.size();
  }
  return out;
}

// Documents are cut as they stream in, across read boundaries and in a spilled store, exactly as
// cutting the whole text would: fortune files (with a leading %, runs of %), paragraphs (runs of
// blank lines), text that ends without a newline, documents of only whitespace.
TEST_F(TextTasks, DocumentsAreCutAsTheWholeTextWouldBe) {
  std::string long_fortunes = "%\n";
  for (int i = 0; i < 3000; ++i) {
    long_fortunes += "fortune " + std::to_string(i) + (i % 7 == 0 ? "\n%\n%\n" : "\n%\n");
    if (i % 11 == 0) long_fortunes += " \t\n%\n";
  }
  std::string paragraphs;
  for (int i = 0; i < 3000; ++i) {
    paragraphs += "paragraph " + std::to_string(i) + "\nline two" +
                  std::string(static_cast<size_t>(2 + i % 3), '\n');
  }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"fortunes.txt", long_fortunes},
      {"paragraphs.txt", paragraphs + "last words"},
      {"prefix.txt", "%\n%\nfirst\n%\nsecond"},
      {"mixed.txt", "a\n\nb\n%\nc\n\n\nd\n"},
      {"blank.txt", "\n\n\nx\n\n\n\n\ny\n\n"}};
  for (const auto& [name, text] : cases) {
    const std::string path = write(name, text);
    const std::vector<std::string> expected = reference_documents(text);
    EXPECT_EQ(clhost::text_file_documents(path, int64_t{1} << 30), expected) << name;
    EXPECT_EQ(clhost::text_file_documents(path, 100), expected) << name << ", spilled";
  }
}

// The document numbers ("number N says") whose whole number appears in the windows' bytes.
std::set<int> document_numbers(const torch::Tensor& windows) {
  std::set<int> numbers;
  const torch::Tensor bytes = windows.contiguous();
  for (int64_t row = 0; row < bytes.size(0); ++row) {
    const auto* data = bytes[row].data_ptr<uint8_t>();
    const std::string text(reinterpret_cast<const char*>(data), static_cast<size_t>(bytes.size(1)));
    static const std::regex kNumber("number ([0-9]+) says");
    for (std::sregex_iterator it(text.begin(), text.end(), kNumber), end; it != end; ++it) {
      numbers.insert(std::stoi((*it)[1]));
    }
  }
  return numbers;
}

// data.validation holds out whole documents of the training side: no validation text is in a
// training window; without it the training windows are what they were.
TEST_F(TextTasks, ValidationHoldsOutWholeTrainingDocuments) {
  const std::string text = write("v.txt", fortunes(200, "zeta"));
  clhost::DataSection data = text_data(1, 300);
  std::vector<clhost::TaskOverride> tasks = one_task({text});
  const auto plain = clhost::build_text_tasks(data, 60, tasks, 2);
  data.validation.fraction = 0.2;
  const auto held = clhost::build_text_tasks(data, 60, tasks, 2);
  const clhost::TaskData& task = held.tasks[0];
  ASSERT_GT(task.validation_size(), 0);
  EXPECT_EQ(plain.tasks[0].validation_size(), 0);
  const std::set<int> train = document_numbers(task.train_x);
  const std::set<int> validation = document_numbers(task.validation_x);
  const std::set<int> test = document_numbers(task.test_x);
  EXPECT_GE(validation.size(), 20U);  // of the 36 held-out documents (0.2 of 180)
  for (int number : validation) {
    EXPECT_EQ(train.count(number), 0U) << "document " << number << " is in both";
    EXPECT_EQ(test.count(number), 0U) << "document " << number << " is in both";
  }
  EXPECT_TRUE(torch::equal(task.test_x, plain.tasks[0].test_x)) << "the test side is unchanged";
  EXPECT_TRUE(torch::equal(task.validation_x.narrow(1, 1, 59), task.validation_y.narrow(1, 0, 59)));
  // A count is a number of documents; one that takes every training document is refused.
  data.validation = clhost::ValidationSplit{0.0, 180};
  try {
    (void)clhost::build_text_tasks(data, 60, tasks, 2);
    FAIL() << "a task without training documents was accepted";
  } catch (const clhost::RunError& e) {
    EXPECT_NE(std::string(e.what()).find("data.validation holds out 180 of the 180 training "
                                         "documents, leaving none to train on"),
              std::string::npos)
        << e.what();
  }
}

// A task whose text passes data.max_resident reads its windows from disk batch by batch: the
// same windows, inputs and targets as when resident.
TEST_F(TextTasks, SpilledTextGivesTheResidentWindows) {
  const std::string plain = fortunes(300, "delta");
  const std::string gz = (dir_ / "c.txt.gz").string();
  gzFile out = gzopen(gz.c_str(), "wb");
  gzwrite(out, plain.data(), static_cast<unsigned>(plain.size()));
  gzclose(out);
  const std::string other = write("e.txt", fortunes(200, "epsilon"));
  clhost::DataSection data = text_data(1, 200);
  std::vector<clhost::TaskOverride> tasks = one_task({gz, other});
  const auto resident = clhost::build_text_tasks(data, 24, tasks, 9);
  data.max_resident_bytes = 4096;
  const auto spilled = clhost::build_text_tasks(data, 24, tasks, 9);
  EXPECT_FALSE(resident.streamed);
  EXPECT_TRUE(spilled.streamed);
  const clhost::TaskData& a = resident.tasks[0];
  const clhost::TaskData& b = spilled.tasks[0];
  EXPECT_FALSE(b.train_x.defined()) << "spilled text is not resident";
  ASSERT_TRUE(b.train_source && b.test_source);
  ASSERT_EQ(a.train_size(), b.train_size());
  ASSERT_EQ(a.test_size(), b.test_size());
  const torch::Tensor rows = torch::tensor({5L, 0L, 199L, 17L, 5L}, torch::kInt64);
  const clhost::Samples want = a.train_rows(rows);
  const clhost::Samples got = b.train_rows(rows);
  EXPECT_TRUE(torch::equal(want.x, got.x));
  EXPECT_TRUE(torch::equal(want.y, got.y));
  const clhost::Samples held_out = b.test_range(0, b.test_size());
  EXPECT_TRUE(torch::equal(a.test_x, held_out.x));
  EXPECT_TRUE(torch::equal(a.test_y, held_out.y));
  EXPECT_EQ(b.train_source->bytes_read(), 5 * 25);
}

// Writes `ids` as a dataset of the given HDF5 type and shape (1-D unless rows > 0) in a new file.
void write_token_file(const std::string& path, const std::string& dataset,
                      const std::vector<int32_t>& ids, hid_t type, hsize_t rows = 0) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const std::vector<hsize_t> dims =
      rows > 0 ? std::vector<hsize_t>{rows, ids.size() / rows} : std::vector<hsize_t>{ids.size()};
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t lists = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lists, 1);
  const hid_t set = H5Dcreate2(file, dataset.c_str(), type, space, lists, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(set, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids.data());
  H5Dclose(set);
  H5Pclose(lists);
  H5Sclose(space);
  H5Fclose(file);
}

// An HDF5 array of byte ids is a task's text: the same documents and windows as the text file
// with those bytes; ids that are not bytes, and arrays that are not 1-D, are located errors.
TEST_F(TextTasks, HdfTokenIdsAreATasksText) {
  const std::string text = fortunes(120, "tokens");
  const std::string file = write("tokens.txt", text);
  std::vector<int32_t> ids(text.begin(), text.end());
  const std::string h5 = (dir_ / "tokens.h5").string();
  write_token_file(h5, "/corpus/en", ids, H5T_STD_U16LE);
  clhost::DataSection data = text_data(1, 40);
  std::vector<clhost::TaskOverride> tasks = one_task({file});
  const auto from_text = clhost::build_text_tasks(data, 16, tasks, 4);
  tasks[0].text_paths = {h5};
  tasks[0].tokens = "/corpus/en";
  const auto from_ids = clhost::build_text_tasks(data, 16, tasks, 4);
  EXPECT_TRUE(torch::equal(from_text.tasks[0].train_x, from_ids.tasks[0].train_x));
  EXPECT_TRUE(torch::equal(from_text.tasks[0].test_y, from_ids.tasks[0].test_y));
  data.max_resident_bytes = 512;  // spilled as text files are
  const auto spilled = clhost::build_text_tasks(data, 16, tasks, 4);
  EXPECT_TRUE(torch::equal(from_text.tasks[0].test_x,
                           spilled.tasks[0].test_range(0, spilled.tasks[0].test_size()).x));

  const auto error_for = [&](const std::string& dataset) {
    tasks[0].tokens = dataset;
    try {
      (void)clhost::build_text_tasks(data, 16, tasks, 4);
    } catch (const clhost::RunError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_for("/nothing").find(h5 + ":/nothing (tokens): no such dataset"),
            std::string::npos);
  ids[77] = 300;
  write_token_file(h5, "/wide", ids, H5T_STD_I32LE);
  EXPECT_NE(error_for("/wide").find("token id 300 at index 77 is outside the transformer's byte "
                                    "vocabulary 0..255"),
            std::string::npos);
  ids.resize(ids.size() / 2 * 2);
  write_token_file(h5, "/matrix", ids, H5T_STD_I32LE, 2);
  EXPECT_NE(error_for("/matrix").find("token ids must be a 1-D array (rank 2)"), std::string::npos);
}

// A run whose text is spilled to disk trains and evaluates exactly as the resident run, with EWC's
// Fisher pass reading its windows from disk too.
TEST_F(TextTasks, SpilledRunGivesTheResidentResults) {
  const std::string first = write("first.txt", fortunes(80, "first"));
  const std::string second = write("second.txt", fortunes(80, "second"));
  const std::string config = write("run.toml", R"([run]
checkpoint_every = 0
[data]
kind = "text"
train_samples_per_task = 64
test_samples_per_task = 8
[model]
kind = "transformer"
layers = 1
heads = 2
d_model = 16
context = 16
[train]
batch_size = 8
iterations = 6
[[pipeline]]
plugin = "ewc"
labels = "true"
fisher_samples = 16
[[tasks]]
path = ")" + first + R"("
[[tasks]]
path = ")" + second + R"("
)");
  const auto resident = clhost::test::run_quietly(config, (dir_ / "resident").string());
  const auto spilled = clhost::test::run_quietly(config, (dir_ / "spilled").string(),
                                                 {"data.max_resident=\"1KiB\""});
  EXPECT_EQ(resident.accuracy, spilled.accuracy);
  const auto results =
      nlohmann::json::parse(clhost::test::read_file((dir_ / "spilled" / "results.json").string()));
  EXPECT_TRUE(results["scenario"]["streamed"].get<bool>());
  EXPECT_GT(results["scenario"]["streamed_bytes_read"].get<int64_t>(), (6 * 8 + 16) * 17);
  EXPECT_EQ(results["config"]["data"]["max_resident"], 1024);
}

struct EwcLayout {
  const char* name;
  const char* settings;  // TOML lines of the ewc pipeline entry
  const char* state;     // part of results.json plugins[0].report.state_layout
};

class TransformerEwcLayout : public TextTasks, public ::testing::WithParamInterface<EwcLayout> {};

// Every EWC state layout consolidates the transformer and its penalty acts on the second task;
// the memory profiler follows the run.
TEST_P(TransformerEwcLayout, ConsolidatesAndPenalizesWithTheMemoryProfiler) {
  const std::string first = write("first.txt", fortunes(60, "first"));
  const std::string second = write("second.txt", fortunes(60, "second"));
  const std::string config = write("run.toml", std::string(R"([run]
checkpoint_every = 0
[data]
kind = "text"
train_samples_per_task = 64
test_samples_per_task = 8
[model]
kind = "transformer"
layers = 1
heads = 2
d_model = 16
context = 16
[train]
batch_size = 8
iterations = 6
[[pipeline]]
plugin = "memory_profiler"
interval_ms = 5
[[pipeline]]
plugin = "ewc"
labels = "sample"
lambda = 1000.0
fisher_samples = 16
fisher_batch_size = 4
)") + GetParam().settings + R"(
[[tasks]]
path = ")" + first + R"("
[[tasks]]
path = ")" + second + R"("
)");
  (void)clhost::test::run_quietly(config, (dir_ / "run").string());
  const auto results =
      nlohmann::json::parse(clhost::test::read_file((dir_ / "run" / "results.json").string()));
  const auto& ewc = results["plugins"][1];
  EXPECT_NE(ewc["report"]["state_layout"].get<std::string>().find(GetParam().state),
            std::string::npos)
      << ewc["report"];
  EXPECT_EQ(ewc["report"]["tasks_consolidated"], 2);
  const std::string metrics = clhost::test::read_file((dir_ / "run" / "metrics.csv").string());
  std::istringstream rows(metrics);
  double second_task_penalty = 0.0;
  for (std::string row; std::getline(rows, row);) {
    if (row.rfind("1,", 0) != 0) continue;
    std::vector<std::string> cells;
    std::istringstream fields(row);
    for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
    second_task_penalty = std::max(second_task_penalty, std::stod(cells.at(4)));
  }
  EXPECT_GT(second_task_penalty, 0.0) << metrics;
  const auto& profiler = results["plugins"][0]["report"];
  EXPECT_GT(profiler["peak"]["rss_bytes"].get<int64_t>(), 0) << profiler;
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, TransformerEwcLayout,
    ::testing::Values(EwcLayout{"int4_int8", "", "4-bit Fisher, 8-bit anchor per 32"},
                      EwcLayout{"int8_fp16", "state_dtype = \"int8_fp16\"",
                                "int8 Fisher, fp16 anchor"},
                      EwcLayout{"int8", "state_dtype = \"int8\"", "merged quadratic, int8)"},
                      EwcLayout{"fp32_merged", "state_dtype = \"fp32\"", "merged quadratic, fp32)"},
                      EwcLayout{"separate", "[fisher_computation]\nuse_memory_efficient = false",
                                "separate (fp32, per task)"},
                      EwcLayout{"online",
                                "mode = \"online\"\ngamma = 0.9\n[fisher_computation]\n"
                                "use_memory_efficient = false",
                                "online (fp32)"}),
    [](const auto& test_case) { return std::string(test_case.param.name); });

// The low-rank Fisher (clhost.sample_grads/1 rows) and L2 run on the transformer end to end.
TEST_F(TextTasks, LowRankFisherAndL2RunOnTheTransformer) {
  const std::string first = write("first.txt", fortunes(60, "first"));
  const std::string second = write("second.txt", fortunes(60, "second"));
  const std::string config = write("run.toml", R"([run]
checkpoint_every = 0
[data]
kind = "text"
train_samples_per_task = 64
test_samples_per_task = 8
[model]
kind = "transformer"
layers = 1
heads = 2
d_model = 16
context = 16
tied_head = true
[train]
batch_size = 8
iterations = 5
[[pipeline]]
plugin = "lowrank_fisher"
labels = "sample"
fisher_samples = 16
[[pipeline]]
plugin = "l2"
[[tasks]]
path = ")" + first + R"("
[[tasks]]
path = [")" + second + R"("]
)");
  const auto summary = clhost::test::run_quietly(config, (dir_ / "run").string());
  EXPECT_FALSE(summary.metric.higher_is_better);
  ASSERT_EQ(summary.accuracy.size(), 2U);
  const auto results =
      nlohmann::json::parse(clhost::test::read_file((dir_ / "run" / "results.json").string()));
  EXPECT_GT(results["plugins"][0]["report"]["rank"].get<int64_t>(), 0) << results["plugins"][0];
  EXPECT_TRUE(fs::exists(dir_ / "run" / "bits_per_byte_matrix.csv"));
  // The report names the metric and draws its matrix.
  const auto report =
      clhost::test::run_command(std::string(CLHOST_BINARY) + " report " + (dir_ / "run").string());
  ASSERT_EQ(report.exit_code, 0) << report.output;
  const std::string html = clhost::test::read_file((dir_ / "run" / "report.html").string());
  EXPECT_NE(html.find("Bits per byte matrix"), std::string::npos);
  EXPECT_NE(html.find("average bits per byte"), std::string::npos);
  EXPECT_EQ(html.find("Accuracy matrix"), std::string::npos);
}

// The dynamic policy recovers from out-of-memory in the transformer's steps (micro-batches of
// byte windows) and the run completes.
TEST_F(TextTasks, OutOfMemoryInTheTransformerIsRecoveredByTheDynamicPolicy) {
  const std::string first = write("first.txt", fortunes(400, "first"));
  const std::string second = write("second.txt", fortunes(400, "second"));
  const std::string config = write("run.toml", R"([run]
checkpoint_every = 0
memory_budget = "40MiB"
[data]
kind = "text"
train_samples_per_task = 1000
test_samples_per_task = 10
[model]
kind = "transformer"
layers = 2
heads = 2
d_model = 32
context = 64
[train]
batch_size = 256
iterations = 3
eval_batch_size = 10
[[pipeline]]
plugin = "dynamic"
[[tasks]]
path = ")" + first + R"("
[[tasks]]
path = ")" + second + R"("
)");
  (void)clhost::test::run_quietly(config, (dir_ / "run").string());
  const auto results =
      nlohmann::json::parse(clhost::test::read_file((dir_ / "run" / "results.json").string()));
  EXPECT_GT(results["memory"]["out_of_memory_retries"].get<int64_t>(), 0) << results["memory"];
  EXPECT_EQ(results["memory"]["samples_in_optimizer_steps"].get<int64_t>(), 2 * 3 * 256);
}

// A Fisher plug-in left at labels = "expectation" is refused before training, not at the end of
// the first task.
TEST_F(TextTasks, ExpectationLabelsOnTextAreRefusedAtCreate) {
  const std::string text = write("t.txt", fortunes(60, "t"));
  const std::string config = write("run.toml",
                                   "[data]\nkind = \"text\"\n[model]\nkind = "
                                   "\"transformer\"\n[[pipeline]]\nplugin = "
                                   "\"ewc\"\n[[tasks]]\npath = \"" +
                                       text + "\"\n");
  try {
    clhost::test::run_quietly(config, (dir_ / "run").string());
    FAIL() << "expected a PluginError";
  } catch (const clhost::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("set labels = \"true\""), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "run" / "checkpoints"));
}

// --- the lower-is-better metric --------------------------------------------------------------

TEST(EvaluationMetric, LowerIsBetterKeepsTheSignsMeaning) {
  // Bits per byte: task 0 rises from 2.0 to 3.0 (forgotten), task 1 learned to 1.5.
  const clhost::AccuracyMatrix bpb = {{2.0, 6.0}, {3.0, 1.5}};
  const auto metrics = clhost::compute_metrics(bpb, {8.0, 8.0}, false);
  EXPECT_DOUBLE_EQ(metrics.average_accuracy, 2.25);
  EXPECT_DOUBLE_EQ(*metrics.forgetting, 1.0);          // worse by one bit per byte
  EXPECT_DOUBLE_EQ(*metrics.backward_transfer, -1.0);  // negative: it got worse
  EXPECT_DOUBLE_EQ(*metrics.forward_transfer, 2.0);    // 8.0 -> 6.0 before training task 1
}

}  // namespace
