#include "plot.hpp"

#include <fcntl.h>
#include <plplot.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

namespace clhost::memory_profiler {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Colour map 0 slots.
enum Colour : PLINT {
  kBackground = 0,
  kInk,
  kRss,
  kTensor,
  kDeviceAllocated,
  kDeviceReserved,
  kTrainShade,
  kConsolidateShade,
  kEvaluateShade,
  kOutOfMemory,
  kBatchChange,
  kCheckpoint,
  kNamedEvent,
  kGrid,
  kColourCount
};

struct Rgb {
  PLINT r, g, b;
};
constexpr Rgb kPalette[kColourCount] = {
    {255, 255, 255}, {30, 30, 30},    {31, 119, 180},  {255, 127, 14},  {148, 103, 189},
    {188, 189, 34},  {228, 228, 228}, {198, 232, 198}, {222, 212, 240}, {214, 39, 40},
    {140, 86, 75},   {23, 160, 180},  {110, 110, 110}, {205, 205, 205}};

// Line styles (PLplot's built-in pllsty patterns).
constexpr PLINT kSolid = 1;
constexpr PLINT kDashed = 2;
constexpr PLINT kDotted = 3;

struct LegendEntry {
  std::string text;
  PLINT option;  // PL_LEGEND_LINE or PL_LEGEND_COLOR_BOX
  PLINT colour;
  PLINT style;
};

struct PointEventStyle {
  clhost_event_kind_t kind;
  const char* legend;
  PLINT colour;
  PLINT style;
  PLFLT width;
};
constexpr PointEventStyle kPointEvents[] = {
    {CLHOST_EVENT_OUT_OF_MEMORY, "out of memory", kOutOfMemory, kSolid, 2.0},
    {CLHOST_EVENT_BATCH_SIZE_CHANGE, "batch size change", kBatchChange, kDashed, 1.0},
    {CLHOST_EVENT_CHECKPOINT, "checkpoint", kCheckpoint, kSolid, 1.0},
    {CLHOST_EVENT_USER, "named event", kNamedEvent, kDotted, 1.0},
};

std::string format_mib(double bytes) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.1f MiB", bytes / kMiB);
  return buffer;
}

void draw_line(const std::vector<PLFLT>& x, const std::vector<PLFLT>& y, PLINT colour, PLINT style,
               PLFLT width) {
  if (x.size() < 2) return;
  plcol0(colour);
  pllsty(style);
  plwidth(width);
  plline(static_cast<PLINT>(x.size()), x.data(), y.data());
}

// GiB past 8 GiB, so that the axis needs no exponent (PLplot puts it outside the picture).
template <typename Samples>
bool needs_gib(const Samples& samples) {
  int64_t largest = 0;
  for (const Sample& sample : samples) {
    largest =
        std::max({largest, sample.rss_bytes, sample.tensor_bytes, sample.device_reserved_bytes});
  }
  return static_cast<double>(largest) > 8.0 * 1024.0 * kMiB;
}

// The timeline's columns in the plot's unit (MiB, or GiB past 8 GiB) and the axes' ranges.
struct Series {
  std::vector<PLFLT> times, rss;
  std::vector<PLFLT> tensor_times, tensor;
  std::vector<PLFLT> device_times, device_allocated, device_reserved;
  bool gib = false;
  double unit = kMiB;
  double x_min = 0.0, x_max = 1e-3, y_max = 1.0;
};

Series series_of(const Timeline& timeline) {
  const auto& samples = timeline.samples();
  Series s;
  s.x_min = samples.empty() ? 0.0 : samples.front().time_seconds;
  s.x_max = s.x_min + 1e-3;
  s.gib = needs_gib(samples);
  s.unit = s.gib ? 1024.0 * kMiB : kMiB;
  for (const Sample& sample : samples) {
    s.times.push_back(sample.time_seconds);
    s.rss.push_back(static_cast<double>(sample.rss_bytes) / s.unit);
    if (sample.tensor_bytes >= 0) {
      s.tensor_times.push_back(sample.time_seconds);
      s.tensor.push_back(static_cast<double>(sample.tensor_bytes) / s.unit);
    }
    if (sample.device_allocated_bytes >= 0) {
      s.device_times.push_back(sample.time_seconds);
      s.device_allocated.push_back(static_cast<double>(sample.device_allocated_bytes) / s.unit);
      s.device_reserved.push_back(static_cast<double>(sample.device_reserved_bytes) / s.unit);
    }
    s.x_max = std::max(s.x_max, sample.time_seconds);
    s.y_max = std::max({s.y_max, s.rss.back(), s.tensor.empty() ? 0.0 : s.tensor.back(),
                        s.device_reserved.empty() ? 0.0 : s.device_reserved.back()});
  }
  for (const EventRecord& event : timeline.events()) {
    s.x_min = std::min(s.x_min, event.time_seconds);
    s.x_max = std::max(s.x_max, event.time_seconds);
  }
  s.y_max *= 1.15;  // room for the task labels and the peak note
  return s;
}

// Phase spans (train, consolidate, evaluate), under everything else; training spans labelled
// with their task. Sets shaded[slot] for each kind drawn.
void shade_phases(const Timeline& timeline, double y_max, bool shaded[3]) {
  for (const Phase& phase : timeline.phases()) {
    int slot = -1;
    if (phase.kind == "train") slot = 0;
    if (phase.kind == "consolidate") slot = 1;
    if (phase.kind == "evaluate") slot = 2;
    if (slot < 0 || phase.end_seconds <= phase.begin_seconds) continue;
    shaded[slot] = true;
    const PLFLT xs[4] = {phase.begin_seconds, phase.end_seconds, phase.end_seconds,
                         phase.begin_seconds};
    const PLFLT ys[4] = {0.0, 0.0, y_max, y_max};
    plcol0(kTrainShade + slot);
    plfill(4, xs, ys);
    if (slot == 0) {
      plcol0(kInk);
      plschr(0.0, 0.75);
      plptex((phase.begin_seconds + phase.end_seconds) / 2.0, y_max * 0.965, 1.0, 0.0, 0.5,
             ("task " + std::to_string(phase.task_index + 1)).c_str());
    }
  }
}

void draw_axes(const PlotOptions& options, bool gib) {
  plschr(0.0, 0.9);
  plwidth(1.0);
  pllsty(kSolid);
  plcol0(kGrid);
  plbox("g", 0.0, 0, "g", 0.0, 0);
  plcol0(kInk);
  plbox("bcnst", 0.0, 0, "bcnstv", 0.0, 0);
  pllab("time since the run began (s)", gib ? "memory (GiB)" : "memory (MiB)",
        options.title.c_str());
}

// A vertical line per out-of-memory retry, batch-size change, checkpoint and named event.
void draw_point_events(const Timeline& timeline, double y_max, std::vector<LegendEntry>& legend) {
  for (const PointEventStyle& style : kPointEvents) {
    bool seen = false;
    for (const EventRecord& event : timeline.events()) {
      if (event.kind != style.kind) continue;
      const PLFLT xs[2] = {event.time_seconds, event.time_seconds};
      const PLFLT ys[2] = {0.0, y_max * 0.93};
      plcol0(style.colour);
      pllsty(style.style);
      plwidth(style.width);
      plline(2, xs, ys);
      seen = true;
    }
    if (seen) legend.push_back({style.legend, PL_LEGEND_LINE, style.colour, style.style});
  }
}

// The memory curves; RSS and tensors lead the legend, the phase shades close it.
void draw_series(const Series& s, const bool shaded[3], std::vector<LegendEntry>& legend) {
  draw_line(s.times, s.rss, kRss, kSolid, 2.0);
  legend.insert(legend.begin(), {"process RSS", PL_LEGEND_LINE, kRss, kSolid});
  if (!s.tensor.empty()) {
    draw_line(s.tensor_times, s.tensor, kTensor, kSolid, 2.0);
    legend.insert(legend.begin() + 1, {"LibTorch tensors", PL_LEGEND_LINE, kTensor, kSolid});
  }
  if (!s.device_times.empty()) {
    draw_line(s.device_times, s.device_allocated, kDeviceAllocated, kSolid, 2.0);
    draw_line(s.device_times, s.device_reserved, kDeviceReserved, kDashed, 1.5);
    legend.push_back({"GPU allocated", PL_LEGEND_LINE, kDeviceAllocated, kSolid});
    legend.push_back({"GPU reserved", PL_LEGEND_LINE, kDeviceReserved, kDashed});
  }
  const char* const shade_names[3] = {"training", "consolidation", "evaluation"};
  for (int slot = 0; slot < 3; ++slot) {
    if (shaded[slot]) {
      legend.push_back({shade_names[slot], PL_LEGEND_COLOR_BOX, kTrainShade + slot, kSolid});
    }
  }
}

// A cross at the RSS peak with its value and time.
void mark_peak(const Timeline& timeline, const Series& s) {
  const Sample* peak = timeline.peak_rss_sample();
  if (peak == nullptr) return;
  const PLFLT px = peak->time_seconds;
  const PLFLT py = static_cast<double>(peak->rss_bytes) / s.unit;
  // A cross drawn in data units: font-glyph markers sit off-centre in the cairo drivers.
  const PLFLT dx = (s.x_max - s.x_min) * 0.008;
  const PLFLT dy = s.y_max * 0.016;
  const PLFLT cross_x[2][2] = {{px - dx, px + dx}, {px - dx, px + dx}};
  const PLFLT cross_y[2][2] = {{py - dy, py + dy}, {py + dy, py - dy}};
  plcol0(kOutOfMemory);
  pllsty(kSolid);
  plwidth(2.5);
  plline(2, cross_x[0], cross_y[0]);
  plline(2, cross_x[1], cross_y[1]);
  plcol0(kInk);
  plschr(0.0, 0.8);
  char note[128];
  std::snprintf(note, sizeof(note), "peak RSS %s at %.1f s",
                format_mib(static_cast<double>(peak->rss_bytes)).c_str(), peak->time_seconds);
  const double where = (px - s.x_min) / (s.x_max - s.x_min);
  plptex(px, py + s.y_max * 0.035, 1.0, 0.0, where > 0.75 ? 1.0 : where < 0.25 ? 0.0 : 0.5, note);
}

void draw_legend(const std::vector<LegendEntry>& legend) {
  const auto count = static_cast<PLINT>(legend.size());
  std::vector<PLINT> options_array;
  std::vector<const char*> texts;
  std::vector<PLINT> text_colours(legend.size(), kInk);
  std::vector<PLINT> colours;
  std::vector<PLINT> styles;
  std::vector<PLINT> patterns(legend.size(), 0);
  std::vector<PLFLT> box_scales(legend.size(), 0.8);
  std::vector<PLFLT> box_widths(legend.size(), 1.0);
  std::vector<PLFLT> line_widths(legend.size(), 2.0);
  for (const LegendEntry& entry : legend) {
    options_array.push_back(entry.option);
    texts.push_back(entry.text.c_str());
    colours.push_back(entry.colour);
    styles.push_back(entry.style);
  }
  PLFLT legend_width = 0;
  PLFLT legend_height = 0;
  plschr(0.0, 0.65);
  pllsty(kSolid);
  pllegend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
           PL_POSITION_RIGHT | PL_POSITION_OUTSIDE, 0.015, 0.0, 0.04, kBackground, kInk, kSolid, 0,
           0, count, options_array.data(), 0.8, 0.75, 1.8, 0.0, text_colours.data(), texts.data(),
           colours.data(), patterns.data(), box_scales.data(), box_widths.data(), colours.data(),
           styles.data(), line_widths.data(), nullptr, nullptr, nullptr, nullptr);
}

void draw(const Timeline& timeline, const PlotOptions& options) {
  const Series series = series_of(timeline);
  for (PLINT i = 0; i < kColourCount; ++i) plscol0(i, kPalette[i].r, kPalette[i].g, kPalette[i].b);
  plinit();
  pladv(0);
  plvpor(0.09, 0.78, 0.11, 0.92);
  plwind(series.x_min, series.x_max, 0.0, series.y_max);
  std::vector<LegendEntry> legend;
  bool shaded[3] = {false, false, false};
  shade_phases(timeline, series.y_max, shaded);
  draw_axes(options, series.gib);
  draw_point_events(timeline, series.y_max, legend);
  draw_series(series, shaded, legend);
  mark_peak(timeline, series);
  draw_legend(legend);
  plend();
}

// PLplot's error path: say why, then leave the child without running anyone's atexit handlers.
int exit_child(const char* message) {
  std::fprintf(stderr, "PLplot: %s\n", message);
  std::fflush(stderr);
  _exit(3);
}

bool device_available(const std::string& device) {
  // plgDevs fills caller-owned arrays; `count` goes in as their size, comes out as the number.
  std::vector<const char*> menu(128, nullptr);
  std::vector<const char*> names(128, nullptr);
  const char** menu_data = menu.data();
  const char** names_data = names.data();
  int count = static_cast<int>(names.size());
  plgDevs(&menu_data, &names_data, &count);
  for (int i = 0; i < count; ++i) {
    if (device == names[i]) return true;
  }
  return false;
}

}  // namespace

std::string draw_timeline(const Timeline& timeline, const std::string& device,
                          const std::string& path, const PlotOptions& options) {
  const std::string partial = path + ".partial";
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child < 0) return std::string("fork failed: ") + std::strerror(errno);
  if (child == 0) {
    plsexit(&exit_child);
    if (!device_available(device)) {
      std::fprintf(stderr, "PLplot device '%s' is not installed (package plplot-driver-cairo)\n",
                   device.c_str());
      _exit(4);
    }
    plsdev(device.c_str());
    plsfnam(partial.c_str());
    plspage(0.0, 0.0, options.width_px, options.height_px, 0, 0);
    draw(timeline, options);
    _exit(0);
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return std::string("waitpid failed: ") + std::strerror(errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::remove(partial.c_str());
    return "the " + device + " drawing process failed (" +
           (WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                              : "signal " + std::to_string(WTERMSIG(status))) +
           ")";
  }
  const int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);  // to disk before the rename
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    return path + ": rename failed: " + std::strerror(errno);
  }
  return {};
}

}  // namespace clhost::memory_profiler
