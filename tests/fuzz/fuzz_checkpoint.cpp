// The checkpoint loader, one file at a time (the first byte picks which; the rest is the file):
// manifest.json, model.bin, optimizer.bin, generator.bin, trainer.json, data_order.bin. The
// manifest's CRC-32s guard against damage, not against a crafted file, so each reader must check
// what it reads on its own.
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "../../core/src/model.hpp"
#include "../../core/src/run_state.hpp"
#include "../../core/src/training_checkpoint.hpp"
#include "fuzz_target.hpp"

namespace {

using namespace clhost;

// The model and optimizers a resume restores into: tests/fuzz/make_corpus.sh's MLP 784-8-10.
ModelSection tiny_mlp() {
  ModelSection section;
  section.hidden = {8};
  return section;
}

struct Restored {
  torch::nn::Sequential model = make_model(tiny_mlp(), 784, 28, 10);
  torch::optim::Adam adam{model->parameters(), torch::optim::AdamOptions(1e-3)};
  torch::optim::SGD sgd{model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9)};
};

void load_manifest(const std::string& text) {
  const std::string dir = fuzz::scratch_dir() + "/run";
  std::filesystem::remove_all(dir);
  fuzz::write_scratch("run/checkpoints/1/model.bin", "abc", 3);
  fuzz::write_scratch("run/checkpoints/1/manifest.json", text.data(), text.size());
  const LoadedCheckpoint checkpoint = CheckpointDirectory(dir).load_latest();
  for (const auto& entry : checkpoint.manifest.at("files")) {
    (void)checkpoint.file(entry.at("name").get<std::string>());
  }
}

}  // namespace

CLHOST_FUZZ_TARGET(checkpoint) {
  static Restored restored;
  if (size == 0) return 0;
  const std::string file(reinterpret_cast<const char*>(data) + 1, size - 1);
  fuzz::expect_clean_failure([&] {
    switch (data[0] % 7) {
      case 0: load_manifest(file); break;
      case 1: restore_model_tensors(restored.model, file); break;
      case 2: restore_optimizer(restored.adam, file); break;
      case 3: restore_optimizer(restored.sgd, file); break;
      case 4: restore_generator(file); break;
      case 5: {
        const auto saved = nlohmann::json::parse(file, nullptr, false);
        if (!saved.is_discarded()) check_trainer_json(saved);
        break;
      }
      default: (void)sample_order(file, 16); break;
    }
  });
  return 0;
}
