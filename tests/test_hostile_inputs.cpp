// Files a user can be handed — a checkpoint, a dataset, a --set value — that lie about their sizes
// or name what they should not: each is refused with a message naming what is wrong, before
// anything is allocated or read on its word. (The fuzz targets in tests/fuzz search for more;
// these are the cases they found or that reading the readers did.)
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clhost/config.hpp"
#include "clhost/errors.hpp"
#include "data.hpp"
#include "run_state.hpp"
#include "test_helpers.hpp"
#include "training_checkpoint.hpp"

namespace {

using nlohmann::json;

// The message of the RunError (or ConfigError) `read` throws; fails the test when it throws none.
template <class Error, class Read>
std::string error_of(Read read) {
  try {
    read();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return {};
}

std::string idx_header(const std::vector<uint32_t>& shape) {
  std::string out{'\0', '\0', '\x08', static_cast<char>(shape.size())};
  for (const uint32_t size : shape) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(size >> shift));
  }
  return out;
}

TEST(HostileInputs, ASetValueThatIsNeitherTomlNorUtf8IsRefusedNamingTheKey) {
  clhost::test::TempDir dir;
  const std::string config = dir.file("c.toml", "[run]\nname = \"x\"\n");
  clhost::ConfigOverrides overrides;
  overrides.set = {"run.name=caf\xe9"};  // Latin-1, not UTF-8
  const std::string message =
      error_of<clhost::ConfigError>([&] { (void)clhost::load_config(config, overrides); });
  EXPECT_NE(message.find("--set run.name: the value is neither TOML nor UTF-8"), std::string::npos)
      << message;
  overrides.set = {"run.name=caf\xc3\xa9"};  // the same in UTF-8: a bare string
  EXPECT_EQ(clhost::load_config(config, overrides).run.name, "caf\xc3\xa9");
}

TEST(HostileInputs, AnIdxHeaderClaimingMoreThanTheFileHoldsIsRefusedBeforeAllocating) {
  clhost::test::TempDir dir;
  // Plain: 60000 x 28 x 28 claimed, 10 bytes present.
  const std::string plain =
      dir.file("plain-idx3-ubyte", idx_header({60000, 28, 28}) + "0123456789");
  EXPECT_NE(error_of<clhost::RunError>([&] {
              (void)clhost::read_idx(plain);
            }).find("declares more data than the file holds"),
            std::string::npos);
  // Compressed: 2^32-1 in every one of four sizes, more than any gzip file of this size holds
  // (and more than int64 counts); a zero size among huge ones overflows LibTorch's own count.
  for (const auto& shape : {std::vector<uint32_t>{0xffffffffU, 0xffffffffU, 0xffffffffU, 2},
                            std::vector<uint32_t>{50660864, 524316, 50331648, 0}}) {
    const std::string header = idx_header(shape);
    const std::string path = dir.path("packed-idx3-ubyte.gz");
    gzFile out = gzopen(path.c_str(), "wb");
    gzwrite(out, header.data(), static_cast<unsigned>(header.size()));
    gzclose(out);
    EXPECT_NE(error_of<clhost::RunError>([&] {
                (void)clhost::read_idx(path);
              }).find("declares more data than the file holds"),
              std::string::npos);
  }
  // An honest empty file still reads.
  const std::string empty = dir.file("empty-idx3-ubyte", idx_header({0, 28, 28}));
  EXPECT_EQ(clhost::read_idx(empty).size(0), 0);
}

TEST(HostileInputs, ACheckpointManifestNamingAFileOutsideItsDirectoryIsRefused) {
  clhost::test::TempDir dir;
  const auto manifest = [](const std::string& name) {
    return json{{"format", "clhost-checkpoint/1"},
                {"sequence", 1},
                {"files",
                 {{{"name", name},
                   {"bytes", 3},
                   {"crc32", crc32(0, reinterpret_cast<const Bytef*>("abc"), 3)}}}}}
        .dump();
  };
  (void)dir.file("secret", "abc");
  std::filesystem::create_directories(dir.path("run/checkpoints/1"));
  for (const std::string name : {"../../secret", "/etc/hostname", "..", ""}) {
    (void)dir.file("run/checkpoints/1/manifest.json", manifest(name));
    const std::string message = error_of<clhost::RunError>(
        [&] { (void)clhost::CheckpointDirectory(dir.path("run")).load_latest(); });
    EXPECT_NE(message.find("is not a plain file name"), std::string::npos)
        << name << ": " << message;
  }
  (void)dir.file("run/checkpoints/1/model.bin", "abc");
  (void)dir.file("run/checkpoints/1/manifest.json", manifest("model.bin"));
  EXPECT_EQ(clhost::CheckpointDirectory(dir.path("run")).load_latest().file("model.bin"), "abc");
}

TEST(HostileInputs, ATrainerJsonWithAMissingOrMistypedKeyIsRefusedNamingIt) {
  json saved = {{"config", json::object()}, {"plugins", json::array()}, {"step", 3}};
  EXPECT_EQ(error_of<clhost::RunError>([&] { clhost::check_trainer_json(saved); }),
            "task: missing");
  saved["task"] = -1;
  EXPECT_EQ(error_of<clhost::RunError>([&] { clhost::check_trainer_json(saved); }),
            "task: should be a non-negative integer, is -1");
  saved["task"] = 0;
  saved["task_train_seconds"] = 1.5;
  saved["task_out_of_memory_retries"] = 0;
  saved["fisher_groups"] = json::array({"task_0"});
  saved["metrics_csv_bytes"] = 100;
  saved["plugins"] = json::array({{{"id", "ewc"}, {"version", 7}}});
  EXPECT_EQ(error_of<clhost::RunError>([&] { clhost::check_trainer_json(saved); }),
            "plugins[0].version: should be a string, is 7");
  saved["plugins"][0]["version"] = "1.0";
  // Then the trainer's own counters, each named by LibTorch's JSON reader.
  EXPECT_NE(
      error_of<clhost::RunError>([&] { clhost::check_trainer_json(saved); }).find("global_step"),
      std::string::npos);
}

TEST(HostileInputs, ASavedSampleOrderMustBeAPermutationOfTheTasksSamples) {
  const auto bytes = [](const std::vector<int64_t>& order) { return clhost::int64_bytes(order); };
  EXPECT_EQ(clhost::sample_order(bytes({2, 0, 1}), 3), (std::vector<int64_t>{2, 0, 1}));
  EXPECT_NE(error_of<clhost::RunError>([&] {
              (void)clhost::sample_order(bytes({0, 1}), 3);
            }).find("not the order of 3 samples"),
            std::string::npos);
  for (const auto& order : {std::vector<int64_t>{0, 3, 1}, std::vector<int64_t>{0, -1, 1},
                            std::vector<int64_t>{0, 0, 1}}) {
    EXPECT_NE(error_of<clhost::RunError>([&] {
                (void)clhost::sample_order(bytes(order), 3);
              }).find("is not a permutation"),
              std::string::npos);
  }
  EXPECT_THROW((void)clhost::sample_order(bytes({0, 1}).substr(1), 2), clhost::RunError);
}

TEST(HostileInputs, AnOptimizerOrGeneratorStateThatDoesNotFitIsRefused) {
  // Adam's state after one step on a 4 -> 3 layer, restored into one over a 3 -> 4 layer: the
  // same number of parameters and elements, other shapes.
  const auto adam_state_of = [](torch::nn::Linear layer) {
    torch::optim::Adam adam(layer->parameters(), torch::optim::AdamOptions(0.1));
    layer->forward(torch::ones({2, layer->options.in_features()})).sum().backward();
    adam.step();
    std::string bytes;
    clhost::save_optimizer(adam, [&](const void* data, size_t size) {
      bytes.append(static_cast<const char*>(data), size);
    });
    return bytes;
  };
  const std::string saved = adam_state_of(torch::nn::Linear(4, 3));
  torch::nn::Linear other(3, 4);
  torch::optim::Adam adam(other->parameters(), torch::optim::AdamOptions(0.1));
  EXPECT_NE(error_of<clhost::RunError>([&] {
              clhost::restore_optimizer(adam, saved);
            }).find("another model's state"),
            std::string::npos);
  EXPECT_NE(error_of<clhost::RunError>([&] {
              clhost::restore_optimizer(adam, "not a zip");
            }).find("not a clhost optimizer state"),
            std::string::npos);
  EXPECT_NE(error_of<clhost::RunError>([] {
              clhost::restore_generator("abc");
            }).find("not a LibTorch CPU generator state: 3 bytes"),
            std::string::npos);
  // An empty file: no copy into an empty tensor's null data (UBSan, found by fuzzing).
  EXPECT_NE(error_of<clhost::RunError>([] {
              clhost::restore_generator("");
            }).find("not a LibTorch CPU generator state: 0 bytes"),
            std::string::npos);
}

}  // namespace
