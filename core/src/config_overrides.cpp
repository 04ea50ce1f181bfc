// The command line on top of a config file: --plugins, --set and the switches.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <sstream>

#include "clhost/errors.hpp"
#include "config_internal.hpp"

namespace clhost::config_detail {

std::string location_of(const toml::source_region& region, const std::string& fallback) {
  if (region.begin.line == 0) {
    return fallback;
  }
  std::ostringstream out;
  out << (region.path ? *region.path : fallback) << ':' << region.begin.line << ':'
      << region.begin.column;
  return out.str();
}

std::string location_or_override(const toml::source_region& region, const std::string& key_path,
                                 const std::string& file, const Overridden& overridden) {
  const auto found = overridden.find(key_path);
  if (found != overridden.end()) return found->second;
  return location_of(region, file);
}

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

toml::table& section(toml::table& root, const char* name) {
  if (!root.contains(name)) root.insert(name, toml::table{});
  return *root.get_as<toml::table>(name);
}

namespace {

// The top-level tables of a config file; any other first segment of a --set key names a plug-in.
const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = {
      "run", "distributed", "data", "model", "train", "fisher_computation", "pipeline", "tasks"};
  return names;
}

bool is_index(const std::string& segment) {
  return !segment.empty() && segment.find_first_not_of("0123456789") == std::string::npos;
}

// `--set ewc.lambda=…` means the pipeline entry whose plugin is "ewc": returns its index.
size_t pipeline_index_of(const toml::table& root, const std::string& id,
                         const std::string& source) {
  const toml::array* pipeline = root["pipeline"].as_array();
  std::vector<size_t> matches;
  std::vector<std::string> ids;
  for (size_t i = 0; pipeline != nullptr && i < pipeline->size(); ++i) {
    const toml::node* plugin =
        (*pipeline)[i].as_table() ? (*pipeline)[i].as_table()->get("plugin") : nullptr;
    if (plugin == nullptr || !plugin->is_string()) continue;
    ids.push_back(plugin->as_string()->get());
    if (ids.back() == id) matches.push_back(i);
  }
  if (matches.size() == 1) return matches.front();
  if (matches.size() > 1) {
    throw ConfigError(source + ": plug-in '" + id + "' appears " + std::to_string(matches.size()) +
                      " times in the pipeline; name the entry by its index, pipeline.N.KEY");
  }
  throw ConfigError(source + ": '" + id + "' is neither a config section (" +
                    join(section_names(), ", ") + ") nor a plug-in of the pipeline (" +
                    (ids.empty() ? std::string("none") : join(ids, ", ")) + ")");
}

// Splits "a.b.c" and turns a leading plug-in id into "pipeline.N".
std::vector<std::string> override_segments(const toml::table& root, const std::string& key_path,
                                           const std::string& source) {
  std::vector<std::string> segments;
  std::stringstream stream(key_path);
  for (std::string segment; std::getline(stream, segment, '.');) {
    if (segment.empty()) throw ConfigError(source + ": empty segment in key path");
    segments.push_back(segment);
  }
  if (key_path.back() == '.') throw ConfigError(source + ": empty segment in key path");
  const auto& sections = section_names();
  if (segments.size() >= 2 &&
      std::find(sections.begin(), sections.end(), segments[0]) == sections.end()) {
    const size_t index = pipeline_index_of(root, segments[0], source);
    segments[0] = std::to_string(index);
    segments.insert(segments.begin(), "pipeline");
  }
  return segments;
}

// One step down a --set key path from `current` into `segment` (`next` is the segment after
// it); tables missing on the way are created, arrays are indexed.
toml::node* descend(toml::node* current, const std::string& segment, const std::string& next,
                    const std::string& walked, const std::string& source) {
  if (auto* table = current->as_table()) {
    if (table->get(segment) == nullptr) {
      if (is_index(next)) {
        throw ConfigError(source + ": there is no array '" + walked + "' to index (add the " +
                          "[[" + segment + "]] entry to the config file first)");
      }
      table->insert(segment, toml::table{});
    }
    return table->get(segment);
  }
  if (auto* array = current->as_array()) {
    if (!is_index(segment)) {
      throw ConfigError(source + ": '" + segment + "' is not an array index (0, 1, ...)");
    }
    // An index too large for size_t is past the end of any array as well.
    size_t index = 0;
    const auto [end, error] =
        std::from_chars(segment.data(), segment.data() + segment.size(), index);
    if (error != std::errc() || index >= array->size()) {
      throw ConfigError(source + ": index " + segment + " is past the end (the array has " +
                        std::to_string(array->size()) + " entr" +
                        (array->size() == 1 ? "y" : "ies") + ")");
    }
    return array->get(index);
  }
  throw ConfigError(source + ": '" + walked.substr(0, walked.rfind('.')) +
                    "' is a value, not a table");
}

// The table that holds the last segment of the path.
toml::table& parent_table(toml::table& root, const std::vector<std::string>& segments,
                          const std::string& source) {
  toml::node* current = &root;
  std::string walked;
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    walked += (walked.empty() ? "" : ".") + segments[i];
    current = descend(current, segments[i], segments[i + 1], walked, source);
  }
  if (auto* table = current->as_table()) return *table;
  if (current->is_array()) {
    throw ConfigError(source + ": " + walked +
                      " is an array of values: set it whole, e.g. --set '" + walked + "=[...]'");
  }
  throw ConfigError(source + ": " + walked + " is a value, not a table");
}

// Bytes in the UTF-8 sequence a lead byte starts; 0 for a byte that cannot start one.
size_t utf8_length(unsigned char lead) {
  if (lead < 0x80U) return 1;
  if ((lead >> 5U) == 0x6U) return 2;
  if ((lead >> 4U) == 0xEU) return 3;
  if ((lead >> 3U) == 0x1EU) return 4;
  return 0;
}

// The code point of the `length`-byte sequence at `bytes`; -1 when a continuation byte is not one.
int64_t utf8_code(const unsigned char* bytes, size_t length) {
  uint32_t code = length == 1 ? bytes[0] : bytes[0] & (0x7FU >> length);
  for (size_t k = 1; k < length; ++k) {
    if ((bytes[k] >> 6U) != 0x2U) return -1;
    code = (code << 6U) | (bytes[k] & 0x3FU);
  }
  return code;
}

// Whether `text` is UTF-8 (shortest forms, no surrogates), as TOML requires of every string.
bool valid_utf8(const std::string& text) {
  constexpr int64_t kShortest[] = {0, 0, 0x80, 0x800, 0x10000};  // by sequence length
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    const size_t length = utf8_length(bytes[i]);
    if (length == 0 || i + length > text.size()) return false;
    const int64_t code = utf8_code(bytes + i, length);
    if (code < kShortest[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

// The value of a --set: TOML ("5", "1e-3", "true", "[1,2]", "\"x\""), or else a bare string,
// so --set run.name=demo works.
toml::table parse_value(const std::string& text, const std::string& source) {
  try {
    return toml::parse("value = " + text, source);
  } catch (const toml::parse_error&) {
    // Written into the run's config.toml, it must read back as given.
    if (!valid_utf8(text)) throw ConfigError(source + ": the value is neither TOML nor UTF-8 text");
    toml::table parsed = toml::parse("value = \"\"", source);
    parsed.insert_or_assign("value", text);
    return parsed;
  }
}

// Applies "a.b.c=value". Returns the canonical key path ("ewc.lambda" becomes
// "pipeline.0.lambda").
std::string apply_override(toml::table& root, const std::string& assignment) {
  const auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw ConfigError("--set " + assignment + ": expected key.path=value");
  }
  const std::string key_path = assignment.substr(0, equals);
  const std::string source = "--set " + key_path;
  if (!valid_utf8(key_path)) throw ConfigError(source + ": the key is not UTF-8 text");
  if (const std::string control = control_character(key_path); !control.empty()) {
    throw ConfigError(source + ": the key holds a control character (" + control +
                      "); keys are plain text");
  }
  const toml::table parsed = parse_value(assignment.substr(equals + 1), source);
  const std::vector<std::string> segments = override_segments(root, key_path, source);
  parent_table(root, segments, source).insert_or_assign(segments.back(), *parsed.get("value"));
  return join(segments, ".");
}

std::string plugin_id_of(const toml::node& entry) {
  const toml::table* table = entry.as_table();
  const toml::node* plugin = table != nullptr ? table->get("plugin") : nullptr;
  return plugin != nullptr && plugin->is_string() ? plugin->as_string()->get() : "";
}

// The file's pipeline in --plugins order: a listed id takes its first unused entry in the file
// (with its settings), or a new one.
toml::array in_plugins_order(toml::array& file, const std::vector<std::string>& ids,
                             std::map<size_t, std::string>& added_by) {
  toml::array chosen;
  std::vector<bool> used(file.size(), false);
  for (const auto& id : ids) {
    size_t i = 0;
    while (i < file.size() && (used[i] || plugin_id_of(file[i]) != id)) ++i;
    if (i < file.size()) {
      used[i] = true;
      chosen.push_back(std::move(*file[i].as_table()));
    } else {
      added_by[chosen.size()] = "--plugins";
      chosen.push_back(toml::table{{"plugin", id}});
    }
  }
  return chosen;
}

// --plugins and the switches that add a plug-in shape [[pipeline]] before any --set is applied,
// so that --set pipeline.N.* counts in the order the run uses. Returns, per new entry, the
// switch that added it.
std::map<size_t, std::string> choose_pipeline(toml::table& root, const ConfigOverrides& overrides) {
  std::map<size_t, std::string> added_by;
  if (root.contains("pipeline") && !root["pipeline"].is_array()) return added_by;  // reported later
  toml::array pipeline;
  if (toml::array* file = root["pipeline"].as_array()) pipeline = std::move(*file);
  if (overrides.plugins) pipeline = in_plugins_order(pipeline, *overrides.plugins, added_by);
  auto has = [&](const std::string& id) {
    return std::any_of(pipeline.begin(), pipeline.end(),
                       [&](const toml::node& entry) { return plugin_id_of(entry) == id; });
  };
  auto require = [&](const std::string& id, const char* option) {
    if (has(id)) return;
    added_by[pipeline.size()] = option;
    pipeline.push_back(toml::table{{"plugin", id}});
  };
  if (overrides.profile_memory) require("memory_profiler", "--profile-memory");
  if (overrides.dynamic_batch_size) require("dynamic", "--dynamic-batch-size");
  if (overrides.use_memory_efficient && !has("lowrank_fisher")) {
    require("ewc", "--use-memory-efficient");
  }
  root.insert_or_assign("pipeline", std::move(pipeline));
  return added_by;
}

// The switches that set a key (--use-memory-efficient, --memory-budget) become TOML values
// before the sections are read, so the reader knows nothing of the command line and an error
// names the switch.
void apply_switches(toml::table& root, const ConfigOverrides& overrides, Overridden& overridden) {
  // A section that is not a table is reported by its reader; the switch then waits for it.
  auto set = [&](const char* table, const char* key, auto value, const char* option) {
    if (root.contains(table) && !root[table].is_table()) return;
    section(root, table).insert_or_assign(key, value);
    overridden[std::string(table) + "." + key] = option;
  };
  if (overrides.use_memory_efficient) {
    set("fisher_computation", "use_memory_efficient", true, "--use-memory-efficient");
  }
  if (!overrides.memory_budget.empty()) {
    set("run", "memory_budget", overrides.memory_budget, "--memory-budget");
  }
}

}  // namespace

std::string control_character(const std::string& key) {
  for (const char c : key) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      char text[8];
      std::snprintf(text, sizeof(text), "0x%02x", byte);
      return text;
    }
  }
  return "";
}

Overridden apply_command_line(toml::table& root, const ConfigOverrides& overrides,
                              std::map<size_t, std::string>& added_by) {
  added_by = choose_pipeline(root, overrides);
  Overridden overridden;
  for (const auto& assignment : overrides.set) {
    overridden[apply_override(root, assignment)] =
        "--set " + assignment.substr(0, assignment.find('='));
  }
  apply_switches(root, overrides, overridden);
  return overridden;
}

}  // namespace clhost::config_detail
