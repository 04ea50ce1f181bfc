// One run directory as the web UI shows it. Its journal (events.jsonl, docs/outputs.md) is read
// incrementally into the run's state — tasks, progress, the evaluation matrix so far, curves
// downsampled to a bounded size, batch events — and status.json / results.json say how it
// ended. Runs from before the journal existed show what results.json holds.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace clhost::serve {

// Loss and penalty over global steps in at most `max_buckets` buckets of equal width (a power
// of two of steps). When they are full, neighbours merge and the width doubles, so a run with a
// million logged steps keeps a chart of at most `max_buckets` points with each bucket's mean,
// minimum and maximum: spikes stay visible.
class CurveDownsampler {
 public:
  explicit CurveDownsampler(size_t max_buckets = 1000) : max_buckets_(max_buckets) {}
  void add(int64_t global_step, double loss, double penalty);
  // A resume redoes the steps after its checkpoint: buckets that begin after `global_step` go
  // (a bucket straddling it keeps the steps it had).
  void drop_after(int64_t global_step);
  // {"width", "step", "loss", "loss_min", "loss_max", "penalty"}: columns of equal length.
  [[nodiscard]] nlohmann::json to_json() const;

 private:
  struct Bucket {
    int64_t key = 0;  // first step / width
    int64_t last_step = 0;
    double loss_sum = 0, loss_min = 0, loss_max = 0, penalty_sum = 0;
    int64_t count = 0;
    void merge(const Bucket& other);
  };
  void halve();
  size_t max_buckets_;
  int64_t width_ = 1;
  std::vector<Bucket> buckets_;
};

// Whether process `pid` is still the process that recorded `start_ticks` (pids are reused).
bool process_alive(pid_t pid, int64_t start_ticks);

class RunView {
 public:
  // `launch`: the launch record of a run started by `clhost serve` (run_index.hpp), which
  // stands for the run until its directory exists.
  RunView(std::filesystem::path dir, std::filesystem::path launch, std::filesystem::path log);

  // Reads the lines appended to the journal since the last call (complete lines only) and
  // applies them. Returns the number of bytes of the journal consumed so far.
  int64_t advance();
  // Applies one journal event (also what a live stream forwards).
  void apply(const nlohmann::json& event);

  // "starting" (launched, no journal yet), "running", "complete", "failed" or "interrupted",
  // from the process (alive: running) and status.json; a journal whose process is gone without
  // a word is "failed".
  [[nodiscard]] std::string status() const;
  [[nodiscard]] std::string status_message() const;
  // The run page's state (docs/web-ui.md → API).
  [[nodiscard]] nlohmann::json snapshot() const;
  // The runs list's row.
  [[nodiscard]] nlohmann::json summary() const;
  // The process of the latest (re)start, 0 when unknown; and whether it is alive.
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running() const;
  // The process a stop signals: the running run, or a launch still starting (0: none).
  [[nodiscard]] pid_t signal_target() const;
  // Seconds since the Unix epoch when the run began (0 when unknown).
  [[nodiscard]] double started() const;
  // A comparison (`clhost compare`) launched here rather than a run (comparison.hpp).
  [[nodiscard]] bool comparison() const;
  // The launch record (empty when the run was not started by clhost serve).
  [[nodiscard]] const nlohmann::json& launch() const { return launch_; }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

 private:
  void apply_run_begin(const nlohmann::json& event);
  void apply_progress(const nlohmann::json& event);
  [[nodiscard]] nlohmann::json progress_json() const;
  [[nodiscard]] nlohmann::json results_summary() const;
  void read_results_if_new();

  [[nodiscard]] std::string log_tail() const;
  [[nodiscard]] bool launch_alive() const;
  // The latest launch ended without its process writing a run_begin to the journal.
  [[nodiscard]] bool launch_never_began() const;

  std::filesystem::path dir_, launch_path_, log_path_;
  nlohmann::json launch_;  // the launch record, when there is one
  int64_t offset_ = 0;
  pid_t pid_ = 0;
  int64_t pid_start_ = 0;
  double started_ = 0, last_time_ = 0;
  bool ended_ = false;  // the latest (re)start wrote run_end
  std::string end_status_, end_message_;
  nlohmann::json tasks_ = nlohmann::json::array();  // {name, steps, batch_size, ...}
  std::string metric_ = "accuracy";
  bool higher_is_better_ = true;
  std::vector<std::string> plugins_;
  int world_size_ = 1;
  std::vector<double> baseline_;
  std::vector<std::vector<double>> matrix_;
  nlohmann::json last_progress_;
  int64_t task_ = -1;
  std::vector<int64_t> task_first_step_;  // global step before each task's first step
  CurveDownsampler curves_;
  nlohmann::json batch_events_ = nlohmann::json::array();  // the latest kMaxBatchEvents
  int64_t batch_event_count_ = 0, out_of_memory_retries_ = 0, checkpoints_ = 0, resumes_ = 0;
  nlohmann::json last_checkpoint_;
  // results.json, read once it exists (and again when it changes).
  nlohmann::json results_;
  std::filesystem::file_time_type results_time_{};
};

}  // namespace clhost::serve
