#include "clhost/memory_plan.hpp"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "activation_probe.hpp"
#include "clhost/errors.hpp"
#include "data.hpp"
#include "fisher.hpp"
#include "model.hpp"
#include "scripted_model.hpp"

namespace clhost {
namespace {

constexpr int64_t kFloatBytes = sizeof(float);

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  return numel;
}

// Adam keeps two moments per parameter; SGD one momentum buffer when momentum is on.
int64_t optimizer_bytes(const TrainSection& train, int64_t parameters) {
  if (train.optimizer == OptimizerKind::kAdam) return 2 * kFloatBytes * parameters;
  return train.momentum != 0.0 ? kFloatBytes * parameters : 0;
}

int64_t store_value_bytes(const std::string& dtype) {
  return dtype == "fp32" ? 4 : 2;
}

std::string optimizer_words(const TrainSection& train) {
  if (train.optimizer == OptimizerKind::kAdam) return "adam: two moments";
  return train.momentum != 0.0 ? "sgd: momentum buffer" : "sgd without momentum: none";
}

// Decimal units, as the source document's table (56 GB -> 14 GB).
std::string decimal_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  int unit = 0;
  while (bytes >= 1000.0 && unit < 5) {
    bytes /= 1000.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
  return text;
}

int64_t meminfo_bytes(const std::string& wanted) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == wanted) return kib * 1024;
  }
  return -1;
}

std::vector<std::vector<int64_t>> config_model_shapes(const RunConfig& config,
                                                      const TaskSequence& sequence) {
  if (config.model.kind != ModelKind::kTorchScript) {
    return model_parameter_shapes(config.model, sequence.input_size, sequence.image_side,
                                  sequence.num_classes);
  }
  const ScriptedModel scripted =
      load_scripted_model(config.model, sequence.input_size, sequence.num_classes);
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& parameter : scripted.net->parameters()) {
    shapes.push_back(parameter.sizes().vec());
  }
  return shapes;
}

}  // namespace

int64_t MemoryPlan::plugin_state_bytes() const {
  int64_t total = 0;
  for (const auto& plugin : plugins) total += plugin.state_bytes.value_or(0);
  return total;
}

int64_t MemoryPlan::between_tasks_bytes() const {
  return weight_bytes + gradient_bytes + optimizer_bytes + data_bytes + plugin_state_bytes();
}

int64_t MemoryPlan::largest_consolidation_bytes() const {
  int64_t largest = 0;
  for (const auto& plugin : plugins) largest = std::max(largest, plugin.consolidation_bytes);
  return largest;
}

int64_t MemoryPlan::peak_bytes() const {
  return between_tasks_bytes() +
         std::max(train_activation_bytes, fisher_pass_bytes + largest_consolidation_bytes());
}

int64_t MemoryPlan::least_peak_bytes() const {
  const int64_t train = batch_policy ? train_one_sample_bytes : train_activation_bytes;
  const bool fisher_probed = fisher_samples_per_pass > 0 && fisher_activations_planned();
  const int64_t fisher = fisher_probed ? fisher_one_sample_bytes : fisher_pass_bytes;
  return between_tasks_bytes() + std::max(train, fisher + largest_consolidation_bytes());
}

bool MemoryPlan::complete() const {
  return std::all_of(plugins.begin(), plugins.end(),
                     [](const Plugin& plugin) { return plugin.state_bytes.has_value(); });
}

namespace {

// One sample as the host's replay buffer holds it: its input and label in their stored types
// and its task index.
int64_t replay_sample_bytes(const TaskSequence& sequence) {
  if (sequence.tasks.empty() || sequence.tasks.front().train_size() == 0) return 0;
  const Samples one = sequence.tasks.front().train_range(0, 1);
  int64_t bytes = static_cast<int64_t>(sizeof(int32_t));
  for (const torch::Tensor& tensor : {one.x, one.y}) {
    if (tensor.defined()) bytes += static_cast<int64_t>(tensor.nbytes());
  }
  return bytes;
}

// A replay plug-in's buffer, which the host holds for it, and the samples its draw adds to every
// step (ABI 1.9).
void plan_replay(const PluginMemoryPlan& planned, int64_t sample_bytes, MemoryPlan::Plugin& entry,
                 MemoryPlan& plan) {
  if (!planned.replay_capacity || !planned.replay_samples_per_step) {
    plan.replay_not_said.push_back(entry.id);
    return;
  }
  entry.replay_capacity = *planned.replay_capacity;
  const int64_t buffer = *planned.replay_capacity * sample_bytes;
  entry.state_bytes = entry.state_bytes.value_or(0) + buffer;
  entry.consolidation_bytes += buffer;  // the old buffer, until the new one is complete
  plan.replay_samples_per_step += *planned.replay_samples_per_step;
}

// The plug-ins' answers, and the largest samples per Fisher pass any said.
void plan_plugins(const RunConfig& config, const LoadedPipeline& pipeline,
                  const std::vector<int64_t>& numels, int64_t replay_sample_bytes,
                  MemoryPlan& plan) {
  for (size_t i = 0; i < pipeline.plugins.size(); ++i) {
    MemoryPlan::Plugin entry;
    entry.id = pipeline.plugins[i]->id;
    const clhost_plugin_kind_t kind = pipeline.plugins[i]->descriptor->kind;
    if (kind == CLHOST_PLUGIN_KIND_BATCH_POLICY) plan.batch_policy = true;
    const auto planned = plan_plugin_memory(pipeline, i, config, numels, plan.tasks);
    if (planned) {
      entry.state_bytes = planned->state_bytes;
      entry.consolidation_bytes = planned->consolidation_bytes;
      entry.advice = planned->advice;
      if (planned->fisher_samples_per_pass) {
        plan.fisher_samples_per_pass =
            std::max(plan.fisher_samples_per_pass, *planned->fisher_samples_per_pass);
      } else {
        plan.fisher_not_said.push_back(entry.id);
      }
      if (kind == CLHOST_PLUGIN_KIND_REPLAY) {
        plan_replay(*planned, replay_sample_bytes, entry, plan);
      }
    } else {
      plan.fisher_not_said.push_back(entry.id);
      if (kind == CLHOST_PLUGIN_KIND_REPLAY) plan.replay_not_said.push_back(entry.id);
    }
    plan.plugins.push_back(std::move(entry));
  }
}

// The Fisher pass and a training step, measured on a probe model. Without a probe (TorchScript)
// or when a plug-in did not say its samples per pass, the pass is planned from its block alone:
// the per-block sums and squared per-sample gradients added into them (bench_ewc: 2.0 x 4 bytes
// x block, measured at blocks of 0.5M to 100M elements on an MLP, whose activations are small).
void plan_activations(const RunConfig& config, const TaskSequence& sequence, MemoryPlan& plan) {
  const int64_t block_only = 2 * kFloatBytes * plan.fisher_block_elements;
  const bool pass_known = plan.fisher_not_said.empty();
  // A replay plug-in's samples join every step's batch.
  RunConfig probed = config;
  probed.train.batch_size += plan.replay_samples_per_step;
  const std::optional<ActivationPlan> probe =
      probe_activations(probed, sequence, pass_known ? plan.fisher_samples_per_pass : 0);
  if (probe) {
    plan.activations_planned = true;
    plan.activations_method = probe->method;
    plan.train_samples = probe->train_samples;
    plan.train_activation_bytes = probe->train_step_bytes;
    plan.train_one_sample_bytes = probe->train_one_sample_bytes;
    plan.fisher_one_sample_bytes = probe->fisher_one_sample_bytes;
  }
  if (!pass_known) {
    plan.fisher_pass_bytes = block_only;
  } else if (plan.fisher_samples_per_pass > 0) {
    plan.fisher_pass_bytes = probe ? probe->fisher_pass_bytes : block_only;
  }
}

}  // namespace

MemoryPlan plan_memory(const RunConfig& config, const LoadedPipeline& pipeline,
                       const std::vector<std::vector<int64_t>>& shapes,
                       const TaskSequence& sequence) {
  MemoryPlan plan;
  std::vector<int64_t> numels;
  numels.reserve(shapes.size());
  for (const auto& shape : shapes) numels.push_back(numel_of(shape));
  for (const int64_t numel : numels) plan.parameters += numel;
  plan.tasks = static_cast<int64_t>(sequence.tasks.size());
  plan.weight_bytes = kFloatBytes * plan.parameters;
  plan.gradient_bytes = kFloatBytes * plan.parameters;
  plan.optimizer_bytes = optimizer_bytes(config.train, plan.parameters);
  plan.optimizer = optimizer_words(config.train);
  plan.data_bytes = resident_data_bytes(sequence);
  if (!shapes.empty()) {
    plan.fisher_block_elements =
        largest_block_elements(plan_fisher_blocks(shapes, config.fisher.block_size), shapes);
  }
  plan.store_bytes = store_value_bytes(config.fisher.store_dtype) * plan.parameters * plan.tasks;
  plan_plugins(config, pipeline, numels, replay_sample_bytes(sequence), plan);
  plan_activations(config, sequence, plan);
  return plan;
}

MemoryPlan plan_memory_for_config(const RunConfig& config, const LoadedPipeline& pipeline) {
  const TaskSequence sequence =
      config.data.kind == DataKind::kText
          ? build_text_tasks(config.data, config.model.context, config.tasks, config.run.seed)
          : build_task_sequence(config.data, config.tasks, config.run.seed);
  return plan_memory(config, pipeline, config_model_shapes(config, sequence), sequence);
}

namespace {

std::string fisher_pass_label(const MemoryPlan& plan) {
  return "Fisher pass (block " + std::to_string(plan.fisher_block_elements) +
         (plan.fisher_activations_planned()
              ? ", " + std::to_string(plan.fisher_samples_per_pass) + " samples per pass)"
              : ", without activations)");
}

// What the plan's activations are and what it leaves out, one line each.
std::string plan_footnotes(const MemoryPlan& plan) {
  std::string out;
  if (plan.activations_planned) {
    out += "  activations " + plan.activations_method + "; they do not scale with --params\n";
  }
  if (!plan.fisher_not_said.empty()) {
    std::string names;
    for (const auto& id : plan.fisher_not_said) names += (names.empty() ? "" : ", ") + id;
    out += "  not planned: the Fisher pass's activations (" + names +
           " did not say its samples per pass: no clhost.memory_plan/1, or built before ABI "
           "1.8)\n";
  }
  if (!plan.replay_not_said.empty()) {
    std::string names;
    for (const auto& id : plan.replay_not_said) names += (names.empty() ? "" : ", ") + id;
    out += "  not planned: the replayed samples in each step and the replay buffer (" + names +
           " did not say them: no clhost.memory_plan/1, or built before ABI 1.9)\n";
  }
  out += std::string("  not planned: ") +
         (plan.activations_planned ? "" : "activations (a TorchScript model), ") +
         "LibTorch's own memory (code, threads, allocator caches), a batch policy's changes\n";
  return out;
}

std::string train_step_label(const MemoryPlan& plan) {
  const std::string replayed =
      plan.replay_samples_per_step > 0
          ? ", " + std::to_string(plan.replay_samples_per_step) + " replayed"
          : "";
  return "training step activations (" + std::to_string(plan.train_samples) + " samples" +
         replayed + ")";
}

std::string state_label(const MemoryPlan::Plugin& plugin, int64_t tasks) {
  if (plugin.replay_capacity >= 0) {
    return plugin.id + ": buffer of " + std::to_string(plugin.replay_capacity) + " samples";
  }
  return plugin.id + " state after " + std::to_string(tasks) + " tasks";
}

std::string consolidation_label(const MemoryPlan::Plugin& plugin) {
  return plugin.id + (plugin.replay_capacity >= 0 ? ": the old buffer at a task's end"
                                                  : " consolidation buffers");
}

// Held between tasks and growing with the model: all but the data and the replay buffers.
int64_t growing_bytes(const MemoryPlan& plan) {
  int64_t growing = plan.between_tasks_bytes() - plan.data_bytes;
  for (const auto& plugin : plan.plugins) {
    if (plugin.replay_capacity >= 0) growing -= plugin.state_bytes.value_or(0);
  }
  return growing;
}

}  // namespace

std::string format_memory_plan(const MemoryPlan& plan, double scaled_parameters) {
  const double parameters = static_cast<double>(std::max<int64_t>(plan.parameters, 1));
  const double scale = scaled_parameters > 0.0 ? scaled_parameters / parameters : 0.0;
  std::string out;
  char line[256];
  // One part: its bytes, per parameter, and (with --params) its bytes at that many parameters.
  auto row_scaled_to = [&](const std::string& part, int64_t bytes, double scaled_bytes) {
    std::snprintf(line, sizeof(line), "  %-52s %12s %8.2f %14s\n", part.c_str(),
                  decimal_bytes(static_cast<double>(bytes)).c_str(),
                  static_cast<double>(bytes) / parameters,
                  scale > 0.0 ? decimal_bytes(scaled_bytes).c_str() : "");
    out += line;
  };
  // A part that grows with the model scales in the extrapolated column; the others stay.
  auto row = [&](const std::string& part, int64_t bytes, bool grows) {
    row_scaled_to(part, bytes, static_cast<double>(bytes) * (grows ? scale : 1.0));
  };
  // A sum scales its growing parts only.
  const int64_t growing = growing_bytes(plan);
  auto sum_row = [&](const std::string& part, int64_t bytes) {
    row_scaled_to(part, bytes,
                  static_cast<double>(growing) * scale + static_cast<double>(bytes - growing));
  };
  std::snprintf(line, sizeof(line), "memory plan: %lld parameters, %lld task%s (decimal units)\n",
                static_cast<long long>(plan.parameters), static_cast<long long>(plan.tasks),
                plan.tasks == 1 ? "" : "s");
  out += line;
  std::snprintf(line, sizeof(line), "  %-52s %12s %8s %14s\n", "part", "bytes", "B/param",
                scale > 0.0 ? (decimal_bytes(scaled_parameters)
                                   .substr(0, decimal_bytes(scaled_parameters).size() - 1) +
                               "params")
                                  .c_str()
                            : "");
  out += line;
  row("weights (fp32)", plan.weight_bytes, true);
  row("gradients (fp32)", plan.gradient_bytes, true);
  row("optimizer state (" + plan.optimizer + ")", plan.optimizer_bytes, true);
  row("data (resident samples and labels)", plan.data_bytes, false);
  for (const auto& plugin : plan.plugins) {
    if (plugin.state_bytes) {
      row(state_label(plugin, plan.tasks), *plugin.state_bytes, plugin.replay_capacity < 0);
    } else {
      out += "  " + plugin.id + ": not planned (the plug-in has no clhost.memory_plan/1)\n";
    }
  }
  sum_row("= between tasks", plan.between_tasks_bytes());
  if (plan.activations_planned) row(train_step_label(plan), plan.train_activation_bytes, false);
  if (plan.fisher_pass_bytes > 0) row(fisher_pass_label(plan), plan.fisher_pass_bytes, false);
  for (const auto& plugin : plan.plugins) {
    if (plugin.consolidation_bytes > 0) {
      row(consolidation_label(plugin), plugin.consolidation_bytes, false);
    }
  }
  sum_row("= peak", plan.peak_bytes());
  row("fisher.h5, every task stored (before compression)", plan.store_bytes, true);
  out += plan_footnotes(plan);
  return out;
}

std::string memory_plan_json(const MemoryPlan& plan) {
  nlohmann::json plugins = nlohmann::json::array();
  for (const auto& plugin : plan.plugins) {
    plugins.push_back(
        {{"id", plugin.id},
         {"state_bytes",
          plugin.state_bytes ? nlohmann::json(*plugin.state_bytes) : nlohmann::json(nullptr)},
         {"consolidation_bytes", plugin.consolidation_bytes},
         {"replay_capacity", plugin.replay_capacity >= 0 ? nlohmann::json(plugin.replay_capacity)
                                                         : nlohmann::json(nullptr)}});
  }
  return nlohmann::json{{"parameters", plan.parameters},
                        {"tasks", plan.tasks},
                        {"weight_bytes", plan.weight_bytes},
                        {"gradient_bytes", plan.gradient_bytes},
                        {"optimizer_bytes", plan.optimizer_bytes},
                        {"data_bytes", plan.data_bytes},
                        {"plugins", plugins},
                        {"between_tasks_bytes", plan.between_tasks_bytes()},
                        {"fisher_block_elements", plan.fisher_block_elements},
                        {"fisher_pass_bytes", plan.fisher_pass_bytes},
                        {"fisher_samples_per_pass", plan.fisher_samples_per_pass},
                        {"fisher_not_said", plan.fisher_not_said},
                        {"replay_samples_per_step", plan.replay_samples_per_step},
                        {"replay_not_said", plan.replay_not_said},
                        {"activations_planned", plan.activations_planned},
                        {"activations_method", plan.activations_method},
                        {"train_samples", plan.train_samples},
                        {"train_activation_bytes", plan.train_activation_bytes},
                        {"train_one_sample_bytes", plan.train_one_sample_bytes},
                        {"fisher_one_sample_bytes", plan.fisher_one_sample_bytes},
                        {"least_peak_bytes", plan.least_peak_bytes()},
                        {"peak_bytes", plan.peak_bytes()},
                        {"store_bytes_uncompressed", plan.store_bytes},
                        {"complete", plan.complete()}}
      .dump();
}

MemoryLimit memory_limit(const RunConfig& config) {
  if (config.run.memory_budget >= 0) {
    return {config.run.memory_budget, "run.memory_budget", true};
  }
  const int64_t ram = meminfo_bytes("MemTotal:");
  const int64_t swap = std::max<int64_t>(meminfo_bytes("SwapTotal:"), 0);
  return {ram > 0 ? ram + swap : -1, "this machine's memory (RAM + swap)"};
}

int64_t needed_bytes(const MemoryPlan& plan, const MemoryLimit& limit) {
  return limit.budget ? plan.least_peak_bytes() : plan.peak_bytes();
}

void check_memory_plan(const MemoryPlan& plan, const MemoryLimit& limit) {
  const int64_t needed = needed_bytes(plan, limit);
  if (limit.bytes < 0 || needed <= limit.bytes) return;
  const MemoryPlan::Plugin* largest = nullptr;
  for (const auto& plugin : plan.plugins) {
    if (plugin.state_bytes &&
        (largest == nullptr || *plugin.state_bytes > largest->state_bytes.value_or(0))) {
      largest = &plugin;
    }
  }
  std::string message = "memory plan: this run needs " +
                        decimal_bytes(static_cast<double>(needed)) + " of tensors at its peak" +
                        (needed < plan.peak_bytes()
                             ? " even with one sample per training micro-batch and per Fisher pass"
                             : std::string()) +
                        ", more than " + limit.name + " (" +
                        decimal_bytes(static_cast<double>(limit.bytes)) + "):\n" +
                        format_memory_plan(plan);
  if (largest != nullptr && !largest->advice.empty()) {
    message += "the largest plug-in state is " + largest->id + "'s (" +
               decimal_bytes(static_cast<double>(*largest->state_bytes)) + "): " + largest->advice;
  } else {
    message +=
        "lower the model's size, the optimizer's state (train.optimizer = \"sgd\") or "
        "the plug-ins' state";
  }
  throw RunError(message);
}

}  // namespace clhost
