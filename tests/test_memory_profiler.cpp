// The memory_profiler plug-in through the real host: the sampler sees a known allocation and its
// release, events arrive in order on one clock, the outputs are what they claim to be. Plus the
// timeline's own rules (phases, decimation, JSON round trip), linked in directly.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "clhost/config.hpp"
#include "clhost/memory_budget.hpp"
#include "clhost/runner.hpp"
#include "test_helpers.hpp"
#include "timeline.hpp"

namespace {

namespace fs = std::filesystem;
using clhost::memory_profiler::EventRecord;
using clhost::memory_profiler::Sample;
using clhost::memory_profiler::Timeline;
using nlohmann::json;

constexpr int64_t kMiB = int64_t{1024} * 1024;
constexpr int64_t kProbeBytes = 256 * kMiB;

const char* const kConfig = R"(
[run]
name = "profile"
seed = 1

[data]
scenario = "split"
num_tasks = 2
incremental = "task"
train_samples_per_task = 500
test_samples_per_task = 200

[model]
kind = "mlp"
hidden = [50]

[train]
batch_size = 32
iterations = 20

[[pipeline]]
plugin = "memory_profiler"
interval_ms = 5.0
width_px = 640
height_px = 400

[[pipeline]]
plugin = "alloc_probe"
at_step = 10
bytes = 268435456
hold_ms = 300
)";

void run_profiled(const clhost::test::TempDir& dir, const std::vector<std::string>& set = {}) {
  clhost::ConfigOverrides overrides;
  overrides.set = set;
  overrides.plugin_path = {CLHOST_PLUGIN_DIR, CLHOST_TEST_PLUGIN_DIR};
  clhost::RunOptions options;
  options.run_dir = dir.path("run");
  options.quiet = true;
  clhost::run_pipeline(clhost::load_config(dir.file("profile.toml", kConfig), overrides), options);
}

fs::path only_file(const fs::path& directory, const std::string& extension) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.path().extension() == extension) found.push_back(entry.path());
  }
  if (found.size() != 1) {
    ADD_FAILURE() << found.size() << " " << extension << " files in " << directory;
    return {};
  }
  return found.front();
}

json load_profile(const clhost::test::TempDir& dir) {
  const fs::path file = only_file(dir.path("run") + "/logs/memory_profile", ".json");
  EXPECT_EQ(file.filename().string().rfind("memory_profile_", 0), 0U) << file;
  return json::parse(clhost::test::read_file(file.string()));
}

double event_time(const json& profile, const std::string& label) {
  for (const auto& event : profile["events"]) {
    if (event["label"] == label) return event["t_s"];
  }
  ADD_FAILURE() << "no event '" << label << "'";
  return 0;
}

// RSS samples with t in (from, to).
std::vector<int64_t> rss_between(const json& profile, double from, double to) {
  std::vector<int64_t> out;
  const auto& times = profile["samples"]["t_s"];
  for (size_t i = 0; i < times.size(); ++i) {
    const double t = times[i];
    if (t > from && t < to) out.push_back(profile["samples"]["rss_bytes"][i]);
  }
  return out;
}

int64_t median(std::vector<int64_t> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

TEST(MemoryProfiler, SamplerSeesAKnownAllocationAndItsRelease) {
  if (!clhost::memory::glibc_allocator()) {
    GTEST_SKIP() << "RSS follows AddressSanitizer's allocator here (quarantine, shadow memory), "
                    "not the probe's allocation and release";
  }
  clhost::test::TempDir dir;
  // Freed memory up to run.keep_freed_memory stays in the process; the probe is larger, so it is
  // its own mapping and leaves RSS when freed.
  run_profiled(dir, {"run.keep_freed_memory=\"64MiB\""});
  const json profile = load_profile(dir);
  const double allocate = event_time(profile, "probe allocate");
  const double allocated = event_time(profile, "probe allocated");
  const double release = event_time(profile, "probe free");
  const double released = event_time(profile, "probe freed");
  const int64_t before = median(rss_between(profile, allocate - 0.2, allocate + 1e-9));
  const std::vector<int64_t> held = rss_between(profile, allocated, release);
  const std::vector<int64_t> after = rss_between(profile, release + 0.1, released + 1e-9);
  // 300 ms at 5 ms: dozens of samples even on a loaded machine.
  ASSERT_GE(held.size(), 10U);
  ASSERT_GE(after.size(), 5U);
  EXPECT_NEAR(static_cast<double>(median(held) - before), static_cast<double>(kProbeBytes),
              0.05 * static_cast<double>(kProbeBytes));
  EXPECT_NEAR(static_cast<double>(median(after) - before), 0.0, 16.0 * kMiB);
  // The overall peak is the probe's.
  EXPECT_GE(profile["peak"]["rss_bytes"].get<int64_t>(), before + kProbeBytes * 95 / 100);
  EXPECT_GE(profile["peak"]["rss_at_s"].get<double>(), allocate);
  EXPECT_LE(profile["peak"]["rss_at_s"].get<double>(), release);
  EXPECT_EQ(profile["peak"]["rss_phase"], "train task 1");
  EXPECT_GT(profile["run"]["sampler"]["thread_samples"].get<int64_t>(), 60);
  EXPECT_TRUE(profile["run"]["complete"].get<bool>());
}

TEST(MemoryProfiler, EventsArriveInOrderOnOneMonotoneClock) {
  clhost::test::TempDir dir;
  run_profiled(dir);
  const json profile = load_profile(dir);
  const auto& events = profile["events"];
  ASSERT_GE(events.size(), 10U);
  EXPECT_EQ(events.front()["kind"], "run_begin");
  EXPECT_EQ(events.back()["kind"], "run_end");
  std::vector<std::string> host_kinds;
  std::vector<std::string> marks;
  for (size_t i = 0; i < events.size(); ++i) {
    if (i > 0) {
      EXPECT_GE(events[i]["t_s"].get<double>(), events[i - 1]["t_s"].get<double>());
    }
    if (events[i]["source"] == "clhost") host_kinds.push_back(events[i]["kind"]);
    if (events[i]["kind"] == "user") {
      EXPECT_EQ(events[i]["source"], "alloc_probe");
      EXPECT_EQ(events[i]["task"], 0);
      marks.push_back(events[i]["label"]);
    }
  }
  const std::vector<std::string> expected_marks{"probe allocate", "probe allocated", "probe free",
                                                "probe freed"};
  EXPECT_EQ(marks, expected_marks);
  // A run checkpoint after the untrained model's evaluation and after every task.
  const std::vector<std::string> expected_kinds{
      "run_begin",         "eval_begin",      "eval_end",          "checkpoint",      "task_begin",
      "consolidate_begin", "consolidate_end", "task_end",          "eval_begin",      "eval_end",
      "checkpoint",        "task_begin",      "consolidate_begin", "consolidate_end", "task_end",
      "eval_begin",        "eval_end",        "checkpoint",        "run_end"};
  EXPECT_EQ(host_kinds, expected_kinds);
  const auto& times = profile["samples"]["t_s"];
  for (size_t i = 1; i < times.size(); ++i) EXPECT_GE(times[i], times[i - 1]) << i;
  // Phases tile the run in time order.
  const auto& phases = profile["phases"];
  for (size_t i = 1; i < phases.size(); ++i) {
    EXPECT_GE(phases[i]["begin_s"].get<double>(), phases[i - 1]["end_s"].get<double>() - 1e-9);
  }
}

TEST(MemoryProfiler, PngAndSvgHaveTheConfiguredSize) {
  clhost::test::TempDir dir;
  run_profiled(dir);
  const fs::path png = only_file(dir.path("run") + "/logs/memory_profile", ".png");
  std::ifstream in(png, std::ios::binary);
  std::array<unsigned char, 24> head{};
  in.read(reinterpret_cast<char*>(head.data()), head.size());
  ASSERT_TRUE(in) << png;
  const std::array<unsigned char, 8> signature{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  EXPECT_TRUE(std::equal(signature.begin(), signature.end(), head.begin()));
  EXPECT_EQ(std::string(head.begin() + 12, head.begin() + 16), "IHDR");
  auto big_endian = [&](size_t at) {
    return (uint32_t{head[at]} << 24U) | (uint32_t{head[at + 1]} << 16U) |
           (uint32_t{head[at + 2]} << 8U) | uint32_t{head[at + 3]};
  };
  EXPECT_EQ(big_endian(16), 640U);
  EXPECT_EQ(big_endian(20), 400U);
  const std::string svg =
      clhost::test::read_file(only_file(dir.path("run") + "/logs/memory_profile", ".svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("width=\"640"), std::string::npos) << svg.substr(0, 400);
  // Nothing half-written is left behind.
  for (const auto& entry : fs::directory_iterator(dir.path("run") + "/logs/memory_profile")) {
    EXPECT_EQ(entry.path().string().find(".partial"), std::string::npos) << entry.path();
  }
}

TEST(MemoryProfiler, SummaryGoesIntoResultsJson) {
  clhost::test::TempDir dir;
  run_profiled(dir);
  const json results = json::parse(clhost::test::read_file(dir.path("run") + "/results.json"));
  const json& report = results["plugins"][0]["report"];
  EXPECT_GE(report["peak"]["rss_bytes"].get<int64_t>(), kProbeBytes);
  EXPECT_GT(report["peak"]["tensor_bytes"].get<int64_t>(), 0);
  for (const char* kind : {"train", "evaluate"}) {
    EXPECT_GT(report["by_phase_kind"][kind]["peak_rss_bytes"].get<int64_t>(), 0) << kind;
  }
  EXPECT_TRUE(fs::exists(report["files"]["png"].get<std::string>()));
  EXPECT_GT(report["sampler"]["cpu_per_sample_us"].get<double>(), 0.0);
}

TEST(MemoryProfiler, AFailedRunStillLeavesItsProfile) {
  clhost::test::TempDir dir;
  EXPECT_THROW(run_profiled(dir, {"pipeline.1.fail_at_step=25"}), std::exception);
  const json profile = load_profile(dir);
  EXPECT_FALSE(profile["run"]["complete"].get<bool>());
  EXPECT_GE(profile["peak"]["rss_bytes"].get<int64_t>(), kProbeBytes);
  EXPECT_TRUE(fs::exists(only_file(dir.path("run") + "/logs/memory_profile", ".png")));
}

TEST(MemoryProfiler, AnUnusableOutputDirectoryFailsBeforeTraining) {
  clhost::test::TempDir dir;
  const std::string blocker = dir.file("not_a_directory", "x");
  try {
    run_profiled(dir, {"pipeline.0.output_dir=\"" + blocker + "/profiles\""});
    FAIL() << "the run should have failed";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("memory_profiler.output_dir"), std::string::npos)
        << e.what();
  }
  const std::string metrics = clhost::test::read_file(dir.path("run") + "/metrics.csv");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 1) << "no step ran:\n" << metrics;
}

// --- the timeline on its own -------------------------------------------------------------------

Sample sample_at(double t, int64_t rss, int64_t tensor = 0) {
  Sample sample;
  sample.time_seconds = t;
  sample.rss_bytes = rss;
  sample.rss_peak_bytes = rss;
  sample.tensor_bytes = tensor;
  return sample;
}

TEST(Timeline, EventsOpenPhasesAndLateSamplesKeepTimeOrder) {
  Timeline timeline(1000);
  timeline.add_event({0.0, CLHOST_EVENT_RUN_BEGIN, -1, "run begin", "clhost"});
  timeline.add_event({1.0, CLHOST_EVENT_TASK_BEGIN, 0, "task a begin", "clhost"});
  timeline.add_sample(sample_at(1.5, 100));
  timeline.add_event({2.0, CLHOST_EVENT_CONSOLIDATE_BEGIN, 0, "consolidate a", "clhost"});
  timeline.add_sample(sample_at(2.5, 300));
  timeline.add_sample(sample_at(1.9, 200));  // read before the event, delivered after it
  timeline.add_event({3.0, CLHOST_EVENT_CONSOLIDATE_END, 0, "consolidated", "clhost"});
  timeline.finish(3.0);
  ASSERT_EQ(timeline.samples().size(), 3U);
  EXPECT_DOUBLE_EQ(timeline.samples()[1].time_seconds, 1.9);
  const auto& phases = timeline.phases();
  ASSERT_EQ(phases.size(), 2U);  // empty "other" stretches dropped
  EXPECT_EQ(phases[0].name, "train task 1");
  EXPECT_EQ(phases[0].peak_rss_bytes, 200);
  EXPECT_EQ(phases[1].name, "consolidate task 1");
  EXPECT_EQ(phases[1].peak_rss_bytes, 300);
  EXPECT_EQ(timeline.summary_json()["peak"]["rss_phase"], "consolidate task 1");
}

TEST(Timeline, DecimationKeepsThePeak) {
  Timeline timeline(100);
  timeline.add_event({0.0, CLHOST_EVENT_RUN_BEGIN, -1, "run begin", "clhost"});
  for (int i = 0; i < 1000; ++i) timeline.add_sample(sample_at(i * 0.01, i == 777 ? 5000 : 10));
  EXPECT_LE(timeline.samples().size(), 100U);
  EXPECT_GE(timeline.decimations(), 3);
  EXPECT_EQ(timeline.peak_rss_sample()->rss_bytes, 5000);
  EXPECT_DOUBLE_EQ(timeline.peak_rss_sample()->time_seconds, 7.77);
}

TEST(Timeline, JsonRoundTrip) {
  Timeline timeline(1000);
  timeline.add_event({0.0, CLHOST_EVENT_RUN_BEGIN, -1, "run begin", "clhost"});
  timeline.add_event({0.1, CLHOST_EVENT_TASK_BEGIN, 0, "task begin", "clhost"});
  for (int i = 0; i < 50; ++i) timeline.add_sample(sample_at(0.1 + i * 0.013, 1000 + i * 7, i));
  timeline.add_event({0.5, CLHOST_EVENT_USER, 0, "warm \"cache\"", "my_plugin"});
  timeline.add_event({0.6, CLHOST_EVENT_OUT_OF_MEMORY, 0, "oom at 64", "clhost"});
  timeline.add_event({0.8, CLHOST_EVENT_TASK_END, 0, "task end", "clhost"});
  timeline.finish(0.8);
  const json run{{"run_dir", "/tmp/x"}};
  const json written = timeline.to_json(run);
  const json reread = Timeline::from_json(written).to_json(run);
  ASSERT_EQ(reread["phases"].size(), written["phases"].size());
  for (size_t i = 0; i < written["phases"].size(); ++i) {
    // The mean is stored, the sum rebuilt from it: equal to the last bits only.
    EXPECT_NEAR(reread["phases"][i]["mean_rss_bytes"].get<double>(),
                written["phases"][i]["mean_rss_bytes"].get<double>(), 1e-6);
  }
  json a = written;
  json b = reread;
  for (auto* profile : {&a, &b}) {
    for (auto& phase : (*profile)["phases"]) phase.erase("mean_rss_bytes");
  }
  EXPECT_EQ(a, b);
  EXPECT_THROW(Timeline::from_json(json{{"schema", "something else"}}), std::runtime_error);
  json broken = written;
  broken["events"][0].erase("kind");
  EXPECT_THROW(Timeline::from_json(broken), std::runtime_error);
}

}  // namespace
