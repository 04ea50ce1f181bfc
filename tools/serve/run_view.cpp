#include "run_view.hpp"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

#include "comparison.hpp"
#include "event_journal.hpp"
#include "files.hpp"

namespace clhost::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMaxBatchEvents = 500;  // the run page lists the latest ones

double number_or(const json& event, const char* key, double fallback) {
  const auto it = event.find(key);
  return it != event.end() && it->is_number() ? it->get<double>() : fallback;
}

int64_t integer_or(const json& event, const char* key, int64_t fallback) {
  const auto it = event.find(key);
  return it != event.end() && it->is_number() ? it->get<int64_t>() : fallback;
}

// A memory_profile_*.json under logs/memory_profile/ (the memory_profiler plug-in's).
bool has_memory_profile(const fs::path& dir) {
  std::error_code error;
  const fs::directory_iterator files(dir / "logs" / "memory_profile", error);
  return std::any_of(begin(files), end(files), [](const fs::directory_entry& item) {
    return item.path().filename().string().rfind("memory_profile_", 0) == 0 &&
           item.path().extension() == ".json";
  });
}

}  // namespace

// --- curves ------------------------------------------------------------------------------------

void CurveDownsampler::Bucket::merge(const Bucket& other) {
  loss_sum += other.loss_sum;
  penalty_sum += other.penalty_sum;
  loss_min = std::min(loss_min, other.loss_min);
  loss_max = std::max(loss_max, other.loss_max);
  last_step = std::max(last_step, other.last_step);
  count += other.count;
}

void CurveDownsampler::add(int64_t global_step, double loss, double penalty) {
  if (!std::isfinite(loss)) return;  // a diverged step ends the run; the chart keeps its scale
  const int64_t key = std::max<int64_t>(global_step - 1, 0) / width_;
  if (!buckets_.empty() && buckets_.back().key == key) {
    buckets_.back().merge(Bucket{key, global_step, loss, loss, loss, penalty, 1});
    return;
  }
  buckets_.push_back(Bucket{key, global_step, loss, loss, loss, penalty, 1});
  if (buckets_.size() > max_buckets_) halve();
}

void CurveDownsampler::halve() {
  width_ *= 2;
  std::vector<Bucket> merged;
  merged.reserve(buckets_.size() / 2 + 1);
  for (Bucket bucket : buckets_) {
    bucket.key /= 2;
    if (!merged.empty() && merged.back().key == bucket.key) {
      merged.back().merge(bucket);
    } else {
      merged.push_back(bucket);
    }
  }
  buckets_ = std::move(merged);
}

void CurveDownsampler::drop_after(int64_t global_step) {
  while (!buckets_.empty() && buckets_.back().key * width_ >= global_step) buckets_.pop_back();
}

json CurveDownsampler::to_json() const {
  json steps = json::array();
  json loss = json::array();
  json loss_min = json::array();
  json loss_max = json::array();
  json penalty = json::array();
  for (const Bucket& bucket : buckets_) {
    const auto count = static_cast<double>(bucket.count);
    steps.push_back(bucket.last_step);
    loss.push_back(bucket.loss_sum / count);
    loss_min.push_back(bucket.loss_min);
    loss_max.push_back(bucket.loss_max);
    penalty.push_back(bucket.penalty_sum / count);
  }
  return json{{"width", width_},      {"step", steps},        {"loss", loss},
              {"loss_min", loss_min}, {"loss_max", loss_max}, {"penalty", penalty}};
}

// --- processes ---------------------------------------------------------------------------------

bool process_alive(pid_t pid, int64_t start_ticks) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  // A zombie (exited, not yet reaped by its parent) has stopped running.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size() || text[close + 2] == 'Z')
    return false;
  return start_ticks == 0 || process_start_ticks(pid) == start_ticks;
}

// --- the run -----------------------------------------------------------------------------------

RunView::RunView(fs::path dir, fs::path launch, fs::path log)
    : dir_(std::move(dir)), launch_path_(std::move(launch)), log_path_(std::move(log)) {}

std::string RunView::log_tail() const {
  constexpr std::streamoff kTailBytes = 4000;
  std::ifstream in(log_path_, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  in.seekg(std::max<std::streamoff>(0, size - kTailBytes));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A progress bar redraws with carriage returns: keep what the last redraw left.
  std::string tail;
  for (const char c : text) {
    if (c == '\r') {
      const size_t line_start = tail.rfind('\n');
      tail.resize(line_start == std::string::npos ? 0 : line_start + 1);
    } else {
      tail.push_back(c);
    }
  }
  return tail;
}

int64_t RunView::advance() {
  launch_ = read_json(launch_path_);  // a resume replaces it
  std::ifstream in(dir_ / kEventJournalFile, std::ios::binary);
  if (in) {
    in.seekg(offset_);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no newline yet: the writer is mid-line; read it next time
      offset_ += static_cast<int64_t>(line.size()) + 1;
      const json event = json::parse(line, nullptr, false);
      if (event.is_object()) apply(event);
    }
  }
  read_results_if_new();
  return offset_;
}

void RunView::read_results_if_new() {
  std::error_code error;
  const fs::path path = dir_ / "results.json";
  const auto time = fs::last_write_time(path, error);
  if (error || time == results_time_) return;
  json results = read_json(path);
  if (!results.is_object()) return;  // being replaced: read it next time
  results_ = std::move(results);
  results_time_ = time;
}

void RunView::apply(const json& event) {
  const std::string kind = event.value("event", "");
  last_time_ = number_or(event, "t", last_time_);
  if (kind == "run_begin") {
    apply_run_begin(event);
  } else if (kind == "task_begin") {
    task_ = integer_or(event, "task", task_);
    if (task_ >= 0) {
      task_first_step_.resize(static_cast<size_t>(task_) + 1, 0);
      task_first_step_[static_cast<size_t>(task_)] = integer_or(event, "global_step", 0);
    }
  } else if (kind == "progress") {
    apply_progress(event);
  } else if (kind == "batch") {
    ++batch_event_count_;
    if (event.value("kind", "") == "out_of_memory") ++out_of_memory_retries_;
    batch_events_.push_back(event);
    if (batch_events_.size() > kMaxBatchEvents) batch_events_.erase(batch_events_.begin());
  } else if (kind == "evaluation") {
    const int64_t after = integer_or(event, "after_task", -1);
    const auto row = event.value("row", std::vector<double>{});
    if (after < 0) {
      baseline_ = row;
    } else {
      matrix_.resize(static_cast<size_t>(after));  // a redone task replaces its row
      matrix_.push_back(row);
    }
  } else if (kind == "task_end") {
    const int64_t task = integer_or(event, "task", -1);
    if (task >= 0 && static_cast<size_t>(task) < tasks_.size()) {
      tasks_[static_cast<size_t>(task)]["train_seconds"] = event.value("train_seconds", 0.0);
      tasks_[static_cast<size_t>(task)]["consolidate_seconds"] =
          event.value("consolidate_seconds", 0.0);
    }
  } else if (kind == "checkpoint") {
    ++checkpoints_;
    last_checkpoint_ = event;
  } else if (kind == "run_end") {
    ended_ = true;
    end_status_ = event.value("status", "");
    end_message_ = event.value("message", "");
  }
}

void RunView::apply_run_begin(const json& event) {
  pid_ = static_cast<pid_t>(integer_or(event, "pid", 0));
  pid_start_ = integer_or(event, "pid_start", 0);
  ended_ = false;
  end_status_.clear();
  end_message_.clear();
  if (started_ == 0) started_ = number_or(event, "t", 0);
  if (event.contains("tasks")) tasks_ = event["tasks"];
  metric_ = event.value("metric", metric_);
  higher_is_better_ = event.value("better", "higher") == "higher";
  plugins_ = event.value("plugins", plugins_);
  world_size_ = static_cast<int>(integer_or(event, "world_size", 1));
  if (!event.value("resumed", false)) return;
  // The resumed run redoes what came after its checkpoint: rows and steps beyond it go.
  ++resumes_;
  const int64_t global_step = integer_or(event, "global_step", 0);
  const int64_t completed_tasks = integer_or(event, "task", 0);
  curves_.drop_after(global_step);
  if (matrix_.size() > static_cast<size_t>(completed_tasks))
    matrix_.resize(static_cast<size_t>(completed_tasks));
  if (last_progress_.is_object() && integer_or(last_progress_, "global_step", 0) > global_step)
    last_progress_ = json();
}

void RunView::apply_progress(const json& event) {
  last_progress_ = event;
  curves_.add(integer_or(event, "global_step", 0), number_or(event, "loss", NAN),
              number_or(event, "penalty", 0.0));
}

bool RunView::running() const {
  return !ended_ && process_alive(pid_, pid_start_);
}

bool RunView::launch_alive() const {
  return launch_.is_object() && process_alive(static_cast<pid_t>(integer_or(launch_, "pid", 0)),
                                              integer_or(launch_, "pid_start", 0));
}

bool RunView::launch_never_began() const {
  if (!launch_.is_object() || launch_alive()) return false;
  return integer_or(launch_, "pid", 0) != pid_;  // its journal has no run_begin of that process
}

pid_t RunView::signal_target() const {
  if (running()) return pid_;
  return launch_alive() ? static_cast<pid_t>(integer_or(launch_, "pid", 0)) : 0;
}

double RunView::started() const {
  return started_ > 0 ? started_ : number_or(launch_, "time", 0.0);
}

bool RunView::comparison() const {
  return is_comparison(launch_);
}

std::string RunView::status() const {
  if (comparison()) return comparison_status(dir_, launch_alive());
  if (running()) return "running";
  // Launched, and the process has not begun its journal yet (setting up, or resuming).
  if (launch_alive()) return "starting";
  if (launch_never_began() && pid_ == 0) return "failed";
  const json status = read_json(dir_ / "status.json");
  if (status.is_object() && status.contains("status")) {
    // status.json of an earlier attempt stays until the resumed run ends.
    if (!ended_ && pid_ != 0 && status.value("status", "") != "complete") return "failed";
    return status.value("status", "failed");
  }
  if (ended_ && !end_status_.empty()) return end_status_;
  return "failed";
}

std::string RunView::status_message() const {
  if (running()) return "";
  const std::string state = status();
  if (state == "starting" || state == "running") return "";
  if (comparison()) {
    return state == "failed"
               ? "clhost compare stopped before it finished; the end of its output:\n" + log_tail()
               : "";
  }
  const json status = read_json(dir_ / "status.json");
  if (launch_never_began()) {
    return "the process stopped before the run began; the end of its output:\n" + log_tail();
  }
  if (!ended_ && pid_ != 0) {
    return "the process ended without a word (killed?); resume it from its last checkpoint";
  }
  if (status.is_object()) return status.value("error", status.value("message", ""));
  return end_message_;
}

json RunView::progress_json() const {
  int64_t total_steps = 0;
  for (const auto& task : tasks_) total_steps += task.value("steps", int64_t{0});
  json progress{{"task", task_}, {"tasks", tasks_.size()}, {"total_steps", total_steps}};
  int64_t done = 0;
  if (last_progress_.is_object()) {
    progress["step"] = last_progress_.value("step", int64_t{0});
    progress["global_step"] = last_progress_.value("global_step", int64_t{0});
    progress["loss"] = last_progress_.value("loss", json());
    progress["samples_per_second"] = last_progress_.value("samples_per_second", 0.0);
    progress["batch_size"] = last_progress_.value("batch_size", int64_t{0});
    progress["micro_batch"] = last_progress_.value("micro_batch", int64_t{0});
    done = last_progress_.value("global_step", int64_t{0});
  }
  if (matrix_.size() == tasks_.size() && !tasks_.empty()) done = total_steps;
  progress["fraction"] = total_steps > 0 ? static_cast<double>(done) / total_steps : 0.0;
  progress["updated"] = last_time_;
  return progress;
}

json RunView::results_summary() const {
  if (!results_.is_object()) return json();
  const json metrics = results_.value("metrics", json::object());
  const std::string average =
      "average_" +
      results_.value("evaluation", json::object()).value("metric", std::string("accuracy"));
  return json{{"average", metrics.value(average, json())},
              {"forgetting", metrics.value("forgetting", json())},
              {"backward_transfer", metrics.value("backward_transfer", json())},
              {"forward_transfer", metrics.value("forward_transfer", json())},
              {"peak_rss_bytes", results_.value("peak_rss_bytes", json())},
              {"wall_seconds", results_.value("wall_seconds", json())}};
}

json RunView::summary() const {
  if (comparison()) return comparison_summary(dir_, launch_, launch_alive());
  json plugins = plugins_;
  if (results_.is_object() && results_.contains("plugins")) {
    plugins = json::array();
    for (const auto& plugin : results_["plugins"]) plugins.push_back(plugin.value("id", ""));
  }
  json row{{"name", dir_.filename().string()},
           {"status", status()},
           {"started", started_},
           {"plugins", plugins},
           {"metric", metric_},
           {"better", higher_is_better_ ? "higher" : "lower"},
           {"progress", progress_json()},
           {"results", results_summary()}};
  if (!row["results"].is_null()) return row;
  // Not finished: the metrics of the rows evaluated so far, computed as results.json would.
  row["results"] = json{{"average", json()}, {"peak_rss_bytes", json()}, {"wall_seconds", json()}};
  if (!matrix_.empty()) {
    const auto& last = matrix_.back();
    double sum = 0;
    for (size_t j = 0; j < matrix_.size() && j < last.size(); ++j) sum += last[j];
    row["results"]["average_so_far"] = sum / static_cast<double>(matrix_.size());
  }
  return row;
}

json RunView::snapshot() const {
  if (comparison()) {
    json details = comparison_details(dir_, launch_, launch_alive());
    details["status_message"] = status_message();
    details["launched"] = true;
    return details;
  }
  json snapshot = summary();
  snapshot["status_message"] = status_message();
  snapshot["pid"] = running() ? json(pid_) : json();
  snapshot["world_size"] = world_size_;
  snapshot["tasks"] = tasks_;
  snapshot["baseline"] = baseline_;
  snapshot["matrix"] = matrix_;
  snapshot["task_first_step"] = task_first_step_;
  snapshot["curves"] = curves_.to_json();
  snapshot["batch_events"] = batch_events_;
  snapshot["batch_event_count"] = batch_event_count_;
  snapshot["out_of_memory_retries"] = out_of_memory_retries_;
  snapshot["checkpoints"] = checkpoints_;
  snapshot["last_checkpoint"] = last_checkpoint_;
  snapshot["resumes"] = resumes_;
  snapshot["has_results"] = results_.is_object();
  snapshot["journal"] = fs::exists(dir_ / kEventJournalFile);
  snapshot["launched"] = launch_.is_object();
  snapshot["has_memory_profile"] = has_memory_profile(dir_);
  if (launch_.is_object()) snapshot["command"] = launch_.value("command", json::array());
  if (results_.is_object() && matrix_.empty()) {
    // A run from before the journal: its matrix from results.json.
    const std::string metric =
        results_.value("evaluation", json::object()).value("metric", metric_);
    snapshot["matrix"] = results_.value(metric + "_matrix", json::array());
    snapshot["baseline"] = results_.value("random_init_" + metric, json::array());
  }
  return snapshot;
}

}  // namespace clhost::serve
