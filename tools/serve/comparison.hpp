// A/B comparisons that `clhost serve` launched: `clhost compare --output RUNS/NAME`, listed
// beside the runs. Their status comes from the process and compare.json, their progress from
// the arms' finished runs (RUNS/NAME/a/seed_K, b/seed_K), their details from compare.json and
// the arms' matrices.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace clhost::serve {

// The launch record is a comparison's.
bool is_comparison(const nlohmann::json& launch);

// "running" while `alive`, "complete" once compare.json exists, else "failed".
std::string comparison_status(const std::filesystem::path& dir, bool alive);

// The runs list's row: kind "compare", status, progress (finished runs of 2 x seeds), and
// the average-metric verdict when done.
nlohmann::json comparison_summary(const std::filesystem::path& dir, const nlohmann::json& launch,
                                  bool alive);

// The comparison page: the row plus compare.json ("statistics"), each arm's mean matrix over
// its seeds and their difference B - A.
nlohmann::json comparison_details(const std::filesystem::path& dir, const nlohmann::json& launch,
                                  bool alive);

}  // namespace clhost::serve
