#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>

#include "clhost/errors.hpp"
#include "plugin_templates.hpp"

namespace clhost::tools {
namespace {

namespace fs = std::filesystem;

std::string template_text(const std::string& file) {
  for (const auto& entry : kPluginTemplates) {
    if (file == entry.file) return entry.text;
  }
  throw RunError("template '" + file + "' is missing from this clhost build");
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// my_reg -> MyReg, for the C++ class name.
std::string camel_case(const std::string& id) {
  std::string out;
  bool upper = true;
  for (char c : id) {
    if (c == '_') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  if (out.empty() || std::isdigit(static_cast<unsigned char>(out[0])) != 0) out = "Plugin" + out;
  return out;
}

}  // namespace

std::vector<std::string> write_plugin_project(const NewPluginRequest& request) {
  if (request.kind != "regularizer" && request.kind != "batch_policy" &&
      request.kind != "profiler") {
    throw ConfigError("--kind: '" + request.kind +
                      "' is not a plug-in kind (regularizer, batch_policy or profiler)");
  }
  if (!std::regex_match(request.name, std::regex("[a-z0-9_]+"))) {
    throw ConfigError("--name: '" + request.name +
                      "' is not a plug-in id (lower-case letters, digits and '_'; it becomes "
                      "the file name clhost_" +
                      request.name + ".so)");
  }
  if (request.language != "c" && request.language != "cxx") {
    throw ConfigError("--lang: '" + request.language + "' is not c or cxx");
  }
  const fs::path directory(request.directory.empty() ? request.name : request.directory);
  std::error_code error;
  if (fs::exists(directory) && !fs::is_empty(directory, error)) {
    throw ConfigError(directory.string() + ": exists and is not empty; choose another --dir");
  }
  const std::string extension = request.language == "c" ? ".c" : ".cpp";
  const std::string source = request.name + extension;
  auto fill = [&](const std::string& text) {
    std::string out = replace_all(text, "@ID@", request.name);
    out = replace_all(out, "@KIND@", request.kind);
    out = replace_all(out, "@SOURCE@", source);
    out = replace_all(out, "@LANGUAGE@", request.language == "c" ? "C11" : "C++17");
    out = replace_all(out, "@PROJECT_LANGUAGE@", request.language == "c" ? "C" : "CXX");
    out = replace_all(out, "@PREFIX@",
                      request.prefix.empty() ? "<where clhost is installed>" : request.prefix);
    out = replace_all(out, "MyPlugin", camel_case(request.name));
    return replace_all(out, "my_plugin", request.name);
  };
  const std::vector<std::pair<std::string, std::string>> files{
      {"CMakeLists.txt", fill(template_text("CMakeLists.txt.in"))},
      {source, fill(template_text(request.kind + extension))},
      {"test_run.toml", fill(template_text("test_run.toml"))},
      {"README.md", fill(template_text("README.md"))},
  };
  const bool created = !fs::exists(directory);
  try {
    fs::create_directories(directory);
    for (const auto& [name, content] : files) {
      std::ofstream out(directory / name);
      out << content;
      out.close();
      if (!out) throw RunError((directory / name).string() + ": write failed");
    }
  } catch (const std::exception& e) {
    if (created) fs::remove_all(directory, error);
    throw RunError(std::string("new-plugin: ") + e.what());
  }
  std::vector<std::string> written;
  written.reserve(files.size());
  for (const auto& [name, content] : files) written.push_back((directory / name).string());
  return written;
}

}  // namespace clhost::tools
