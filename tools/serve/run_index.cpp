#include "run_index.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <thread>

#include "event_journal.hpp"

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kServeDir = ".serve";
constexpr size_t kMaxReaders = 4;  // threads reading run directories for one listing

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

bool matches(const json& row, const RunFilter& filter) {
  if (!filter.text.empty() &&
      lower(row.value("name", "")).find(lower(filter.text)) == std::string::npos) {
    return false;
  }
  if (!filter.status.empty() && row.value("status", "") != filter.status) return false;
  if (!filter.plugin.empty()) {
    const auto& plugins = row["plugins"];
    if (std::find(plugins.begin(), plugins.end(), filter.plugin) == plugins.end()) return false;
  }
  return true;
}

// When a run began, for ordering: its journal's first event, else its newest status file.
double start_time(const RunView& view) {
  if (view.started() > 0) return view.started();
  for (const char* file : {"results.json", "status.json", "config.toml"}) {
    struct stat info {};
    if (::stat((view.dir() / file).c_str(), &info) == 0) {
      return static_cast<double>(info.st_mtim.tv_sec) +
             1e-9 * static_cast<double>(info.st_mtim.tv_nsec);
    }
  }
  return 0;
}

}  // namespace

bool is_run_directory(const fs::path& dir) {
  std::error_code error;
  return fs::exists(dir / kEventJournalFile, error) || fs::exists(dir / "status.json", error) ||
         fs::exists(dir / "results.json", error);
}

fs::path launch_record(const fs::path& runs_dir, const std::string& name) {
  return runs_dir / kServeDir / (name + ".json");
}

fs::path launch_log(const fs::path& runs_dir, const std::string& name) {
  return runs_dir / kServeDir / (name + ".log");
}

std::shared_ptr<RunIndex::Entry> RunIndex::entry(const std::string& name) {
  const std::lock_guard lock(mutex_);
  auto& slot = entries_[name];
  if (!slot) {
    slot = std::make_shared<Entry>();
    slot->view = std::make_shared<RunView>(runs_dir_ / name, launch_record(runs_dir_, name),
                                           launch_log(runs_dir_, name));
  }
  return slot;
}

bool RunIndex::with_view(const std::string& name, const std::function<void(RunView&)>& use) {
  std::error_code error;
  if (!is_run_directory(runs_dir_ / name) && !fs::exists(launch_record(runs_dir_, name), error))
    return false;
  const auto found = entry(name);
  const std::lock_guard lock(found->mutex);
  found->view->advance();
  use(*found->view);
  return true;
}

json RunIndex::list(const RunFilter& filter) {
  std::set<std::string> names;
  std::error_code error;
  for (const auto& item : fs::directory_iterator(runs_dir_, error)) {
    const std::string name = item.path().filename().string();
    if (name.empty() || name[0] == '.' || !item.is_directory(error)) continue;
    if (is_run_directory(item.path())) names.insert(name);
  }
  for (const auto& item : fs::directory_iterator(runs_dir_ / kServeDir, error)) {
    if (item.path().extension() == ".json") names.insert(item.path().stem().string());
  }
  // The first listing reads every run (journal, results.json): on every core, each thread its
  // share of the names; later listings read only what changed.
  const std::vector<std::string> ordered(names.begin(), names.end());
  const size_t workers =
      std::clamp<size_t>(std::thread::hardware_concurrency(), 1, std::max<size_t>(1, kMaxReaders));
  std::vector<std::vector<std::pair<double, json>>> shares(workers);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (size_t i = w; i < ordered.size(); i += workers) {
        with_view(ordered[i], [&](RunView& view) {
          json row = view.summary();
          if (matches(row, filter)) shares[w].emplace_back(start_time(view), std::move(row));
        });
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::pair<double, json>> rows;
  rows.reserve(names.size());
  for (auto& share : shares) {
    for (auto& row : share) rows.push_back(std::move(row));
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first
                              : a.second["name"].template get<std::string>() <
                                    b.second["name"].template get<std::string>();
  });
  json page = json::array();
  for (size_t i = filter.offset; i < rows.size() && page.size() < filter.limit; ++i) {
    rows[i].second["started"] = rows[i].first;
    page.push_back(std::move(rows[i].second));
  }
  return json{{"total", rows.size()}, {"offset", filter.offset}, {"runs", page}};
}

}  // namespace clhost::serve
