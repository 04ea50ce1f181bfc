#include "clhost/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <variant>

#include "clhost/errors.hpp"
#include "clhost/memory_budget.hpp"
#include "config_internal.hpp"

namespace clhost {
namespace {

using config_detail::join;
using config_detail::location_of;
using config_detail::location_or_override;
using config_detail::Overridden;
using config_detail::section;

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
                const Overridden& overridden)
      : table_(table),
        prefix_(std::move(prefix)),
        file_(std::move(file)),
        overridden_(overridden) {}

  [[noreturn]] void fail(const toml::node& node, const std::string& key,
                         const std::string& reason) const {
    throw ConfigError(where(node.source(), key) + ": " + path(key) + ": " + reason);
  }

  [[nodiscard]] std::string where(const toml::source_region& region, const std::string& key) const {
    return location_or_override(region, path(key), file_, overridden_);
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

  // One of `names` (the TOML spelling of each value).
  template <class Enum>
  Enum get_enum(const std::string& key, Enum fallback,
                const std::vector<std::pair<Enum, const char*>>& names) {
    std::vector<std::string> choices;
    const char* fallback_name = "";
    for (const auto& [value, name] : names) {
      choices.emplace_back(name);
      if (value == fallback) fallback_name = name;
    }
    const std::string chosen = get_string(key, fallback_name, choices);
    for (const auto& [value, name] : names) {
      if (chosen == name) return value;
    }
    return fallback;
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
  const Overridden& overridden_;
};

PluginSpec read_plugin(const toml::node& node, const std::string& file, size_t index,
                       const Overridden& overridden, const std::string& added_by) {
  const std::string prefix = "pipeline[" + std::to_string(index) + "]";
  if (!node.is_table()) {
    throw ConfigError(location_of(node.source(), file) + ": " + prefix +
                      ": expected a table with a 'plugin' key");
  }
  const toml::table& table = *node.as_table();
  PluginSpec spec;
  spec.location = added_by.empty() ? location_of(node.source(), file) : added_by;
  const toml::node* id = table.get("plugin");
  if (id == nullptr || !id->is_string()) {
    throw ConfigError(spec.location + ": " + prefix +
                      ".plugin: missing or not a string (the plug-in id, e.g. \"l2\")");
  }
  spec.id = id->as_string()->get();
  for (const auto& [key, value] : table) {
    const std::string name(key.str());
    if (name == "plugin") continue;
    if (const std::string control = config_detail::control_character(name); !control.empty()) {
      throw ConfigError(location_of(value.source(), file) + ": " + prefix +
                        ": a setting's name holds a control character (" + control +
                        "); names are plain text");
    }
    PluginSetting setting;
    setting.key = name;
    setting.location = location_or_override(
        value.source(), "pipeline." + std::to_string(index) + "." + name, file, overridden);
    if (value.is_boolean()) {
      setting.value = value.as_boolean()->get();
    } else if (value.is_integer()) {
      setting.value = value.as_integer()->get();
    } else if (value.is_floating_point()) {
      setting.value = value.as_floating_point()->get();
    } else if (value.is_string()) {
      setting.value = value.as_string()->get();
    } else {
      std::string message = setting.location;
      message.append(": ").append(prefix).append(".").append(name);
      message.append(": plug-in settings must be booleans, integers, floats or strings, got ");
      throw ConfigError(message + type_name(value));
    }
    spec.settings.push_back(std::move(setting));
  }
  return spec;
}

const toml::table* sub_table(SectionReader& root, const std::string& key) {
  const toml::node* node = root.take(key);
  if (node == nullptr) return nullptr;
  if (!node->is_table())
    root.fail(*node, key, std::string("expected a table, got ") + type_name(*node));
  return node->as_table();
}

}  // namespace

namespace {

// Each enum's TOML names, in one table: the reader's choices, the parser and to_string.
template <class Enum>
using EnumNames = std::vector<std::pair<Enum, const char*>>;

const EnumNames<Scenario> kScenarioNames = {{Scenario::kSplit, "split"},
                                            {Scenario::kPermuted, "permuted"},
                                            {Scenario::kRotated, "rotated"},
                                            {Scenario::kSources, "sources"}};
const EnumNames<Incremental> kIncrementalNames = {
    {Incremental::kTask, "task"}, {Incremental::kDomain, "domain"}, {Incremental::kClass, "class"}};
const EnumNames<ModelKind> kModelKindNames = {{ModelKind::kMlp, "mlp"},
                                              {ModelKind::kCnn, "cnn"},
                                              {ModelKind::kTorchScript, "torchscript"},
                                              {ModelKind::kTransformer, "transformer"}};
const EnumNames<OptimizerKind> kOptimizerNames = {{OptimizerKind::kSgd, "sgd"},
                                                  {OptimizerKind::kAdam, "adam"}};
const EnumNames<Normalize> kNormalizeNames = {
    {Normalize::kUnit, "unit"}, {Normalize::kStandard, "standard"}, {Normalize::kNone, "none"}};
const EnumNames<DataKind> kDataKindNames = {
    {DataKind::kIdx, "idx"}, {DataKind::kHdf5, "hdf5"}, {DataKind::kText, "text"}};

template <class Enum>
const char* name_of(const EnumNames<Enum>& names, Enum value) {
  for (const auto& [item, name] : names) {
    if (item == value) return name;
  }
  return "?";
}

}  // namespace

const char* to_string(Scenario value) {
  return name_of(kScenarioNames, value);
}
const char* to_string(Incremental value) {
  return name_of(kIncrementalNames, value);
}
const std::vector<std::string>& fortune_languages() {
  static const std::vector<std::string> names = {"en", "de", "es", "it", "ru", "pl"};
  return names;
}

const char* to_string(ModelKind value) {
  return name_of(kModelKindNames, value);
}
const char* to_string(OptimizerKind value) {
  return name_of(kOptimizerNames, value);
}

namespace {

// What every section reader needs: the parsed (and overridden) file, its path, the --set keys.
struct ConfigInput {
  toml::table& root;
  const std::string& path;
  const Overridden& overridden;
};

// A key that takes effect only when other keys have certain values. One table for reading and
// writing: a key the user gave (in the file or with --set) where it has no effect is refused,
// and the resolved configuration leaves it out, so results.json never records a setting that
// did nothing. docs/config.md lists the same conditions.
struct ConditionalKey {
  const char* key;
  const char* applies_when;
  bool (*applies)(const RunConfig&);
};

bool is_hdf5(const RunConfig& c) {
  return c.data.kind == DataKind::kHdf5;
}
bool is_idx(const RunConfig& c) {
  return c.data.kind == DataKind::kIdx;
}
bool is_text(const RunConfig& c) {
  return c.data.kind == DataKind::kText;
}
bool has_classes(const RunConfig& c) {
  return c.data.kind != DataKind::kText;
}
bool has_layer_sizes(const RunConfig& c) {
  return c.model.kind == ModelKind::kMlp || c.model.kind == ModelKind::kCnn;
}
bool is_transformer(const RunConfig& c) {
  return c.model.kind == ModelKind::kTransformer;
}
bool is_torchscript(const RunConfig& c) {
  return c.model.kind == ModelKind::kTorchScript;
}
bool compresses(const RunConfig& c) {
  return c.fisher.use_compression;
}

constexpr const char* kLabelledData =
    "data.kind = \"idx\" or \"hdf5\" (text tasks are next-byte prediction: no classes)";

const ConditionalKey kConditionalKeys[] = {
    {"train.momentum", "train.optimizer = \"sgd\"",
     [](const RunConfig& c) { return c.train.optimizer == OptimizerKind::kSgd; }},
    {"train.iterations", "train.epochs = 0 (with epochs > 0 the epochs set the steps per task)",
     [](const RunConfig& c) { return c.train.epochs == 0; }},
    {"data.path", "data.kind = \"hdf5\"", is_hdf5},
    {"data.train_x", "data.kind = \"hdf5\"", is_hdf5},
    {"data.train_y", "data.kind = \"hdf5\"", is_hdf5},
    {"data.test_x", "data.kind = \"hdf5\"", is_hdf5},
    {"data.test_y", "data.kind = \"hdf5\"", is_hdf5},
    {"data.max_resident", "data.kind = \"hdf5\" or \"text\" (IDX data is always resident)",
     [](const RunConfig& c) { return is_hdf5(c) || is_text(c); }},
    {"data.stream_cache", "data.kind = \"hdf5\" (the cache of streamed HDF5 datasets)", is_hdf5},
    {"data.dir", "data.kind = \"idx\"", is_idx},
    {"data.train_images", "data.kind = \"idx\"", is_idx},
    {"data.train_labels", "data.kind = \"idx\"", is_idx},
    {"data.test_images", "data.kind = \"idx\"", is_idx},
    {"data.test_labels", "data.kind = \"idx\"", is_idx},
    {"data.class_order", "data.scenario = \"split\" without data.task_classes",
     [](const RunConfig& c) {
       return has_classes(c) && c.data.scenario == Scenario::kSplit && c.data.task_classes.empty();
     }},
    {"data.task_classes", "data.scenario = \"split\"",
     [](const RunConfig& c) { return has_classes(c) && c.data.scenario == Scenario::kSplit; }},
    {"data.rotation_step", "data.scenario = \"rotated\"",
     [](const RunConfig& c) { return has_classes(c) && c.data.scenario == Scenario::kRotated; }},
    {"data.scenario", kLabelledData, has_classes},
    {"data.incremental", kLabelledData, has_classes},
    {"data.num_classes", kLabelledData, has_classes},
    {"data.num_tasks", kLabelledData, has_classes},
    {"data.normalize", kLabelledData, has_classes},
    {"data.languages", "data.kind = \"text\"", is_text},
    {"data.fortunes_dir", "data.kind = \"text\" with data.languages",
     [](const RunConfig& c) { return is_text(c) && !c.data.languages.empty(); }},
    {"data.test_fraction", "data.kind = \"text\"", is_text},
    {"model.hidden", "model.kind = \"mlp\" or \"cnn\" (the other kinds have their own layers)",
     has_layer_sizes},
    {"model.layers", "model.kind = \"transformer\"", is_transformer},
    {"model.heads", "model.kind = \"transformer\"", is_transformer},
    {"model.d_model", "model.kind = \"transformer\"", is_transformer},
    {"model.context", "model.kind = \"transformer\"", is_transformer},
    {"model.mlp_ratio", "model.kind = \"transformer\"", is_transformer},
    {"model.dropout", "model.kind = \"transformer\"", is_transformer},
    {"model.tied_head", "model.kind = \"transformer\"", is_transformer},
    {"model.path", "model.kind = \"torchscript\"", is_torchscript},
    {"model.input_shape", "model.kind = \"torchscript\"", is_torchscript},
    {"fisher_computation.codec", "fisher_computation.use_compression = true", compresses},
    {"fisher_computation.compression_level",
     "fisher_computation.use_compression = true with codec gzip, blosc-lz4 or blosc-zstd",
     [](const RunConfig& c) {
       const std::string& codec = c.fisher.codec;
       return c.fisher.use_compression &&
              (codec == "gzip" || codec == "blosc-lz4" || codec == "blosc-zstd");
     }},
};

// Refuses every key the user gave where it has no effect (exit 2, located).
void check_conditional_keys(const ConfigInput& in, const RunConfig& config) {
  for (const auto& rule : kConditionalKeys) {
    const toml::node* node = toml::at_path(in.root, rule.key).node();
    if (node == nullptr || rule.applies(config)) continue;
    throw ConfigError(location_or_override(node->source(), rule.key, in.path, in.overridden) +
                      ": " + rule.key + ": has no effect here: it applies only with " +
                      rule.applies_when + "; remove it, or change that setting");
  }
}

// Every key of the host's sections that the user gave, as dotted paths (for results.json and
// the rule that a given setting is never silently ignored).
std::vector<std::string> given_keys(const toml::table& root) {
  std::vector<std::string> keys;
  for (const char* section :
       {"run", "distributed", "data", "model", "train", "fisher_computation"}) {
    const toml::table* table = root[section].as_table();
    if (table == nullptr) continue;
    for (const auto& [key, value] : *table)
      keys.push_back(std::string(section) + "." + std::string(key.str()));
  }
  return keys;
}

int64_t read_bytes(SectionReader& section, const char* key, int64_t fallback, int64_t minimum,
                   int64_t maximum = INT64_MAX) {
  const toml::node* node = section.take(key);
  if (node == nullptr) return fallback;
  try {
    const int64_t bytes =
        node->is_integer() ? node->as_integer()->get()
        : node->is_string()
            ? memory::parse_bytes(node->as_string()->get())
            : throw std::invalid_argument("expected a size string (\"1.5GiB\") or bytes");
    if (bytes < minimum) {
      throw std::invalid_argument(minimum > 0 ? "must be positive" : "must not be negative");
    }
    if (bytes > maximum) {
      throw std::invalid_argument("at most " + memory::format_bytes(maximum) + " (" +
                                  std::to_string(maximum) + " bytes)");
    }
    return bytes;
  } catch (const std::invalid_argument& e) {
    section.fail(*node, key, e.what());
  }
}

// One key of a section, described once: its TOML name and how it is read into the section's
// struct and written back into the resolved configuration (the struct member it fills, its type,
// range, choices or names). The reader and the resolved-config writer both walk these tables;
// the default is the member's initial value in config.hpp. Checks across keys and the two keys
// whose defaults follow from others (data.num_tasks, data.task_classes) are in the readers below.
template <class Section>
struct Key {
  const char* name;
  std::function<void(SectionReader&, Section&)> read;
  std::function<void(toml::table&, const Section&)> write;
};

template <class Section, class Integer>
Key<Section> int_key(const char* name, Integer Section::*member, int64_t min, int64_t max) {
  return {name,
          [=](SectionReader& reader, Section& out) {
            out.*member = static_cast<Integer>(
                reader.get_int(name, static_cast<int64_t>(out.*member), min, max));
          },
          [=](toml::table& table, const Section& in) {
            table.insert_or_assign(name, static_cast<int64_t>(in.*member));
          }};
}

// A member TOML holds as it is (float, bool, string): `get` reads it given the current value.
template <class Section, class T, class Get>
Key<Section> plain_key(const char* name, T Section::*member, Get get) {
  return {name,
          [=](SectionReader& reader, Section& out) { out.*member = get(reader, out.*member); },
          [=](toml::table& table, const Section& in) { table.insert_or_assign(name, in.*member); }};
}

template <class Section>
Key<Section> float_key(const char* name, double Section::*member, double min, double max) {
  return plain_key<Section>(name, member, [=](SectionReader& reader, double current) {
    return reader.get_float(name, current, min, max);
  });
}

template <class Section>
Key<Section> bool_key(const char* name, bool Section::*member) {
  return plain_key<Section>(name, member, [=](SectionReader& reader, bool current) {
    return reader.get_bool(name, current);
  });
}

template <class Section>
Key<Section> text_key(const char* name, std::string Section::*member,
                      std::vector<std::string> choices = {}) {
  return plain_key<Section>(
      name, member,
      [=, choices = std::move(choices)](SectionReader& reader, const std::string& current) {
        return reader.get_string(name, current, choices);
      });
}

// An enum (or a bool spelled by names) from its name table; `fallback` picks the default from the
// keys read before it (data.incremental follows data.scenario), else the member's initial value.
template <class Section, class Enum>
Key<Section> enum_key(const char* name, Enum Section::*member, const EnumNames<Enum>& names,
                      std::function<Enum(const Section&)> fallback = nullptr) {
  return {name,
          [=, &names](SectionReader& reader, Section& out) {
            out.*member = reader.get_enum(name, fallback ? fallback(out) : out.*member, names);
          },
          [=, &names](toml::table& table, const Section& in) {
            table.insert_or_assign(name, name_of(names, in.*member));
          }};
}

template <class Section>
Key<Section> int_list_key(const char* name, std::vector<int64_t> Section::*member, int64_t min,
                          int64_t max, bool non_empty) {
  return {name,
          [=](SectionReader& reader, Section& out) {
            out.*member = reader.get_int_list(name, out.*member, min, max);
            if (non_empty && (out.*member).empty()) {
              reader.fail(*reader.take(name), name, "needs at least one value");
            }
          },
          [=](toml::table& table, const Section& in) {
            toml::array values;
            for (int64_t value : in.*member) values.push_back(value);
            table.insert_or_assign(name, values);
          }};
}

template <class Section>
Key<Section> string_list_key(const char* name, std::vector<std::string> Section::*member) {
  return {name,
          [=](SectionReader& reader, Section& out) { out.*member = reader.get_string_list(name); },
          [=](toml::table& table, const Section& in) {
            toml::array values;
            for (const auto& value : in.*member) values.push_back(value);
            table.insert_or_assign(name, values);
          }};
}

// A byte count written as a size string ("1.5GiB") or an integer; `minimum` 1 or 0.
template <class Section>
Key<Section> bytes_key(const char* name, int64_t Section::*member, int64_t minimum,
                       int64_t maximum = INT64_MAX) {
  return {name,
          [=](SectionReader& reader, Section& out) {
            out.*member = read_bytes(reader, name, out.*member, minimum, maximum);
          },
          [=](toml::table& table, const Section& in) { table.insert_or_assign(name, in.*member); }};
}

// data.validation: a fraction of each task's training samples (a float below 1) or a count (an
// integer); 0 holds nothing out. Written back in the form it was given.
template <class Section>
Key<Section> validation_key(const char* name, ValidationSplit Section::*member) {
  return {name,
          [=](SectionReader& reader, Section& out) {
            const toml::node* node = reader.take(name);
            if (node == nullptr) return;
            ValidationSplit split;
            if (const auto* count = node->as_integer()) {
              if (count->get() < 0) reader.fail(*node, name, "a count must not be negative");
              split.count = count->get();
            } else if (const auto* fraction = node->as_floating_point()) {
              const double value = fraction->get();
              if (!(value >= 0.0 && value < 1.0)) {
                reader.fail(*node, name,
                            "a fraction must be in [0, 1) (give a number of samples per task as "
                            "an integer, e.g. 1000)");
              }
              split.fraction = value;
            } else {
              reader.fail(*node, name,
                          std::string("expected a fraction (0.1) or a count of samples (1000), "
                                      "got ") +
                              type_name(*node));
            }
            out.*member = split;
          },
          [=](toml::table& table, const Section& in) {
            const ValidationSplit& split = in.*member;
            if (split.count > 0) {
              table.insert_or_assign(name, split.count);
            } else {
              table.insert_or_assign(name, split.fraction);
            }
          }};
}

const std::vector<Key<RunSection>>& run_keys() {
  using S = RunSection;
  static const std::vector<Key<S>> keys = {
      text_key<S>("name", &S::name), int_key<S>("seed", &S::seed, 0, INT64_MAX),
      int_key<S>("threads", &S::threads, 1, 256), text_key<S>("output_dir", &S::output_dir),
      int_key<S>("log_every", &S::log_every, 1, 1000000),
      int_key<S>("checkpoint_every", &S::checkpoint_every, 0, INT64_MAX),
      string_list_key<S>("plugin_path", &S::plugin_path),
      bytes_key<S>("memory_budget", &S::memory_budget, 1),
      // glibc's thresholds are ints.
      bytes_key<S>("keep_freed_memory", &S::keep_freed_memory, 0, INT32_MAX)};
  return keys;
}

const EnumNames<CollectiveBackend> kBackendNames = {{CollectiveBackend::kGloo, "gloo"}};

const std::vector<Key<DistributedSection>>& distributed_keys() {
  using S = DistributedSection;
  static const std::vector<Key<S>> keys = {
      enum_key<S>("backend", &S::backend, kBackendNames),
      float_key<S>("timeout", &S::timeout_seconds, 1.0, 86400.0),
      bytes_key<S>("bucket_size", &S::bucket_bytes, 1024)};
  return keys;
}

Incremental default_incremental(const DataSection& data) {
  const bool per_task = data.scenario == Scenario::kSplit || data.scenario == Scenario::kSources;
  return per_task ? Incremental::kTask : Incremental::kDomain;
}

const EnumNames<bool> kClassOrderNames = {{false, "natural"}, {true, "shuffled"}};

const std::vector<Key<DataSection>>& data_keys() {
  using S = DataSection;
  static const std::vector<Key<S>> keys = {
      text_key<S>("dir", &S::dir),
      text_key<S>("path", &S::path),
      text_key<S>("train_x", &S::hdf5_train_x),
      text_key<S>("train_y", &S::hdf5_train_y),
      text_key<S>("test_x", &S::hdf5_test_x),
      text_key<S>("test_y", &S::hdf5_test_y),
      text_key<S>("train_images", &S::train_images),
      text_key<S>("train_labels", &S::train_labels),
      text_key<S>("test_images", &S::test_images),
      text_key<S>("test_labels", &S::test_labels),
      int_key<S>("num_classes", &S::num_classes, 2, 100000),
      float_key<S>("rotation_step", &S::rotation_step_degrees, 0.0, 360.0),
      int_key<S>("train_samples_per_task", &S::train_samples_per_task, 0, INT64_MAX),
      int_key<S>("test_samples_per_task", &S::test_samples_per_task, 0, INT64_MAX),
      text_key<S>("fortunes_dir", &S::fortunes_dir),
      float_key<S>("test_fraction", &S::test_fraction, 0.01, 0.9),
      validation_key<S>("validation", &S::validation),
      enum_key<S>("kind", &S::kind, kDataKindNames),
      bytes_key<S>("max_resident", &S::max_resident_bytes, 0),
      bytes_key<S>("stream_cache", &S::stream_cache_bytes, 0),
      enum_key<S>("normalize", &S::normalize, kNormalizeNames),
      enum_key<S>("class_order", &S::shuffle_classes, kClassOrderNames),
      enum_key<S>("scenario", &S::scenario, kScenarioNames),
      enum_key<S>("incremental", &S::incremental, kIncrementalNames,
                  std::function<Incremental(const S&)>(default_incremental)),
      string_list_key<S>("languages", &S::languages)};
  return keys;
}

const std::vector<Key<ModelSection>>& model_keys() {
  using S = ModelSection;
  static const std::vector<Key<S>> keys = {
      enum_key<S>("kind", &S::kind, kModelKindNames),
      int_list_key<S>("hidden", &S::hidden, 1, 1 << 20, true),
      text_key<S>("path", &S::path),
      int_list_key<S>("input_shape", &S::input_shape, 1, 1 << 24, false),
      int_key<S>("layers", &S::layers, 1, 1000),
      int_key<S>("heads", &S::heads, 1, 1024),
      int_key<S>("d_model", &S::d_model, 1, 1 << 16),
      int_key<S>("context", &S::context, 1, 1 << 20),
      int_key<S>("mlp_ratio", &S::mlp_ratio, 1, 64),
      float_key<S>("dropout", &S::dropout, 0.0, 0.9),
      bool_key<S>("tied_head", &S::tied_head)};
  return keys;
}

const std::vector<Key<TrainSection>>& train_keys() {
  using S = TrainSection;
  static const std::vector<Key<S>> keys = {
      enum_key<S>("optimizer", &S::optimizer, kOptimizerNames),
      float_key<S>("lr", &S::lr, 1e-12, 10.0),
      float_key<S>("momentum", &S::momentum, 0.0, 0.999999),
      int_key<S>("batch_size", &S::batch_size, 1, 1 << 24),
      int_key<S>("iterations", &S::iterations, 1, INT64_MAX / 2),
      int_key<S>("epochs", &S::epochs, 0, 100000),
      int_key<S>("eval_batch_size", &S::eval_batch_size, 1, 1 << 24),
      int_key<S>("checkpoint_segments", &S::checkpoint_segments, 0, 1000)};
  return keys;
}

const std::vector<Key<FisherSection>>& fisher_keys() {
  using S = FisherSection;
  static const std::vector<Key<S>> keys = {
      bool_key<S>("use_memory_efficient", &S::use_memory_efficient),
      int_key<S>("block_size", &S::block_size, 1, INT64_MAX),
      bool_key<S>("use_compression", &S::use_compression),
      int_key<S>("compression_level", &S::compression_level, 1, 9),
      float_key<S>("compression_ratio", &S::compression_ratio, 1e-6, 1.0),
      text_key<S>("codec", &S::codec, {"gzip", "none", "lz4", "bzip2", "blosc-lz4", "blosc-zstd"}),
      text_key<S>("store_dtype", &S::store_dtype, {"fp32", "fp16", "bf16"})};
  return keys;
}

// Reads every described key of `reader`'s section into `out` (absent keys keep their default).
template <class Section>
void read_keys(SectionReader& reader, const std::vector<Key<Section>>& keys, Section& out) {
  for (const auto& key : keys) key.read(reader, out);
}

// Writes every described key of `in` into the resolved configuration's table.
template <class Section>
void write_keys(toml::table& table, const std::vector<Key<Section>>& keys, const Section& in) {
  for (const auto& key : keys) key.write(table, in);
}

void read_run(SectionReader& top, const ConfigInput& in, RunSection& run_config) {
  SectionReader run(sub_table(top, "run"), "run", in.path, in.overridden);
  read_keys(run, run_keys(), run_config);
  if (run_config.name.empty() || run_config.name.find('/') != std::string::npos) {
    run.fail(*in.root["run"]["name"].node(), "name", "must be non-empty and contain no '/'");
  }
  run.finish();
}

void read_distributed(SectionReader& top, const ConfigInput& in, DistributedSection& out) {
  SectionReader distributed(sub_table(top, "distributed"), "distributed", in.path, in.overridden);
  read_keys(distributed, distributed_keys(), out);
  distributed.finish();
}

void read_split_tasks(SectionReader& data, const ConfigInput& in, DataSection& out) {
  const bool split = out.scenario == Scenario::kSplit;
  const int64_t classes = out.num_classes;
  if (const toml::node* node = in.root["data"]["task_classes"].node()) {
    if (node->is_array() && node->as_array()->empty()) {
      data.fail(*node, "task_classes",
                "is empty; leave the key out for num_tasks equal chunks of the class order");
    }
  }
  out.task_classes = data.get_int_lists("task_classes", 0, classes - 1);
  const bool listed = !out.task_classes.empty();
  out.num_tasks = data.get_int("num_tasks",
                               listed  ? static_cast<int64_t>(out.task_classes.size())
                               : split ? 5
                                       : 10,
                               1, split ? classes : 100);
  if (listed && out.num_tasks != static_cast<int64_t>(out.task_classes.size())) {
    data.fail(*in.root["data"]["num_tasks"].node(), "num_tasks",
              std::to_string(out.num_tasks) + " tasks but data.task_classes lists " +
                  std::to_string(out.task_classes.size()));
  }
  if (split && listed && out.incremental == Incremental::kDomain) {
    for (const auto& list : out.task_classes) {
      if (list.size() != out.task_classes.front().size()) {
        data.fail(*in.root["data"]["task_classes"].node(), "task_classes",
                  "domain-incremental split tasks share one output per position within the task: "
                  "every task needs the same number of classes");
      }
    }
  }
  if (split && !listed && classes % out.num_tasks != 0) {
    std::string divisors;
    for (int64_t d = 1; d <= classes; ++d) {
      if (classes % d == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(d);
    }
    data.fail(*in.root["data"]["num_tasks"].node(), "num_tasks",
              "a split scenario needs a divisor of the " + std::to_string(classes) + " classes (" +
                  divisors + "), or explicit data.task_classes");
  }
}

// data.languages: known names, each once; text data needs them or [[tasks]] paths (read_tasks).
void check_languages(SectionReader& data, const ConfigInput& in, const DataSection& out) {
  const toml::node* node = in.root["data"]["languages"].node();
  if (node == nullptr) return;
  const auto& known = fortune_languages();
  for (size_t i = 0; i < out.languages.size(); ++i) {
    const std::string& language = out.languages[i];
    const toml::node& element = node->is_array() ? *node->as_array()->get(i) : *node;
    if (std::find(known.begin(), known.end(), language) == known.end()) {
      data.fail(
          element, "languages",
          "\"" + language + "\" is not one of the fortunes languages (" + join(known, ", ") + ")");
    }
    if (std::find(out.languages.begin(), out.languages.begin() + static_cast<std::ptrdiff_t>(i),
                  language) != out.languages.begin() + static_cast<std::ptrdiff_t>(i)) {
      data.fail(element, "languages", "\"" + language + "\" appears twice");
    }
  }
  if (out.languages.empty()) data.fail(*node, "languages", "is empty");
}

void read_data(SectionReader& top, const ConfigInput& in, DataSection& out) {
  SectionReader data(sub_table(top, "data"), "data", in.path, in.overridden);
  read_keys(data, data_keys(), out);
  if (out.kind == DataKind::kHdf5 && out.path.empty()) {
    data.fail(*in.root["data"]["kind"].node(), "kind",
              "\"hdf5\" needs data.path, the HDF5 file holding the samples and labels");
  }
  if (out.scenario == Scenario::kSources && out.kind != DataKind::kHdf5) {
    data.fail(*in.root["data"]["scenario"].node(), "scenario",
              "\"sources\" reads each task from its own HDF5 datasets: needs data.kind = "
              "\"hdf5\"");
  }
  check_languages(data, in, out);
  if (out.kind != DataKind::kText) {
    read_split_tasks(data, in, out);
  } else {
    // Refused below as keys without effect, rather than as unknown keys.
    (void)data.take("num_tasks");
    (void)data.take("task_classes");
  }
  if (out.scenario == Scenario::kRotated && out.rotation_step_degrees == 0.0) {
    out.rotation_step_degrees = 180.0 / static_cast<double>(out.num_tasks);
  }
  data.finish();
}

void read_model(SectionReader& top, const ConfigInput& in, ModelSection& out) {
  SectionReader model(sub_table(top, "model"), "model", in.path, in.overridden);
  read_keys(model, model_keys(), out);
  if (out.kind == ModelKind::kTorchScript && out.path.empty()) {
    model.fail(*in.root["model"]["kind"].node(), "kind",
               "\"torchscript\" needs model.path, the file torch.jit.save wrote");
  }
  if (out.kind == ModelKind::kTransformer && out.d_model % out.heads != 0) {
    const toml::node* node = in.root["model"]["d_model"].node();
    if (node == nullptr) node = in.root["model"]["heads"].node();
    model.fail(node != nullptr ? *node : *in.root["model"].node(), "d_model",
               std::to_string(out.d_model) +
                   " is not a multiple of model.heads = " + std::to_string(out.heads));
  }
  model.finish();
}

void read_train(SectionReader& top, const ConfigInput& in, TrainSection& out) {
  SectionReader train(sub_table(top, "train"), "train", in.path, in.overridden);
  read_keys(train, train_keys(), out);
  train.finish();
}

void read_fisher(SectionReader& top, const ConfigInput& in, FisherSection& out) {
  SectionReader fisher(sub_table(top, "fisher_computation"), "fisher_computation", in.path,
                       in.overridden);
  read_keys(fisher, fisher_keys(), out);
  fisher.finish();
}

void read_pipeline(SectionReader& top, const ConfigInput& in,
                   const std::map<size_t, std::string>& added_by, RunConfig& config) {
  const toml::node* node = top.take("pipeline");
  if (node == nullptr) return;
  if (!node->is_array()) top.fail(*node, "pipeline", "expected an array of tables ([[pipeline]])");
  size_t index = 0;
  for (const auto& element : *node->as_array()) {
    const auto found = added_by.find(index);
    config.pipeline.push_back(read_plugin(element, in.path, index, in.overridden,
                                          found != added_by.end() ? found->second : ""));
    ++index;
  }
}

// A text task's `path`: files, folders or globs, unless data.languages names the task's text.
void read_text_task(SectionReader& task, const toml::node& element, const RunConfig& config,
                    TaskOverride& entry) {
  const toml::node* path = element.as_table()->get("path");
  if (path != nullptr && !config.data.languages.empty()) {
    task.fail(*path, "path",
              "data.languages already names each task's text; remove this path or "
              "data.languages");
  }
  if (path == nullptr && config.data.languages.empty()) {
    task.fail(element, "path",
              "data.kind = \"text\" without data.languages: every task needs its text "
              "(a file, folder or glob, or an array of them)");
  }
  entry.text_paths = task.get_string_list("path");
  if (path != nullptr && entry.text_paths.empty()) task.fail(*path, "path", "is empty");
  const toml::node* tokens = element.as_table()->get("tokens");
  entry.tokens = task.get_string("tokens", "");
  if (tokens != nullptr && entry.tokens.empty()) task.fail(*tokens, "tokens", "is empty");
  if (tokens != nullptr && entry.text_paths.size() != 1) {
    task.fail(*tokens, "tokens",
              "names a dataset of token ids in one HDF5 file: give that file as the task's "
              "path (one path, no folder or glob)");
  }
}

TaskOverride read_task(const toml::node& element, const std::string& prefix, const ConfigInput& in,
                       const RunConfig& config) {
  SectionReader task(element.as_table(), prefix, in.path, in.overridden);
  TaskOverride entry;
  entry.name = task.get_string("name", "");
  if (task.take("batch_size") != nullptr)
    entry.batch_size = task.get_int("batch_size", 0, 1, 1 << 24);
  const bool text = config.data.kind == DataKind::kText;
  if (text) read_text_task(task, element, config, entry);
  for (const char* key : {"path", "group"}) {
    if (config.data.scenario != Scenario::kSources && element.as_table()->get(key) && !text) {
      task.fail(*element.as_table()->get(key), key,
                "names this task's own HDF5 datasets, which only data.scenario = "
                "\"sources\" uses");
    }
  }
  if (!text && element.as_table()->get("tokens") != nullptr) {
    task.fail(*element.as_table()->get("tokens"), "tokens",
              "names an HDF5 dataset of token ids, which only data.kind = \"text\" reads");
  }
  if (!text) entry.path = task.get_string("path", config.data.path);
  entry.group = task.get_string("group", "");
  if (config.data.scenario == Scenario::kSources && entry.group.empty()) {
    task.fail(element, "group",
              "data.scenario = \"sources\": every task needs its HDF5 group (datasets "
              "<group>/train/x, <group>/train/y, <group>/test/x, <group>/test/y)");
  }
  for (const auto& earlier : config.tasks) {
    if (!entry.name.empty() && earlier.name == entry.name) {
      task.fail(*element.as_table()->get("name"), "name",
                "\"" + entry.name +
                    "\" is already the name of an earlier task; task names "
                    "label the accuracy matrix and must differ");
    }
  }
  task.finish();
  return entry;
}

// Text tasks: one per language, or one per [[tasks]] entry.
void count_text_tasks(SectionReader& top, const ConfigInput& in, RunConfig& config) {
  if (config.data.kind != DataKind::kText) return;
  const size_t languages = config.data.languages.size();
  if (languages == 0 && config.tasks.empty()) {
    throw ConfigError(in.path +
                      ": data.kind = \"text\" needs data.languages (e.g. [\"en\", \"de\"]) or "
                      "[[tasks]] entries with a path");
  }
  if (languages > 0 && config.tasks.size() > languages) {
    top.fail(*in.root["tasks"].node(), "tasks",
             std::to_string(config.tasks.size()) + " [[tasks]] entries but data.languages names " +
                 std::to_string(languages) + " tasks");
  }
  config.data.num_tasks = static_cast<int64_t>(languages > 0 ? languages : config.tasks.size());
}

void read_tasks(SectionReader& top, const ConfigInput& in, RunConfig& config) {
  if (config.data.kind == DataKind::kText) config.data.num_tasks = INT64_MAX;  // counted below
  if (const toml::node* node = top.take("tasks")) {
    if (!node->is_array()) top.fail(*node, "tasks", "expected an array of tables ([[tasks]])");
    size_t index = 0;
    for (const auto& element : *node->as_array()) {
      const std::string prefix = "tasks[" + std::to_string(index++) + "]";
      if (!element.is_table()) top.fail(element, prefix, "expected a table");
      config.tasks.push_back(read_task(element, prefix, in, config));
    }
    if (config.data.scenario == Scenario::kSources) {
      const toml::node* num_tasks = in.root["data"]["num_tasks"].node();
      if (num_tasks != nullptr &&
          num_tasks->value_or<int64_t>(0) != static_cast<int64_t>(config.tasks.size())) {
        top.fail(*num_tasks, "data.num_tasks",
                 "data.scenario = \"sources\" has one task per [[tasks]] entry (" +
                     std::to_string(config.tasks.size()) + " here); remove data.num_tasks");
      }
      config.data.num_tasks = static_cast<int64_t>(config.tasks.size());
    }
    if (static_cast<int64_t>(config.tasks.size()) > config.data.num_tasks) {
      top.fail(*node, "tasks",
               std::to_string(config.tasks.size()) + " [[tasks]] entries but data.num_tasks is " +
                   std::to_string(config.data.num_tasks));
    }
  }
  count_text_tasks(top, in, config);
  if (config.data.scenario == Scenario::kSources && config.tasks.empty()) {
    throw ConfigError(in.path +
                      ": data.scenario = \"sources\" needs one [[tasks]] entry per task, "
                      "each with its HDF5 group");
  }
}

// Text is next-byte prediction, which only the transformer does; the transformer reads bytes.
void check_model_fits_data(const ConfigInput& in, const RunConfig& config) {
  const bool text = config.data.kind == DataKind::kText;
  if (text == (config.model.kind == ModelKind::kTransformer)) return;
  // Located at the key to change if the user gave it, else at the one that asked for the other.
  const char* key = text ? "model.kind" : "data.kind";
  if (toml::at_path(in.root, key).node() == nullptr) key = text ? "data.kind" : "model.kind";
  const toml::node* node = toml::at_path(in.root, key).node();
  const std::string where =
      node != nullptr ? location_or_override(node->source(), key, in.path, in.overridden) : in.path;
  throw ConfigError(where + ": " + key + ": " +
                    (text ? "data.kind = \"text\" (next-byte prediction) needs model.kind = "
                            "\"transformer\""
                          : "model.kind = \"transformer\" reads bytes: needs data.kind = "
                            "\"text\""));
}

toml::array int_array(const std::vector<int64_t>& values) {
  toml::array out;
  for (int64_t value : values) out.push_back(value);
  return out;
}

void write_resolved_sections(toml::table& root, const RunConfig& config) {
  write_keys(section(root, "run"), run_keys(), config.run);
  write_keys(section(root, "distributed"), distributed_keys(), config.distributed);
  const DataSection& d = config.data;
  auto& data = section(root, "data");
  write_keys(data, data_keys(), d);
  if (!d.task_classes.empty()) {
    toml::array lists;
    for (const auto& task : d.task_classes) lists.push_back(int_array(task));
    data.insert_or_assign("task_classes", lists);
  }
  data.insert_or_assign("num_tasks", d.num_tasks);
  write_keys(section(root, "model"), model_keys(), config.model);
  write_keys(section(root, "train"), train_keys(), config.train);
  write_keys(section(root, "fisher_computation"), fisher_keys(), config.fisher);
}

void write_resolved_pipeline_and_tasks(toml::table& root, const RunConfig& config) {
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
  if (config.tasks.empty()) return;
  toml::array tasks;
  for (const auto& task : config.tasks) {
    toml::table entry;
    entry.insert("name", task.name);
    if (task.batch_size) entry.insert("batch_size", *task.batch_size);
    if (config.data.scenario == Scenario::kSources && config.data.kind != DataKind::kText) {
      entry.insert("path", task.path);
      entry.insert("group", task.group);
    }
    if (!task.text_paths.empty()) {
      toml::array paths;
      for (const auto& path : task.text_paths) paths.push_back(path);
      entry.insert("path", paths);
    }
    if (!task.tokens.empty()) entry.insert("tokens", task.tokens);
    tasks.push_back(entry);
  }
  root.insert_or_assign("tasks", tasks);
}

// Records every resolved value (defaults and CLI switches included) except keys without effect
// in this configuration, so results.json and the clhost.settings/1 service see exactly what runs.
void write_resolved(toml::table& root, RunConfig& config) {
  write_resolved_sections(root, config);
  write_resolved_pipeline_and_tasks(root, config);
  for (const auto& rule : kConditionalKeys) {
    if (rule.applies(config)) continue;
    const std::string key = rule.key;
    const size_t dot = key.find('.');
    section(root, key.substr(0, dot).c_str()).erase(key.substr(dot + 1));
  }
  std::ostringstream json;
  json << toml::json_formatter{root};
  config.resolved_json = json.str();
  // "No budget" has no TOML spelling other than leaving the key out.
  if (config.run.memory_budget < 0) section(root, "run").erase("memory_budget");
  std::ostringstream toml_text;
  toml_text << "# The resolved configuration of this run (clhost " << CLHOST_VERSION
            << "), read back by clhost run --resume.\n"
            << toml::toml_formatter{root} << "\n";
  config.resolved_toml = toml_text.str();
}

toml::table parse_config_file(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    throw ConfigError(path +
                      ": is a directory; --config takes a TOML file (e.g. configs/quick.toml)");
  }
  try {
    return toml::parse_file(path);
  } catch (const toml::parse_error& parse_error) {
    std::string reason(parse_error.description());
    if (reason.find("File could not be opened") != std::string::npos) {
      throw ConfigError(path + ": cannot open the config file");
    }
    throw ConfigError(location_of(parse_error.source(), path) + ": TOML syntax error: " + reason);
  }
}

}  // namespace

RunConfig load_config(const std::string& path, const ConfigOverrides& overrides) {
  toml::table root = parse_config_file(path);
  std::map<size_t, std::string> added_by;
  const Overridden overridden = config_detail::apply_command_line(root, overrides, added_by);
  const ConfigInput in{root, path, overridden};

  RunConfig config;
  config.source = path;
  config.given_keys = given_keys(root);
  for (const auto& key : config.given_keys) {
    if (overridden.count(key) != 0) config.command_line_keys.push_back(key);
  }
  SectionReader top(&root, "", path, overridden);
  read_run(top, in, config.run);
  read_distributed(top, in, config.distributed);
  read_data(top, in, config.data);
  read_model(top, in, config.model);
  read_train(top, in, config.train);
  read_fisher(top, in, config.fisher);
  read_pipeline(top, in, added_by, config);
  read_tasks(top, in, config);
  top.finish();
  check_model_fits_data(in, config);
  check_conditional_keys(in, config);
  config.profile_memory = overrides.profile_memory;
  config.dynamic_batch_size = overrides.dynamic_batch_size;
  // Absolute, as trainer.json records them: a --resume from another directory finds them.
  for (const auto& dir : overrides.plugin_path) {
    config.cli_plugin_path.push_back(std::filesystem::absolute(dir).lexically_normal().string());
  }
  write_resolved(root, config);
  return config;
}

}  // namespace clhost
