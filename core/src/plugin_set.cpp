#include "plugin_set.hpp"

#include <cmath>

#include "clhost/plugin_torch.hpp"
#include "run_state.hpp"

namespace clhost {
namespace {

using json = nlohmann::json;

json config_values_json(const ResolvedPluginConfig& config) {
  json out = json::object();
  for (const auto& value : config.values()) {
    switch (value.type) {
      case CLHOST_CONFIG_TYPE_BOOL: out[value.key] = value.bool_value != 0; break;
      case CLHOST_CONFIG_TYPE_INT: out[value.key] = value.int_value; break;
      case CLHOST_CONFIG_TYPE_FLOAT: out[value.key] = value.float_value; break;
      case CLHOST_CONFIG_TYPE_STRING: out[value.key] = value.string_value; break;
    }
  }
  return out;
}

// The plug-in's own account of its keys without effect: {key: reason}, or null when the plug-in
// predates clhost.config_use/1 and cannot say.
json not_in_effect_json(const LoadedPipeline& pipeline, size_t index) {
  if (!pipeline.reports_use.at(index)) return nullptr;
  json out = json::object();
  for (const auto& unused : pipeline.not_in_effect.at(index)) out[unused.key] = unused.reason;
  return out;
}

// The plug-in's clhost.report/1 JSON (parsed when it is JSON, else the text), or null.
json plugin_report(const PluginInstance& instance) {
  const auto* reporter = static_cast<const clhost_report_v1_t*>(
      instance.plugin->entry->get_interface(CLHOST_INTERFACE_REPORT_V1));
  if (reporter == nullptr) return nullptr;
  std::string buffer(4096, '\0');
  size_t needed = reporter->write_json(instance.instance, buffer.data(), buffer.size());
  if (needed >= buffer.size()) {
    buffer.assign(needed + 1, '\0');
    needed = reporter->write_json(instance.instance, buffer.data(), buffer.size());
  }
  buffer.resize(std::min(needed, buffer.size() - 1));
  if (buffer.empty()) return nullptr;
  const json parsed = json::parse(buffer, nullptr, false);
  return parsed.is_discarded() ? json(buffer) : parsed;
}

const clhost_state_v1_t* state_interface(const PluginInstance& instance) {
  return static_cast<const clhost_state_v1_t*>(
      instance.plugin->entry->get_interface(CLHOST_INTERFACE_STATE_V1));
}

bool holds_anything(const PluginContext& context) {
  return !context.snapshot.empty() || context.replay.size() > 0;
}

int64_t tensor_bytes(const std::vector<torch::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const auto& tensor : tensors) bytes += static_cast<int64_t>(tensor.nbytes());
  return bytes;
}

// What the host holds for a plug-in (its snapshot, its replay buffer) as checkpoint bytes.
void save_held(const PluginContext& context, const ByteSink& sink) {
  sdk::StateWriter out(&write_to_sink, const_cast<ByteSink*>(&sink));
  out.value(static_cast<uint64_t>(context.snapshot.size()));
  for (const auto& tensor : context.snapshot) sdk::write_tensor(out, tensor);
  sdk::write_tensor(out, context.replay.x);
  sdk::write_tensor(out, context.replay.y);
  sdk::write_tensor(out, context.replay.tasks);
}

// restore_held's reading; the SDK reader's errors (a truncated file) are turned into RunError
// there.
void read_held(PluginContext& context, const std::string& bytes, const std::string& file) {
  sdk::StateReader in(bytes.data(), bytes.size());
  std::vector<torch::Tensor> model_tensors;
  for (const auto& parameter : context.runtime->model->parameters())
    model_tensors.push_back(parameter);
  for (const auto& buffer : context.runtime->model->buffers()) model_tensors.push_back(buffer);
  const auto count = in.value<uint64_t>();
  if (count != 0 && count != model_tensors.size()) {
    throw RunError(file + ": the snapshot has " + std::to_string(count) +
                   " tensors; this model has " + std::to_string(model_tensors.size()));
  }
  std::vector<torch::Tensor> snapshot;
  for (uint64_t i = 0; i < count; ++i) {
    torch::Tensor tensor = sdk::read_tensor(in);
    if (!tensor.defined() || tensor.sizes() != model_tensors[i].sizes() ||
        tensor.scalar_type() != model_tensors[i].scalar_type()) {
      throw RunError(file + ": snapshot tensor " + std::to_string(i) +
                     " does not match this model's");
    }
    snapshot.push_back(tensor.to(model_tensors[i].device()));
  }
  ReplayBuffer replay{sdk::read_tensor(in), sdk::read_tensor(in), sdk::read_tensor(in)};
  in.finish();
  const bool whole =
      replay.x.defined() && replay.y.defined() && replay.tasks.defined() && replay.x.dim() >= 1 &&
      replay.y.dim() >= 1 && replay.tasks.dim() == 1 && replay.y.size(0) == replay.x.size(0) &&
      replay.tasks.size(0) == replay.x.size(0) && replay.tasks.scalar_type() == torch::kInt32;
  const bool none = !replay.x.defined() && !replay.y.defined() && !replay.tasks.defined();
  if (whole && (replay.y.scalar_type() != torch::kInt64 ||
                (replay.x.size(0) > 0 &&
                 (replay.y.min().item<int64_t>() < 0 || replay.tasks.min().item<int32_t>() < 0)))) {
    throw RunError(file + ": the replay buffer's labels or tasks are not non-negative indices");
  }
  if (!whole && !none) throw RunError(file + ": the replay buffer's parts do not fit together");
  context.snapshot = std::move(snapshot);
  context.replay = std::move(replay);
}

}  // namespace

void restore_held(PluginContext& context, const std::string& bytes, const std::string& file) {
  try {
    read_held(context, bytes, file);
  } catch (const sdk::Error& e) {
    throw RunError(file + ": " + e.what());
  }
}

PluginSet::PluginSet(LoadedPipeline& pipeline, const RunConfig& config, Runtime& runtime,
                     bool quiet) {
  for (size_t i = 0; i < pipeline.plugins.size(); ++i) {
    const LoadedPlugin* plugin = pipeline.plugins[i];
    auto instance = std::make_unique<PluginInstance>();
    instance->plugin = plugin;
    instance->config = std::move(pipeline.configs[i]);
    instance->context = PluginContext{&runtime, plugin->id, quiet, {}, {}};
    instance->host = clhost_host_t{sizeof(clhost_host_t),
                                   {CLHOST_ABI_VERSION_MAJOR, CLHOST_ABI_VERSION_MINOR},
                                   CLHOST_VERSION,
                                   &host_get_service,
                                   &instance->context};
    clhost_error_t error{};
    const clhost_status_t status =
        plugin->entry->create(&instance->host, instance->config.abi(), &instance->instance, &error);
    if (status != CLHOST_STATUS_OK) {
      instance->instance = nullptr;
      throw PluginError(config.pipeline[i].location + ": plug-in '" + plugin->id +
                        "' refused to start (create returned status " + std::to_string(status) +
                        "): " + error.message);
    }
    if (instance->kind() == CLHOST_PLUGIN_KIND_BATCH_POLICY) batch_policy_ = instance.get();
    if (instance->kind() == CLHOST_PLUGIN_KIND_REPLAY) replay_ = instance.get();
    instances_.push_back(std::move(instance));
  }
}

template <class Table, class Call>
void PluginSet::for_each(clhost_plugin_kind_t kind, Call&& call) {
  for (auto& instance : instances_) {
    if (instance->kind() == kind) call(*instance, instance->table<Table>());
  }
}

void PluginSet::task_begin(const clhost_task_info_t& task) {
  for_each<clhost_regularizer_v1_t>(
      CLHOST_PLUGIN_KIND_REGULARIZER, [&](PluginInstance& plugin, const auto& table) {
        if (table.on_task_begin == nullptr) return;
        clhost_error_t error{};
        plugin.check(table.on_task_begin(plugin.instance, &task, &error), error, "on_task_begin");
      });
}

void PluginSet::task_end(const clhost_task_info_t& task) {
  for_each<clhost_regularizer_v1_t>(
      CLHOST_PLUGIN_KIND_REGULARIZER, [&](PluginInstance& plugin, const auto& table) {
        if (table.on_task_end == nullptr) return;
        clhost_error_t error{};
        plugin.check(table.on_task_end(plugin.instance, &task, &error), error, "on_task_end");
      });
}

double PluginSet::after_backward(const clhost_step_info_t& step, std::string& non_finite) {
  double penalty = 0.0;
  for_each<clhost_regularizer_v1_t>(
      CLHOST_PLUGIN_KIND_REGULARIZER, [&](PluginInstance& plugin, const auto& table) {
        if (table.after_backward == nullptr) return;
        double plugin_penalty = 0.0;
        clhost_error_t error{};
        plugin.check(table.after_backward(plugin.instance, &step, &plugin_penalty, &error), error,
                     "after_backward");
        if (!std::isfinite(plugin_penalty) && non_finite.empty()) {
          non_finite = "the penalty of plug-in '" + plugin.plugin->id + "' is " +
                       std::to_string(plugin_penalty) + " (data loss " + std::to_string(step.loss) +
                       ")";
        }
        penalty += plugin_penalty;
      });
  return penalty;
}

void PluginSet::on_event(const clhost_event_t& event) {
  for_each<clhost_profiler_v1_t>(
      CLHOST_PLUGIN_KIND_PROFILER, [&](PluginInstance& plugin, const auto& table) {
        clhost_error_t error{};
        plugin.check(table.on_event(plugin.instance, &event, &error), error, "on_event");
      });
}

json PluginSet::add_state_files(std::vector<CheckpointFile>& files) {
  json entries = json::array();
  for (size_t i = 0; i < instances_.size(); ++i) {
    PluginInstance& instance = *instances_[i];
    json entry{{"id", instance.plugin->id},
               {"version", instance.plugin->descriptor->version},
               {"resumable", false}};
    if (const auto* state = state_interface(instance)) {
      const std::string name = "plugin_" + std::to_string(i) + "_" + instance.plugin->id + ".state";
      files.push_back({name, [&instance, state](const ByteSink& sink) {
                         clhost_error_t error{};
                         instance.check(state->save(instance.instance, &write_to_sink,
                                                    const_cast<ByteSink*>(&sink), &error),
                                        error, "save (clhost.state/1)");
                       }});
      entry["resumable"] = true;
      entry["file"] = name;
    }
    if (holds_anything(instance.context)) {
      const std::string name = "plugin_" + std::to_string(i) + "_" + instance.plugin->id + ".held";
      files.push_back(
          {name, [&instance](const ByteSink& sink) { save_held(instance.context, sink); }});
      entry["held"] = name;
    }
    entries.push_back(entry);
  }
  return entries;
}

void PluginSet::restore_states(const json& saved_plugins, const LoadedCheckpoint& checkpoint) {
  for (size_t i = 0; i < instances_.size(); ++i) {
    PluginInstance& instance = *instances_[i];
    const json& entry = saved_plugins.at(i);
    if (entry.contains("held")) {
      const std::string held = entry.at("held").get<std::string>();
      restore_held(instance.context, checkpoint.file(held), checkpoint.directory + "/" + held);
    }
    const auto* state = state_interface(instance);
    if (state == nullptr || !entry.value("resumable", false) ||
        entry.at("version") != instance.plugin->descriptor->version) {
      continue;  // accepted with --resume-anyway
    }
    const std::string file = entry.at("file").get<std::string>();
    const std::string& bytes = checkpoint.file(file);
    clhost_error_t error{};
    // A state the plug-in refuses means this run cannot resume (exit 3), not that it failed.
    try {
      instance.check(state->restore(instance.instance, bytes.data(), bytes.size(), &error), error,
                     "restore (clhost.state/1)");
    } catch (const RunError& e) {
      throw PluginError("cannot resume " + checkpoint.directory + ": " + e.what() +
                        " (its state: " + file + ", " + std::to_string(bytes.size()) + " bytes)");
    }
  }
}

json PluginSet::reports(const LoadedPipeline& pipeline) const {
  json out = json::array();
  for (size_t i = 0; i < instances_.size(); ++i) {
    const PluginInstance& instance = *instances_[i];
    json report{{"id", instance.plugin->id},
                {"kind", kind_name(instance.kind())},
                {"version", instance.plugin->descriptor->version},
                {"path", instance.plugin->path},
                {"config", config_values_json(instance.config)},
                {"not_in_effect", not_in_effect_json(pipeline, i)}};
    if (instance.kind() == CLHOST_PLUGIN_KIND_REGULARIZER) {
      const auto& table = instance.table<clhost_regularizer_v1_t>();
      if (table.describe != nullptr) {
        char buffer[1024] = {};
        table.describe(instance.instance, buffer, sizeof(buffer));
        report["variant"] = buffer;
      }
    }
    if (!instance.context.snapshot.empty() || instance.kind() == CLHOST_PLUGIN_KIND_REPLAY) {
      const ReplayBuffer& replay = instance.context.replay;
      report["held_by_host"] =
          json{{"snapshot_bytes", tensor_bytes(instance.context.snapshot)},
               {"replay_samples", replay.size()},
               {"replay_bytes",
                replay.size() > 0 ? tensor_bytes({replay.x, replay.y, replay.tasks}) : 0}};
    }
    json own = plugin_report(instance);
    if (!own.is_null()) report["report"] = own;
    out.push_back(report);
  }
  return out;
}

}  // namespace clhost
