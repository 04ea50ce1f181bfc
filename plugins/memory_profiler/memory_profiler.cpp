// memory_profiler: samples process and LibTorch memory in its own thread, records the host's
// events (and plug-ins' named events) on the same clock, and writes the profile at the end of
// the run: JSON, PNG and SVG timelines, a peak/phase summary on the console and in results.json.
//
// It needs no LibTorch: the host's clhost.memory/1 service reports RSS (/proc/self/status), the
// LibTorch allocator's bytes and, on CUDA builds, the caching allocator's.
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <clhost/plugin.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "plot.hpp"
#include "timeline.hpp"

namespace {

namespace fs = std::filesystem;
using clhost::memory_profiler::EventRecord;
using clhost::memory_profiler::Sample;
using clhost::memory_profiler::Timeline;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const clhost_config_key_t kSchema[] = {
    {"interval_ms", CLHOST_CONFIG_TYPE_FLOAT, "50.0", "time between two samples, in milliseconds",
     1, 1.0, 60000.0, nullptr},
    {"output_dir", CLHOST_CONFIG_TYPE_STRING, "\"logs/memory_profile\"",
     "where the profile files go; relative paths are inside the run directory", 0, 0, 0, nullptr},
    {"png", CLHOST_CONFIG_TYPE_BOOL, "true", "write the timeline as PNG", 0, 0, 0, nullptr},
    {"svg", CLHOST_CONFIG_TYPE_BOOL, "true", "write the timeline as SVG (for reports)", 0, 0, 0,
     nullptr},
    {"width_px", CLHOST_CONFIG_TYPE_INT, "1280", "picture width, in pixels", 1, 320, 8000, nullptr},
    {"height_px", CLHOST_CONFIG_TYPE_INT, "720", "picture height, in pixels", 1, 240, 8000,
     nullptr},
    {"max_samples", CLHOST_CONFIG_TYPE_INT, "200000",
     "samples kept; past it, neighbours merge (peaks kept, resolution halves)", 1, 100, 100000000,
     nullptr},
    {"summary", CLHOST_CONFIG_TYPE_BOOL, "true",
     "print the peak/phase summary on the console at the end of the run", 0, 0, 0, nullptr},
};

const clhost_plugin_descriptor_t kDescriptor{
    sizeof(clhost_plugin_descriptor_t),
    "memory_profiler",
    CLHOST_PLUGIN_KIND_PROFILER,
    "1.0.0",
    "memory timeline: RSS and LibTorch bytes sampled in a thread, events, JSON + PNG/SVG, peaks",
    "clhost",
    kSchema,
    sizeof(kSchema) / sizeof(kSchema[0])};

std::string format_mib(int64_t bytes) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.1f MiB", static_cast<double>(bytes) / 1048576.0);
  return buffer;
}

double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

// "memory_profile_YYYYMMDD_HHMMSS" in local time, as the seed names it.
std::string profile_stem(std::time_t when) {
  std::tm local{};
  localtime_r(&when, &local);
  char buffer[64];
  std::strftime(buffer, sizeof(buffer), "memory_profile_%Y%m%d_%H%M%S", &local);
  return buffer;
}

void write_atomically(const fs::path& path, const std::string& content) {
  const fs::path partial = path.string() + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out << content;
    out.flush();
    if (!out) {
      throw clhost::sdk::Error(partial.string() + ": write failed: " + std::strerror(errno),
                               CLHOST_STATUS_IO);
    }
  }
  // Flushed to disk before the rename, so a crash never leaves a renamed but empty file.
  const int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
  fs::rename(partial, path);
}

class MemoryProfiler : public clhost::sdk::Profiler {
 public:
  // clhost.config_use/1: the picture size matters only when a picture is drawn.
  static void unused_keys(const clhost::sdk::Config& config, const clhost::sdk::Settings& /*host*/,
                          clhost::sdk::UnusedKeys& unused) {
    if (config.get_bool("png") || config.get_bool("svg")) return;
    for (const char* key : {"width_px", "height_px"})
      unused(key, "applies only with png or svg = true");
  }

  // clhost.memory_plan/1: the timeline keeps at most max_samples samples (it thins itself).
  static clhost::sdk::MemoryPlan plan_memory(const clhost::sdk::Config& config,
                                             const clhost::sdk::Settings& /*host*/,
                                             const clhost::sdk::MemoryPlanRequest& /*request*/) {
    clhost::sdk::MemoryPlan plan;
    plan.state_bytes = config.get_int("max_samples") * static_cast<int64_t>(sizeof(Sample));
    plan.fisher_samples_per_pass = 0;
    return plan;
  }

  MemoryProfiler(const clhost_host_t* host, const clhost::sdk::Config& config)
      : Profiler(host),
        interval_(std::chrono::duration<double, std::milli>(config.get_float("interval_ms"))),
        output_dir_(config.get_string("output_dir")),
        write_png_(config.get_bool("png")),
        write_svg_(config.get_bool("svg")),
        print_summary_(config.get_bool("summary")),
        timeline_(static_cast<size_t>(config.get_int("max_samples"))) {
    plot_.width_px = static_cast<int>(config.get_int("width_px"));
    plot_.height_px = static_cast<int>(config.get_int("height_px"));
    (void)this->host().memory();  // fail at start, not at the end, on a host without it
  }

  ~MemoryProfiler() override {
    stop_sampler();
    // A run that failed never sent RUN_END; its profile is the most useful one, so keep it.
    if (started_ && !written_) {
      try {
        finish(false);
      } catch (...) {  // NOLINT(bugprone-empty-catch): nothing may leave a destructor
      }
    }
  }
  MemoryProfiler(const MemoryProfiler&) = delete;
  MemoryProfiler& operator=(const MemoryProfiler&) = delete;
  MemoryProfiler(MemoryProfiler&&) = delete;
  MemoryProfiler& operator=(MemoryProfiler&&) = delete;

  void on_event(const clhost_event_t& event) override {
    if (event.kind == CLHOST_EVENT_RUN_BEGIN) start(event);
    if (!started_) return;
    // One sample at every event, so even a phase shorter than the interval has its numbers.
    const Sample sample = take_sample(event.time_seconds);
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      timeline_.add_sample(sample);
      timeline_.add_event(EventRecord{event.time_seconds, event.kind, event.task_index,
                                      event.label != nullptr ? event.label : "", source_of(event)});
    }
    if (event.kind == CLHOST_EVENT_RUN_END) {
      stop_sampler();
      finish(true);
    }
  }

  [[nodiscard]] std::string report_json() const override { return report_.dump(); }

 private:
  void start(const clhost_event_t& event) {
    if (started_) return;
    run_dir_ = event.run_dir != nullptr ? event.run_dir : ".";
    started_at_ = std::time(nullptr);
    // Event times count from the run's start; map our steady clock onto them.
    origin_ = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(event.time_seconds));
    // An unusable output directory fails the run now, not after hours of training.
    std::error_code error;
    fs::create_directories(resolve_output_dir(), error);
    if (error) {
      throw clhost::sdk::Error("memory_profiler.output_dir: " + resolve_output_dir().string() +
                                   ": cannot create: " + error.message(),
                               CLHOST_STATUS_INVALID_ARGUMENT);
    }
    started_ = true;
    sampler_ = std::thread([this] { sample_loop(); });
  }

  Sample take_sample(double at_seconds) const {
    const clhost_memory_info_t info = host().memory_info();
    Sample sample;
    sample.time_seconds = at_seconds;
    sample.rss_bytes = info.rss_bytes;
    sample.rss_peak_bytes = info.rss_peak_bytes;
    sample.tensor_bytes = info.tensor_bytes;
    sample.device_allocated_bytes = info.device_allocated_bytes;
    sample.device_reserved_bytes = info.device_reserved_bytes;
    return sample;
  }

  double now_seconds() const {
    return std::chrono::duration<double>(Clock::now() - origin_).count();
  }

  void sample_loop() {
    pthread_setname_np(pthread_self(), "clhost-memprof");  // for top -H, perf, gdb
    const double cpu_start = thread_cpu_seconds();
    auto next = Clock::now();
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      Sample sample;
      bool ok = true;
      try {
        sample = take_sample(now_seconds());
      } catch (const std::exception& e) {
        ok = false;
        host().log(CLHOST_LOG_WARNING, std::string("sampling stopped: ") + e.what());
      }
      lock.lock();
      if (!ok) break;
      timeline_.add_sample(sample);
      ++thread_samples_;
      next += std::chrono::duration_cast<Clock::duration>(interval_);
      // Behind schedule (a stalled machine): skip ahead rather than sampling in a burst.
      if (next < Clock::now()) next = Clock::now();
      wake_.wait_until(lock, next, [this] { return stopping_; });
    }
    sampler_cpu_seconds_ = thread_cpu_seconds() - cpu_start;
  }

  void stop_sampler() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (sampler_.joinable()) sampler_.join();
  }

  fs::path resolve_output_dir() const {
    const fs::path configured(output_dir_);
    return configured.is_absolute() ? configured : fs::path(run_dir_) / configured;
  }

  void finish(bool complete) {
    written_ = true;
    const double end = now_seconds();
    timeline_.finish(end);
    const fs::path directory = resolve_output_dir();
    std::error_code error;
    fs::create_directories(directory, error);
    if (error) {
      throw clhost::sdk::Error(directory.string() + ": cannot create: " + error.message(),
                               CLHOST_STATUS_IO);
    }
    // Two runs in one second into one shared directory must not overwrite each other.
    std::string stem = profile_stem(started_at_);
    for (int n = 1; fs::exists(directory / (stem + ".json")); ++n) {
      stem = profile_stem(started_at_) + "_" + std::to_string(n);
    }
    const double interval_ms = std::chrono::duration<double, std::milli>(interval_).count();
    const json sampler{
        {"interval_ms", interval_ms},
        {"thread_samples", thread_samples_},
        {"event_samples", timeline_.events().size()},
        {"kept_samples", timeline_.samples().size()},
        {"decimations", timeline_.decimations()},
        {"cpu_seconds", sampler_cpu_seconds_},
        {"cpu_per_sample_us",
         thread_samples_ > 0 ? sampler_cpu_seconds_ * 1e6 / static_cast<double>(thread_samples_)
                             : 0.0},
        {"cpu_share_of_one_core", end > 0 ? sampler_cpu_seconds_ / end : 0.0}};
    char started[32];
    std::tm local{};
    localtime_r(&started_at_, &local);
    std::strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%S%z", &local);
    const json run{{"run_dir", run_dir_},
                   {"started_at", started},
                   {"duration_s", end},
                   {"complete", complete},
                   {"clhost_version", host().raw()->host_version},
                   {"sampler", sampler}};
    json profile = timeline_.to_json(run);

    const fs::path json_path = directory / (stem + ".json");
    write_atomically(json_path, profile.dump(1) + "\n");
    json files{{"json", json_path.string()}};
    plot_.title = "memory timeline of " + fs::path(run_dir_).filename().string() +
                  (complete ? "" : " (run failed)");
    const std::pair<bool, const char*> pictures[] = {{write_png_, "png"}, {write_svg_, "svg"}};
    for (const auto& [wanted, extension] : pictures) {
      if (!wanted) continue;
      const fs::path path = directory / (stem + "." + extension);
      const std::string failure = clhost::memory_profiler::draw_timeline(
          timeline_, std::string(extension) + "cairo", path.string(), plot_);
      if (failure.empty()) {
        files[extension] = path.string();
      } else {
        host().log(CLHOST_LOG_WARNING, std::string("no ") + extension + " timeline: " + failure);
      }
    }
    report_ = timeline_.summary_json();
    report_["files"] = files;
    report_["sampler"] = sampler;
    if (print_summary_) print_summary(files);
  }

  void print_summary(const json& files) const {
    const json& peak = report_["peak"];
    if (peak.contains("rss_bytes")) {
      std::string line = "peak RSS " + format_mib(peak["rss_bytes"].get<int64_t>());
      char at[64];
      std::snprintf(at, sizeof(at), " at %.1f s", peak["rss_at_s"].get<double>());
      line += at;
      if (peak.contains("rss_phase")) line += " (" + peak["rss_phase"].get<std::string>() + ")";
      if (peak.contains("tensor_bytes")) {
        line += "; LibTorch tensors peak " + format_mib(peak["tensor_bytes"].get<int64_t>());
      }
      host().log(CLHOST_LOG_INFO, line);
    }
    std::string phases = "RSS / tensor peaks by phase:";
    for (const auto& [kind, entry] : report_["by_phase_kind"].items()) {
      phases += " " + kind + " " + format_mib(entry["peak_rss_bytes"].get<int64_t>()) + " / " +
                format_mib(std::max<int64_t>(0, entry["peak_tensor_bytes"].get<int64_t>())) + ";";
    }
    host().log(CLHOST_LOG_INFO, phases);
    host().log(CLHOST_LOG_INFO, "wrote " + files["json"].get<std::string>() +
                                    (files.contains("png") ? " (+ png)" : "") +
                                    (files.contains("svg") ? " (+ svg)" : ""));
  }

  const std::chrono::duration<double, std::milli> interval_;
  const std::string output_dir_;
  const bool write_png_;
  const bool write_svg_;
  const bool print_summary_;
  clhost::memory_profiler::PlotOptions plot_;

  bool started_ = false;
  bool written_ = false;
  std::string run_dir_;
  std::time_t started_at_ = 0;
  Clock::time_point origin_;
  json report_ = json::object();

  // Shared with the sampler thread, under mutex_.
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  Timeline timeline_;
  int64_t thread_samples_ = 0;
  double sampler_cpu_seconds_ = 0;
  std::thread sampler_;
};

}  // namespace

CLHOST_DEFINE_PLUGIN(MemoryProfiler, kDescriptor, nullptr);
