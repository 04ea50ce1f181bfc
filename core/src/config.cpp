#include "clhost/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"

namespace clhost {
namespace {

std::string location_of(const toml::source_region& region, const std::string& fallback) {
  if (region.begin.line == 0) {
    return fallback;
  }
  std::ostringstream out;
  out << (region.path ? *region.path : fallback) << ':' << region.begin.line << ':'
      << region.begin.column;
  return out.str();
}

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

const char* type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

// Reads one TOML table against a fixed schema: every get_* marks its key as known, finish()
// rejects whatever is left. Errors carry file:line:column and the full key path.
class SectionReader {
 public:
  SectionReader(const toml::table* table, std::string prefix, std::string file,
                const std::set<std::string>& overridden)
      : table_(table),
        prefix_(std::move(prefix)),
        file_(std::move(file)),
        overridden_(overridden) {}

  [[noreturn]] void fail(const toml::node& node, const std::string& key,
                         const std::string& reason) const {
    throw ConfigError(where(node.source(), key) + ": " + path(key) + ": " + reason);
  }

  // A value from --set has no line in the file: name the option instead.
  [[nodiscard]] std::string where(const toml::source_region& region, const std::string& key) const {
    if (overridden_.count(path(key)) != 0) return "--set " + path(key);
    return location_of(region, file_);
  }

  const toml::node* take(const std::string& key) {
    known_.insert(key);
    return table_ != nullptr ? table_->get(key) : nullptr;
  }

  int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) {
    const toml::node* node = take(key);
    if (node == nullptr) return fallback;
    if (!node->is_integer())
      fail(*node, key, std::string("expected an integer, got ") + type_name(*node));
    const int64_t value = node->as_integer()->get();
    if (value < min || value > max) {
      fail(*node, key,
           "value " + std::to_string(value) + " is out of range [" + std::to_string(min) + ", " +
               std::to_string(max) + "]");
    }
    return value;
  }

  double get_float(const std::string& key, double fallback, double min, double max) {
    const toml::node* node = take(key);
    if (node == nullptr) return fallback;
    double value = 0.0;
    if (node->is_floating_point()) {
      value = node->as_floating_point()->get();
    } else if (node->is_integer()) {
      value = static_cast<double>(node->as_integer()->get());
    } else {
      fail(*node, key, std::string("expected a number, got ") + type_name(*node));
    }
    if (!std::isfinite(value) || value < min || value > max) {
      std::ostringstream reason;
      reason << "value " << value << " is out of range [" << min << ", " << max << "]";
      fail(*node, key, reason.str());
    }
    return value;
  }

  bool get_bool(const std::string& key, bool fallback) {
    const toml::node* node = take(key);
    if (node == nullptr) return fallback;
    if (!node->is_boolean())
      fail(*node, key, std::string("expected a boolean, got ") + type_name(*node));
    return node->as_boolean()->get();
  }

  std::string get_string(const std::string& key, const std::string& fallback,
                         const std::vector<std::string>& choices = {}) {
    const toml::node* node = take(key);
    if (node == nullptr) return fallback;
    if (!node->is_string())
      fail(*node, key, std::string("expected a string, got ") + type_name(*node));
    std::string value = node->as_string()->get();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), value) == choices.end()) {
      fail(*node, key, "\"" + value + "\" is not one of: " + join(choices, ", "));
    }
    return value;
  }

  std::vector<std::string> get_string_list(const std::string& key) {
    const toml::node* node = take(key);
    std::vector<std::string> out;
    if (node == nullptr) return out;
    if (node->is_string()) return {node->as_string()->get()};
    if (!node->is_array())
      fail(*node, key, std::string("expected an array of strings, got ") + type_name(*node));
    for (const auto& element : *node->as_array()) {
      if (!element.is_string()) fail(element, key, "every element must be a string");
      out.push_back(element.as_string()->get());
    }
    return out;
  }

  // An array of integer arrays, e.g. task_classes = [[0, 1], [2, 3]].
  std::vector<std::vector<int64_t>> get_int_lists(const std::string& key, int64_t min,
                                                  int64_t max) {
    const toml::node* node = take(key);
    std::vector<std::vector<int64_t>> out;
    if (node == nullptr) return out;
    if (!node->is_array()) {
      fail(*node, key, std::string("expected an array of integer arrays, got ") + type_name(*node));
    }
    for (const auto& inner : *node->as_array()) {
      if (!inner.is_array() || inner.as_array()->empty()) {
        fail(inner, key, "every element must be a non-empty array of integers");
      }
      out.emplace_back();
      for (const auto& element : *inner.as_array()) {
        if (!element.is_integer()) fail(element, key, "every element must be an integer");
        const int64_t value = element.as_integer()->get();
        if (value < min || value > max) {
          fail(element, key,
               "element " + std::to_string(value) + " is out of range [" + std::to_string(min) +
                   ", " + std::to_string(max) + "]");
        }
        if (std::find(out.back().begin(), out.back().end(), value) != out.back().end()) {
          fail(element, key, "class " + std::to_string(value) + " appears twice in one task");
        }
        out.back().push_back(value);
      }
    }
    return out;
  }

  std::vector<int64_t> get_int_list(const std::string& key, std::vector<int64_t> fallback,
                                    int64_t min, int64_t max) {
    const toml::node* node = take(key);
    if (node == nullptr) return fallback;
    if (!node->is_array())
      fail(*node, key, std::string("expected an array of integers, got ") + type_name(*node));
    std::vector<int64_t> out;
    for (const auto& element : *node->as_array()) {
      if (!element.is_integer()) fail(element, key, "every element must be an integer");
      const int64_t value = element.as_integer()->get();
      if (value < min || value > max) {
        fail(element, key,
             "element " + std::to_string(value) + " is out of range [" + std::to_string(min) +
                 ", " + std::to_string(max) + "]");
      }
      out.push_back(value);
    }
    return out;
  }

  void finish() const {
    if (table_ == nullptr) return;
    for (const auto& [key, node] : *table_) {
      const std::string name(key.str());
      if (known_.count(name) == 0) {
        std::vector<std::string> names(known_.begin(), known_.end());
        throw ConfigError(where(key.source(), name) + ": " + path(name) +
                          ": unknown key (known keys here: " + join(names, ", ") + ")");
      }
    }
  }

  [[nodiscard]] std::string path(const std::string& key) const {
    return prefix_.empty() ? key : prefix_ + "." + key;
  }

 private:
  const toml::table* table_;
  std::string prefix_;
  std::string file_;
  std::set<std::string> known_;
  const std::set<std::string>& overridden_;
};

const toml::table* sub_table(SectionReader& root, const std::string& key) {
  const toml::node* node = root.take(key);
  if (node == nullptr) return nullptr;
  if (!node->is_table())
    root.fail(*node, key, std::string("expected a table, got ") + type_name(*node));
  return node->as_table();
}

// Applies "a.b.c=value": the value is parsed as TOML ("5", "1e-3", "true", "[1,2]", "\"x\"");
// anything that does not parse is taken as a bare string, so --set run.name=demo works.
void apply_override(toml::table& root, const std::string& assignment) {
  const auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw ConfigError("--set " + assignment + ": expected key.path=value");
  }
  const std::string key_path = assignment.substr(0, equals);
  const std::string text = assignment.substr(equals + 1);
  const std::string source = "--set " + key_path;
  toml::table parsed;
  try {
    parsed = toml::parse("value = " + text, source);
  } catch (const toml::parse_error&) {
    parsed = toml::parse("value = \"\"", source);
    parsed.insert_or_assign("value", text);
  }
  std::vector<std::string> segments;
  std::stringstream stream(key_path);
  for (std::string segment; std::getline(stream, segment, '.');) {
    if (segment.empty()) throw ConfigError(source + ": empty segment in key path");
    segments.push_back(segment);
  }
  toml::node* current = &root;
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    const std::string& segment = segments[i];
    if (auto* table = current->as_table()) {
      if (table->get(segment) == nullptr) {
        const bool indexes_array =
            segments[i + 1].find_first_not_of("0123456789") == std::string::npos;
        if (indexes_array) {
          throw ConfigError(source + ": there is no array '" + segment + "' to index (add the " +
                            "[[" + segment + "]] entry to the config file first)");
        }
        table->insert(segment, toml::table{});
      }
      current = table->get(segment);
    } else if (auto* array = current->as_array()) {
      size_t index = 0;
      try {
        index = std::stoul(segment);
      } catch (const std::exception&) {
        throw ConfigError(source + ": '" + segment + "' must be an array index");
      }
      if (index >= array->size()) {
        throw ConfigError(source + ": index " + segment + " is past the end of the array (size " +
                          std::to_string(array->size()) + ")");
      }
      current = array->get(index);
    } else {
      throw ConfigError(source + ": '" + segment + "' is not a table");
    }
  }
  auto* target = current->as_table();
  if (target == nullptr) throw ConfigError(source + ": parent of the last key is not a table");
  target->insert_or_assign(segments.back(), *parsed.get("value"));
}

PluginSpec read_plugin(const toml::node& node, const std::string& file, size_t index,
                       const std::set<std::string>& overridden) {
  const std::string prefix = "pipeline[" + std::to_string(index) + "]";
  if (!node.is_table()) {
    throw ConfigError(location_of(node.source(), file) + ": " + prefix +
                      ": expected a table with a 'plugin' key");
  }
  const toml::table& table = *node.as_table();
  PluginSpec spec;
  spec.location = location_of(node.source(), file);
  const toml::node* id = table.get("plugin");
  if (id == nullptr || !id->is_string()) {
    throw ConfigError(spec.location + ": " + prefix +
                      ".plugin: missing or not a string (the plug-in id, e.g. \"l2\")");
  }
  spec.id = id->as_string()->get();
  for (const auto& [key, value] : table) {
    const std::string name(key.str());
    if (name == "plugin") continue;
    PluginSetting setting;
    setting.key = name;
    const std::string override_key = "pipeline." + std::to_string(index) + "." + name;
    setting.location = overridden.count(override_key) != 0 ? "--set " + override_key
                                                           : location_of(value.source(), file);
    if (value.is_boolean()) {
      setting.value = value.as_boolean()->get();
    } else if (value.is_integer()) {
      setting.value = value.as_integer()->get();
    } else if (value.is_floating_point()) {
      setting.value = value.as_floating_point()->get();
    } else if (value.is_string()) {
      setting.value = value.as_string()->get();
    } else {
      throw ConfigError(setting.location + ": " + prefix + "." + name +
                        ": plug-in settings must be booleans, integers, floats or strings, got " +
                        type_name(value));
    }
    spec.settings.push_back(std::move(setting));
  }
  return spec;
}

}  // namespace

const char* to_string(Scenario value) {
  return value == Scenario::kSplit      ? "split"
         : value == Scenario::kPermuted ? "permuted"
         : value == Scenario::kRotated  ? "rotated"
                                        : "sources";
}
const char* to_string(Incremental value) {
  switch (value) {
    case Incremental::kTask: return "task";
    case Incremental::kDomain: return "domain";
    default: return "class";
  }
}
const char* to_string(ModelKind value) {
  return value == ModelKind::kMlp ? "mlp" : value == ModelKind::kCnn ? "cnn" : "torchscript";
}
const char* to_string(OptimizerKind value) {
  return value == OptimizerKind::kSgd ? "sgd" : "adam";
}

RunConfig load_config(const std::string& path, const ConfigOverrides& overrides) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& error) {
    std::string reason(error.description());
    if (reason.find("File could not be opened") != std::string::npos) {
      throw ConfigError(path + ": cannot open the config file");
    }
    throw ConfigError(location_of(error.source(), path) + ": TOML syntax error: " + reason);
  }
  std::set<std::string> overridden;
  for (const auto& assignment : overrides.set) {
    apply_override(root, assignment);
    overridden.insert(assignment.substr(0, assignment.find('=')));
  }

  RunConfig config;
  config.source = path;
  SectionReader top(&root, "", path, overridden);

  SectionReader run(sub_table(top, "run"), "run", path, overridden);
  config.run.name = run.get_string("name", config.run.name);
  if (config.run.name.empty() || config.run.name.find('/') != std::string::npos) {
    throw ConfigError(path + ": run.name: must be non-empty and contain no '/'");
  }
  config.run.seed = static_cast<uint64_t>(run.get_int("seed", 0, 0, INT64_MAX));
  config.run.threads = static_cast<int>(run.get_int("threads", 1, 1, 256));
  config.run.output_dir = run.get_string("output_dir", config.run.output_dir);
  config.run.plugin_path = run.get_string_list("plugin_path");
  config.run.log_every = run.get_int("log_every", 50, 1, 1000000);
  config.run.checkpoint_every = run.get_int("checkpoint_every", 1000, 0, INT64_MAX);
  if (const toml::node* node = run.take("memory_budget")) {
    try {
      config.run.memory_budget =
          node->is_integer() ? node->as_integer()->get()
          : node->is_string()
              ? memory::parse_bytes(node->as_string()->get())
              : throw std::invalid_argument("expected a size string (\"1.5GiB\") or bytes");
      if (config.run.memory_budget < 1) throw std::invalid_argument("must be positive");
    } catch (const std::invalid_argument& e) {
      run.fail(*node, "memory_budget", e.what());
    }
  }
  if (!overrides.memory_budget.empty()) {
    try {
      config.run.memory_budget = memory::parse_bytes(overrides.memory_budget);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(std::string("--memory-budget: ") + e.what());
    }
  }
  run.finish();

  SectionReader data(sub_table(top, "data"), "data", path, overridden);
  config.data.kind =
      data.get_string("kind", "idx", {"idx", "hdf5"}) == "idx" ? DataKind::kIdx : DataKind::kHdf5;
  config.data.dir = data.get_string("dir", config.data.dir);
  config.data.path = data.get_string("path", "");
  if (config.data.kind == DataKind::kHdf5 && config.data.path.empty()) {
    data.fail(*root["data"]["kind"].node(), "kind",
              "\"hdf5\" needs data.path, the HDF5 file holding the samples and labels");
  }
  config.data.hdf5_train_x = data.get_string("train_x", config.data.hdf5_train_x);
  config.data.hdf5_train_y = data.get_string("train_y", config.data.hdf5_train_y);
  config.data.hdf5_test_x = data.get_string("test_x", config.data.hdf5_test_x);
  config.data.hdf5_test_y = data.get_string("test_y", config.data.hdf5_test_y);
  config.data.train_images = data.get_string("train_images", config.data.train_images);
  config.data.train_labels = data.get_string("train_labels", config.data.train_labels);
  config.data.test_images = data.get_string("test_images", config.data.test_images);
  config.data.test_labels = data.get_string("test_labels", config.data.test_labels);
  config.data.num_classes = data.get_int("num_classes", 10, 2, 100000);
  config.data.normalize = [&] {
    const std::string value = data.get_string("normalize", "unit", {"unit", "standard", "none"});
    return value == "unit"       ? Normalize::kUnit
           : value == "standard" ? Normalize::kStandard
                                 : Normalize::kNone;
  }();
  config.data.shuffle_classes =
      data.get_string("class_order", "natural", {"natural", "shuffled"}) == "shuffled";
  {
    const std::string scenario =
        data.get_string("scenario", "split", {"split", "permuted", "rotated", "sources"});
    config.data.scenario = scenario == "split"      ? Scenario::kSplit
                           : scenario == "permuted" ? Scenario::kPermuted
                           : scenario == "rotated"  ? Scenario::kRotated
                                                    : Scenario::kSources;
    if (config.data.scenario == Scenario::kSources && config.data.kind != DataKind::kHdf5) {
      data.fail(*root["data"]["scenario"].node(), "scenario",
                "\"sources\" reads each task from its own HDF5 datasets: needs data.kind = "
                "\"hdf5\"");
    }
  }
  const bool split = config.data.scenario == Scenario::kSplit;
  const std::string default_incremental =
      split || config.data.scenario == Scenario::kSources ? "task" : "domain";
  const std::string incremental =
      data.get_string("incremental", default_incremental, {"task", "domain", "class"});
  config.data.incremental = incremental == "task"     ? Incremental::kTask
                            : incremental == "domain" ? Incremental::kDomain
                                                      : Incremental::kClass;
  const int64_t classes = config.data.num_classes;
  config.data.task_classes = data.get_int_lists("task_classes", 0, classes - 1);
  const bool listed = !config.data.task_classes.empty();
  if (listed && !split) {
    data.fail(*root["data"]["task_classes"].node(), "task_classes",
              "lists classes per task, which only a split scenario uses");
  }
  config.data.num_tasks =
      data.get_int("num_tasks",
                   listed  ? static_cast<int64_t>(config.data.task_classes.size())
                   : split ? 5
                           : 10,
                   1, split ? classes : 100);
  if (listed && config.data.num_tasks != static_cast<int64_t>(config.data.task_classes.size())) {
    data.fail(*root["data"]["num_tasks"].node(), "num_tasks",
              std::to_string(config.data.num_tasks) + " tasks but data.task_classes lists " +
                  std::to_string(config.data.task_classes.size()));
  }
  if (split && !listed && classes % config.data.num_tasks != 0) {
    std::string divisors;
    for (int64_t d = 1; d <= classes; ++d) {
      if (classes % d == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(d);
    }
    data.fail(*root["data"]["num_tasks"].node(), "num_tasks",
              "a split scenario needs a divisor of the " + std::to_string(classes) + " classes (" +
                  divisors + "), or explicit data.task_classes");
  }
  config.data.rotation_step_degrees = data.get_float("rotation_step", 0.0, 0.0, 360.0);
  if (config.data.scenario != Scenario::kRotated && config.data.rotation_step_degrees != 0.0) {
    data.fail(*root["data"]["rotation_step"].node(), "rotation_step",
              "applies to scenario = \"rotated\" only");
  }
  if (config.data.scenario == Scenario::kRotated && config.data.rotation_step_degrees == 0.0) {
    config.data.rotation_step_degrees = 180.0 / static_cast<double>(config.data.num_tasks);
  }
  auto get_bytes = [&](const char* key, int64_t fallback) {
    const toml::node* node = data.take(key);
    if (node == nullptr) return fallback;
    try {
      const int64_t bytes =
          node->is_integer() ? node->as_integer()->get()
          : node->is_string()
              ? memory::parse_bytes(node->as_string()->get())
              : throw std::invalid_argument("expected a size string (\"1.5GiB\") or bytes");
      if (bytes < 0) throw std::invalid_argument("must not be negative");
      return bytes;
    } catch (const std::invalid_argument& e) {
      data.fail(*node, key, e.what());
    }
  };
  config.data.max_resident_bytes = get_bytes("max_resident", config.data.max_resident_bytes);
  config.data.stream_cache_bytes = get_bytes("stream_cache", config.data.stream_cache_bytes);
  config.data.train_samples_per_task = data.get_int("train_samples_per_task", 0, 0, INT64_MAX);
  config.data.test_samples_per_task = data.get_int("test_samples_per_task", 0, 0, INT64_MAX);
  data.finish();

  SectionReader model(sub_table(top, "model"), "model", path, overridden);
  {
    const std::string kind = model.get_string("kind", "mlp", {"mlp", "cnn", "torchscript"});
    config.model.kind = kind == "mlp"   ? ModelKind::kMlp
                        : kind == "cnn" ? ModelKind::kCnn
                                        : ModelKind::kTorchScript;
  }
  config.model.hidden = model.get_int_list("hidden", config.model.hidden, 1, 1 << 20);
  if (config.model.hidden.empty()) {
    model.fail(*root["model"]["hidden"].node(), "hidden", "needs at least one layer size");
  }
  config.model.path = model.get_string("path", "");
  config.model.input_shape = model.get_int_list("input_shape", {}, 1, 1 << 24);
  const bool scripted = config.model.kind == ModelKind::kTorchScript;
  if (scripted && config.model.path.empty()) {
    model.fail(*root["model"]["kind"].node(), "kind",
               "\"torchscript\" needs model.path, the file torch.jit.save wrote");
  }
  for (const char* key : {"path", "input_shape"}) {
    if (!scripted && root["model"][key].node() != nullptr) {
      model.fail(*root["model"][key].node(), key, "applies to model.kind = \"torchscript\" only");
    }
  }
  model.finish();

  SectionReader train(sub_table(top, "train"), "train", path, overridden);
  config.train.optimizer = train.get_string("optimizer", "adam", {"sgd", "adam"}) == "sgd"
                               ? OptimizerKind::kSgd
                               : OptimizerKind::kAdam;
  config.train.lr = train.get_float("lr", 1e-3, 1e-12, 10.0);
  config.train.momentum = train.get_float("momentum", 0.0, 0.0, 0.999999);
  config.train.batch_size = train.get_int("batch_size", 128, 1, 1 << 24);
  config.train.iterations = train.get_int("iterations", 2000, 1, INT64_MAX / 2);
  config.train.epochs = train.get_int("epochs", 0, 0, 100000);
  config.train.eval_batch_size = train.get_int("eval_batch_size", 1000, 1, 1 << 24);
  config.train.checkpoint_segments = train.get_int("checkpoint_segments", 0, 0, 1000);
  train.finish();

  SectionReader fisher(sub_table(top, "fisher_computation"), "fisher_computation", path,
                       overridden);
  config.fisher.use_memory_efficient = fisher.get_bool("use_memory_efficient", true);
  config.fisher.block_size = fisher.get_int("block_size", 1000000, 1, INT64_MAX);
  config.fisher.use_compression = fisher.get_bool("use_compression", true);
  config.fisher.compression_level = fisher.get_int("compression_level", 9, 1, 9);
  config.fisher.compression_ratio = fisher.get_float("compression_ratio", 0.1, 1e-6, 1.0);
  config.fisher.codec = fisher.get_string(
      "codec", "gzip", {"gzip", "none", "lz4", "bzip2", "blosc-lz4", "blosc-zstd"});
  config.fisher.store_dtype = fisher.get_string("store_dtype", "fp32", {"fp32", "fp16", "bf16"});
  fisher.finish();
  if (overrides.use_memory_efficient) config.fisher.use_memory_efficient = true;

  if (const toml::node* node = top.take("pipeline")) {
    if (!node->is_array())
      top.fail(*node, "pipeline", "expected an array of tables ([[pipeline]])");
    size_t index = 0;
    for (const auto& element : *node->as_array()) {
      config.pipeline.push_back(read_plugin(element, path, index++, overridden));
    }
  }
  if (const toml::node* node = top.take("tasks")) {
    if (!node->is_array()) top.fail(*node, "tasks", "expected an array of tables ([[tasks]])");
    size_t index = 0;
    for (const auto& element : *node->as_array()) {
      const std::string prefix = "tasks[" + std::to_string(index++) + "]";
      if (!element.is_table()) top.fail(element, prefix, "expected a table");
      SectionReader task(element.as_table(), prefix, path, overridden);
      TaskOverride override_entry;
      override_entry.name = task.get_string("name", "");
      if (task.take("batch_size") != nullptr) {
        override_entry.batch_size = task.get_int("batch_size", 0, 1, 1 << 24);
      }
      for (const char* key : {"path", "group"}) {
        if (config.data.scenario != Scenario::kSources && element.as_table()->get(key)) {
          task.fail(*element.as_table()->get(key), key,
                    "names this task's own HDF5 datasets, which only data.scenario = "
                    "\"sources\" uses");
        }
      }
      override_entry.path = task.get_string("path", config.data.path);
      override_entry.group = task.get_string("group", "");
      if (config.data.scenario == Scenario::kSources && override_entry.group.empty()) {
        task.fail(element, "group",
                  "data.scenario = \"sources\": every task needs its HDF5 group (datasets "
                  "<group>/train/x, <group>/train/y, <group>/test/x, <group>/test/y)");
      }
      task.finish();
      config.tasks.push_back(override_entry);
    }
    if (config.data.scenario == Scenario::kSources) {
      config.data.num_tasks = static_cast<int64_t>(config.tasks.size());
    }
    if (static_cast<int64_t>(config.tasks.size()) > config.data.num_tasks) {
      top.fail(*node, "tasks",
               std::to_string(config.tasks.size()) + " [[tasks]] entries but data.num_tasks is " +
                   std::to_string(config.data.num_tasks));
    }
  }
  if (config.data.scenario == Scenario::kSources && config.tasks.empty()) {
    throw ConfigError(path +
                      ": data.scenario = \"sources\" needs one [[tasks]] entry per task, "
                      "each with its HDF5 group");
  }
  top.finish();

  if (overrides.plugins) {
    std::vector<PluginSpec> chosen;
    for (const auto& id : *overrides.plugins) {
      auto match = std::find_if(config.pipeline.begin(), config.pipeline.end(),
                                [&](const PluginSpec& spec) { return spec.id == id; });
      if (match != config.pipeline.end()) {
        chosen.push_back(*match);
      } else {
        chosen.push_back(PluginSpec{id, {}, "--plugins"});
      }
    }
    config.pipeline = std::move(chosen);
  }
  auto require_plugin = [&](const std::string& id, const std::string& reason) {
    const bool present = std::any_of(config.pipeline.begin(), config.pipeline.end(),
                                     [&](const PluginSpec& spec) { return spec.id == id; });
    if (!present) config.pipeline.push_back(PluginSpec{id, {}, reason});
  };
  config.profile_memory = overrides.profile_memory;
  config.dynamic_batch_size = overrides.dynamic_batch_size;
  if (overrides.profile_memory) require_plugin("memory_profiler", "--profile-memory");
  if (overrides.dynamic_batch_size) require_plugin("dynamic", "--dynamic-batch-size");
  if (overrides.use_memory_efficient) {
    const bool has_fisher_regularizer = std::any_of(
        config.pipeline.begin(), config.pipeline.end(),
        [](const PluginSpec& spec) { return spec.id == "ewc" || spec.id == "lowrank_fisher"; });
    if (!has_fisher_regularizer) require_plugin("ewc", "--use-memory-efficient");
  }
  config.cli_plugin_path = overrides.plugin_path;

  // Record every resolved value (defaults and CLI switches included), so results.json and the
  // clhost.settings/1 service see exactly what ran.
  auto section = [&](const char* name) -> toml::table& {
    if (!root.contains(name)) root.insert(name, toml::table{});
    return *root.get_as<toml::table>(name);
  };
  auto int_array = [](const std::vector<int64_t>& values) {
    toml::array out;
    for (int64_t value : values) out.push_back(value);
    return out;
  };
  toml::array plugin_path;
  for (const auto& dir : config.run.plugin_path) plugin_path.push_back(dir);
  section("run").insert_or_assign("name", config.run.name);
  section("run").insert_or_assign("seed", static_cast<int64_t>(config.run.seed));
  section("run").insert_or_assign("threads", static_cast<int64_t>(config.run.threads));
  section("run").insert_or_assign("output_dir", config.run.output_dir);
  section("run").insert_or_assign("plugin_path", plugin_path);
  section("run").insert_or_assign("log_every", config.run.log_every);
  section("run").insert_or_assign("memory_budget", config.run.memory_budget);
  section("run").insert_or_assign("checkpoint_every", config.run.checkpoint_every);
  section("data").insert_or_assign("kind", config.data.kind == DataKind::kIdx ? "idx" : "hdf5");
  if (config.data.kind == DataKind::kHdf5) {
    section("data").insert_or_assign("path", config.data.path);
    section("data").insert_or_assign("train_x", config.data.hdf5_train_x);
    section("data").insert_or_assign("train_y", config.data.hdf5_train_y);
    section("data").insert_or_assign("test_x", config.data.hdf5_test_x);
    section("data").insert_or_assign("test_y", config.data.hdf5_test_y);
  }
  section("data").insert_or_assign("dir", config.data.dir);
  section("data").insert_or_assign("train_images", config.data.train_images);
  section("data").insert_or_assign("train_labels", config.data.train_labels);
  section("data").insert_or_assign("test_images", config.data.test_images);
  section("data").insert_or_assign("test_labels", config.data.test_labels);
  section("data").insert_or_assign("num_classes", config.data.num_classes);
  section("data").insert_or_assign("class_order",
                                   config.data.shuffle_classes ? "shuffled" : "natural");
  section("data").insert_or_assign("normalize", config.data.normalize == Normalize::kUnit ? "unit"
                                                : config.data.normalize == Normalize::kStandard
                                                    ? "standard"
                                                    : "none");
  if (config.data.scenario == Scenario::kRotated) {
    section("data").insert_or_assign("rotation_step", config.data.rotation_step_degrees);
  }
  if (!config.data.task_classes.empty()) {
    toml::array lists;
    for (const auto& task : config.data.task_classes) lists.push_back(int_array(task));
    section("data").insert_or_assign("task_classes", lists);
  }
  section("data").insert_or_assign("scenario", to_string(config.data.scenario));
  section("data").insert_or_assign("num_tasks", config.data.num_tasks);
  section("data").insert_or_assign("max_resident", config.data.max_resident_bytes);
  section("data").insert_or_assign("stream_cache", config.data.stream_cache_bytes);
  section("data").insert_or_assign("incremental", to_string(config.data.incremental));
  section("data").insert_or_assign("train_samples_per_task", config.data.train_samples_per_task);
  section("data").insert_or_assign("test_samples_per_task", config.data.test_samples_per_task);
  section("model").insert_or_assign("kind", to_string(config.model.kind));
  section("model").insert_or_assign("hidden", int_array(config.model.hidden));
  if (config.model.kind == ModelKind::kTorchScript) {
    section("model").insert_or_assign("path", config.model.path);
    section("model").insert_or_assign("input_shape", int_array(config.model.input_shape));
  }
  section("train").insert_or_assign("optimizer", to_string(config.train.optimizer));
  section("train").insert_or_assign("lr", config.train.lr);
  section("train").insert_or_assign("momentum", config.train.momentum);
  section("train").insert_or_assign("batch_size", config.train.batch_size);
  section("train").insert_or_assign("iterations", config.train.iterations);
  section("train").insert_or_assign("epochs", config.train.epochs);
  section("train").insert_or_assign("eval_batch_size", config.train.eval_batch_size);
  section("train").insert_or_assign("checkpoint_segments", config.train.checkpoint_segments);
  auto& fisher_table = section("fisher_computation");
  fisher_table.insert_or_assign("use_memory_efficient", config.fisher.use_memory_efficient);
  fisher_table.insert_or_assign("block_size", config.fisher.block_size);
  fisher_table.insert_or_assign("use_compression", config.fisher.use_compression);
  fisher_table.insert_or_assign("compression_level", config.fisher.compression_level);
  fisher_table.insert_or_assign("compression_ratio", config.fisher.compression_ratio);
  fisher_table.insert_or_assign("codec", config.fisher.codec);
  fisher_table.insert_or_assign("store_dtype", config.fisher.store_dtype);
  toml::array pipeline;
  for (const auto& spec : config.pipeline) {
    toml::table entry;
    entry.insert("plugin", spec.id);
    for (const auto& setting : spec.settings) {
      std::visit([&](const auto& value) { entry.insert_or_assign(setting.key, value); },
                 setting.value);
    }
    pipeline.push_back(entry);
  }
  root.insert_or_assign("pipeline", pipeline);
  if (!config.tasks.empty()) {
    toml::array tasks;
    for (const auto& task : config.tasks) {
      toml::table entry;
      entry.insert("name", task.name);
      if (task.batch_size) entry.insert("batch_size", *task.batch_size);
      if (config.data.scenario == Scenario::kSources) {
        entry.insert("path", task.path);
        entry.insert("group", task.group);
      }
      tasks.push_back(entry);
    }
    root.insert_or_assign("tasks", tasks);
  }

  std::ostringstream json;
  json << toml::json_formatter{root};
  config.resolved_json = json.str();
  // "No budget" has no TOML spelling other than leaving the key out.
  if (config.run.memory_budget < 0) section("run").erase("memory_budget");
  std::ostringstream toml_text;
  toml_text << "# The resolved configuration of this run (clhost " << CLHOST_VERSION
            << "), read back by clhost run --resume.\n"
            << toml::toml_formatter{root} << "\n";
  config.resolved_toml = toml_text.str();
  return config;
}

namespace {

// "a.b" for tables, "a[0].b" for arrays of tables; everything else is a value.
void flatten(const nlohmann::json& value, const std::string& prefix,
             std::map<std::string, nlohmann::json>& out) {
  if (value.is_object() && !value.empty()) {
    for (const auto& [key, item] : value.items()) {
      flatten(item, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else if (value.is_array() && !value.empty() && value.front().is_object()) {
    for (size_t i = 0; i < value.size(); ++i) {
      flatten(value[i], prefix + "[" + std::to_string(i) + "]", out);
    }
  } else {
    out[prefix] = value;
  }
}

}  // namespace

const std::vector<std::string>& resume_safe_keys() {
  static const std::vector<std::string> keys = {
      "run.name",        "run.output_dir",    "run.log_every", "run.checkpoint_every",
      "run.plugin_path", "data.stream_cache", "data.dir",      "data.max_resident",
  };
  return keys;
}

std::vector<ConfigChange> config_changes(const std::string& before_json,
                                         const std::string& after_json) {
  std::map<std::string, nlohmann::json> before;
  std::map<std::string, nlohmann::json> after;
  flatten(nlohmann::json::parse(before_json), "", before);
  flatten(nlohmann::json::parse(after_json), "", after);
  std::set<std::string> keys;
  for (const auto& [key, value] : before) keys.insert(key);
  for (const auto& [key, value] : after) keys.insert(key);
  std::vector<ConfigChange> changes;
  const auto& safe = resume_safe_keys();
  for (const auto& key : keys) {
    const nlohmann::json old_value = before.count(key) ? before[key] : nlohmann::json(nullptr);
    const nlohmann::json new_value = after.count(key) ? after[key] : nlohmann::json(nullptr);
    if (old_value == new_value) continue;
    changes.push_back({key, old_value.dump(), new_value.dump(),
                       std::find(safe.begin(), safe.end(), key) != safe.end()});
  }
  return changes;
}

}  // namespace clhost
