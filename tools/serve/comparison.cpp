#include "comparison.hpp"

#include "files.hpp"

#include <fstream>
#include <sstream>

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The element-wise mean of the arm's runs' evaluation matrices (runs not finished are left out).
json mean_matrix(const json& run_dirs, std::string& metric) {
  std::vector<std::vector<double>> sum;
  size_t count = 0;
  for (const auto& dir : run_dirs) {
    const json results = read_json(fs::path(dir.get<std::string>()) / "results.json");
    if (!results.is_object()) continue;
    metric = results.value("evaluation", json::object()).value("metric", std::string("accuracy"));
    const auto matrix = results.value(metric + "_matrix", std::vector<std::vector<double>>{});
    if (sum.empty()) sum.assign(matrix.size(), {});
    for (size_t i = 0; i < matrix.size() && i < sum.size(); ++i) {
      sum[i].resize(matrix[i].size(), 0.0);
      for (size_t j = 0; j < matrix[i].size(); ++j) sum[i][j] += matrix[i][j];
    }
    ++count;
  }
  for (auto& row : sum) {
    for (double& value : row) value /= static_cast<double>(count);
  }
  return sum;
}

int64_t finished_runs(const fs::path& dir) {
  int64_t finished = 0;
  for (const char* arm : {"a", "b"}) {
    std::error_code error;
    for (const auto& item : fs::directory_iterator(dir / arm, error)) {
      if (fs::exists(item.path() / "results.json")) ++finished;
    }
  }
  return finished;
}

}  // namespace

bool is_comparison(const json& launch) {
  return launch.is_object() && launch.value("kind", "") == "compare";
}

std::string comparison_status(const fs::path& dir, bool alive) {
  if (alive) return "running";
  return fs::exists(dir / "compare.json") ? "complete" : "failed";
}

json comparison_summary(const fs::path& dir, const json& launch, bool alive) {
  const int64_t total = 2 * launch.value("seeds", int64_t{1});
  const int64_t finished = finished_runs(dir);
  json row{
      {"name", dir.filename().string()},
      {"kind", "compare"},
      {"status", comparison_status(dir, alive)},
      {"started", launch.value("time", 0.0)},
      {"plugins", json::array()},
      {"arms", launch.value("arms", json::array())},
      {"progress", json{{"finished_runs", finished},
                        {"runs", total},
                        {"fraction", total > 0 ? static_cast<double>(finished) / total : 0.0}}},
      {"results", json::object()}};
  const json comparison = read_json(dir / "compare.json");
  if (comparison.is_object()) {
    const json metrics = comparison.value("metrics", json::object());
    for (const auto& [key, metric] : metrics.items()) {
      if (key.rfind("average_", 0) == 0) row["results"]["verdict"] = metric.value("verdict", "");
    }
  }
  return row;
}

json comparison_details(const fs::path& dir, const json& launch, bool alive) {
  json details = comparison_summary(dir, launch, alive);
  const json comparison = read_json(dir / "compare.json");
  details["statistics"] = comparison;
  details["command"] = launch.value("command", json::array());
  if (!comparison.is_object()) return details;
  std::string metric = "accuracy";
  const json& arms = comparison.at("arms");
  const json a = mean_matrix(arms.at(0).at("runs"), metric);
  const json b = mean_matrix(arms.at(1).at("runs"), metric);
  details["metric"] = metric;
  details["a_matrix"] = a;
  details["b_matrix"] = b;
  details["difference_b_minus_a"] = matrix_difference(a, b);
  return details;
}

}  // namespace clhost::serve
