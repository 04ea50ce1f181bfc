// Every built-in plug-in's clhost.state/1 restore, and the host's own reader of what it holds for
// a plug-in (snapshot, replay buffer). The first byte picks the plug-in and its layout; the rest
// is the state file. A plug-in answers bad bytes with a status (errors never cross the ABI as
// exceptions), which the host turns into a RunError.
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "../../core/src/model.hpp"
#include "../../core/src/plugin_set.hpp"
#include "clhost/config.hpp"
#include "clhost/plugin_loader.hpp"
#include "fuzz_target.hpp"

namespace {

using namespace clhost;

// One [[pipeline]] entry per state layout (and the host's held data for lwf and replay).
struct Variant {
  const char* toml;
  bool held;  // the host's file for this plug-in rather than the plug-in's own
};
constexpr Variant kVariants[] = {
    {"[[pipeline]]\nplugin = \"ewc\"\nstate_dtype = \"int8_fp16\"\n", false},
    {"[[pipeline]]\nplugin = \"ewc\"\nstate_dtype = \"int8\"\n", false},
    {"[[pipeline]]\nplugin = \"ewc\"\nstate_dtype = \"int4_int8\"\n", false},
    {"[[pipeline]]\nplugin = \"ewc\"\nstate_dtype = \"fp32\"\n", false},
    {"[fisher_computation]\nuse_memory_efficient = false\n[[pipeline]]\nplugin = \"ewc\"\n", false},
    {"[fisher_computation]\nuse_memory_efficient = false\n[[pipeline]]\nplugin = \"ewc\"\n"
     "mode = \"online\"\n",
     false},
    {"[[pipeline]]\nplugin = \"lowrank_fisher\"\n", false},
    {"[[pipeline]]\nplugin = \"l2\"\n", false},
    {"[[pipeline]]\nplugin = \"fixed\"\n", false},
    {"[[pipeline]]\nplugin = \"dynamic\"\n", false},
    {"[[pipeline]]\nplugin = \"estimate\"\n", false},
    {"[[pipeline]]\nplugin = \"mas\"\n", false},
    {"[[pipeline]]\nplugin = \"lwf\"\n", false},
    {"[[pipeline]]\nplugin = \"replay\"\n", false},
    {"[[pipeline]]\nplugin = \"lwf\"\n", true},
    {"[[pipeline]]\nplugin = \"replay\"\n", true},
};
constexpr size_t kVariantCount = sizeof(kVariants) / sizeof(kVariants[0]);

// The model of tests/fuzz/make_corpus.sh's runs: an MLP 784-8-10.
constexpr const char* kModel = "[model]\nhidden = [8]\n";

// A variant's plug-in, created as a run creates it.
struct PluginUnderTest {
  RunConfig config;
  PluginLoader loader{PluginLoader::search_path_for({}, {})};
  LoadedPipeline pipeline;
  Runtime runtime;
  std::unique_ptr<PluginSet> plugins;

  explicit PluginUnderTest(const Variant& variant) {
    const std::string text = std::string(kModel) + variant.toml;
    config = load_config(fuzz::write_scratch("plugin.toml", text.data(), text.size()));
    runtime.bind_model(make_model(config.model, 784, 28, 10));
    runtime.settings = nlohmann::json::parse(config.resolved_json);
    pipeline = load_pipeline(loader, config);
    plugins = std::make_unique<PluginSet>(pipeline, config, runtime, true);
  }
};

void restore(size_t variant_index, const std::string& bytes) {
  // Created once per variant: a plug-in and its host take longer to create than a restore takes.
  static std::unique_ptr<PluginUnderTest> created[kVariantCount];
  const Variant& variant = kVariants[variant_index];
  if (!created[variant_index]) created[variant_index] = std::make_unique<PluginUnderTest>(variant);
  PluginInstance& instance = created[variant_index]->plugins->at(0);
  if (variant.held) {
    restore_held(instance.context, bytes, "held");
    return;
  }
  const auto* state = static_cast<const clhost_state_v1_t*>(
      instance.plugin->entry->get_interface(CLHOST_INTERFACE_STATE_V1));
  clhost_error_t error{};
  instance.check(state->restore(instance.instance, bytes.data(), bytes.size(), &error), error,
                 "restore (clhost.state/1)");
}

}  // namespace

CLHOST_FUZZ_TARGET(plugin_state) {
  if (size == 0) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  fuzz::expect_clean_failure([&] { restore(data[0] % kVariantCount, bytes); });
  return 0;
}
