// `clhost new-plugin`: writes a buildable plug-in project from the templates in sdk/templates/,
// which are embedded in the binary at build time.
#pragma once

#include <string>
#include <vector>

namespace clhost::tools {

struct PluginTemplate {
  const char* file;  // name under sdk/templates/
  const char* text;
};
extern const std::vector<PluginTemplate> kPluginTemplates;

struct NewPluginRequest {
  std::string kind;       // regularizer | batch_policy | profiler
  std::string name;       // the plug-in id, [a-z0-9_]+
  std::string language;   // c | cxx
  std::string directory;  // created; must not exist or be empty
  std::string prefix;     // the installed clhost's prefix for CMAKE_PREFIX_PATH; empty: unknown
};

// Writes the project; returns the files written (relative to the directory). Throws
// ConfigError for a bad request (what was wrong and the allowed values) or RunError when a file
// cannot be written; on failure nothing is left behind.
std::vector<std::string> write_plugin_project(const NewPluginRequest& request);

}  // namespace clhost::tools
