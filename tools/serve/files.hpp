// Small helpers the server's parts share: whole files read as text or JSON, and the
// element-wise difference of two evaluation matrices.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

namespace clhost::serve {

// The file's bytes; empty when it cannot be read.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The file as JSON; null when it is missing or not JSON (e.g. being replaced).
inline nlohmann::json read_json(const std::filesystem::path& path) {
  nlohmann::json parsed = nlohmann::json::parse(read_text(path), nullptr, false);
  return parsed.is_discarded() ? nlohmann::json() : parsed;
}

// b - a over the rows and columns both have.
inline nlohmann::json matrix_difference(const nlohmann::json& a, const nlohmann::json& b) {
  nlohmann::json difference = nlohmann::json::array();
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    nlohmann::json row = nlohmann::json::array();
    for (size_t j = 0; j < std::min(a[i].size(), b[i].size()); ++j)
      row.push_back(b[i][j].get<double>() - a[i][j].get<double>());
    difference.push_back(row);
  }
  return difference;
}

}  // namespace clhost::serve
