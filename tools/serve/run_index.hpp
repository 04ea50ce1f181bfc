// The runs under the runs directory, for the runs list: each top-level directory that is a run
// (it has a journal, status.json or results.json), or a launch whose run has not started yet.
// Views are cached and brought up to date incrementally, so listing 1,000 runs reads only what
// changed since the last listing.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "run_view.hpp"

namespace clhost::serve {

struct RunFilter {
  std::string text;    // part of the name (case-insensitive)
  std::string plugin;  // a plug-in id in the pipeline
  std::string status;  // running | complete | failed | interrupted
  size_t offset = 0;
  size_t limit = 50;
};

class RunIndex {
 public:
  explicit RunIndex(std::filesystem::path runs_dir) : runs_dir_(std::move(runs_dir)) {}

  // {"total", "offset", "runs": [summary...]}: newest first, filtered, one page.
  nlohmann::json list(const RunFilter& filter);
  // Brings run `name`'s view up to date and calls `use` with it, under the view's lock; false
  // when there is no such run. `name` must already be a checked run name (paths.hpp).
  bool with_view(const std::string& name, const std::function<void(RunView&)>& use);

  [[nodiscard]] const std::filesystem::path& runs_dir() const { return runs_dir_; }

 private:
  struct Entry {
    std::shared_ptr<RunView> view;
    std::mutex mutex;  // held while the view advances or is read
  };
  std::shared_ptr<Entry> entry(const std::string& name);

  std::filesystem::path runs_dir_;
  std::mutex mutex_;  // guards entries_
  std::map<std::string, std::shared_ptr<Entry>> entries_;
};

// True when `dir` holds a run (journal, status.json or results.json).
bool is_run_directory(const std::filesystem::path& dir);

// Where `clhost serve` keeps what it launched: RUNS/.serve/<name>.json (the process) and
// RUNS/.serve/<name>.log (its console output).
std::filesystem::path launch_record(const std::filesystem::path& runs_dir, const std::string& name);
std::filesystem::path launch_log(const std::filesystem::path& runs_dir, const std::string& name);

}  // namespace clhost::serve
