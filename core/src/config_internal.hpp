// Shared by the config reader (config.cpp) and the command-line overrides
// (config_overrides.cpp). Internal to the core.
#pragma once

#include <toml++/toml.h>

#include <map>
#include <string>
#include <vector>

#include "clhost/config.hpp"

namespace clhost::config_detail {

// Keys set on the command line, by canonical path ("pipeline.0.lambda") -> where the user set
// them ("--set ewc.lambda", "--memory-budget").
using Overridden = std::map<std::string, std::string>;

// "file:line:column" of a TOML node, or `fallback` when it has no place in a file.
std::string location_of(const toml::source_region& region, const std::string& fallback);
// A value given on the command line has no line in the file: name the option instead.
std::string location_or_override(const toml::source_region& region, const std::string& key_path,
                                 const std::string& file, const Overridden& overridden);
std::string join(const std::vector<std::string>& items, const char* separator);
// The table `name` of `root`, created empty when absent (it must not hold another type).
toml::table& section(toml::table& root, const char* name);

// The first control character (U+0000..U+001F, U+007F) of a key as "0x0a", or empty: TOML's
// writer cannot give such a key back as it was read (a run's config.toml would not read back),
// so keys with one are refused.
std::string control_character(const std::string& key);

// Applies the command line to the parsed file, in this order: --plugins and the switches that
// add a plug-in shape [[pipeline]] (`added_by` gets the switch that added each new entry), then
// every --set (ID.KEY names a plug-in's entry), then the switches that set a key. Returns where
// each overridden key came from. Throws ConfigError naming the option.
Overridden apply_command_line(toml::table& root, const ConfigOverrides& overrides,
                              std::map<size_t, std::string>& added_by);

}  // namespace clhost::config_detail
