#include "charts.hpp"

#include <plplot.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>

namespace clhost::tools {
namespace {

// Colour map 0: background, ink, grid, then the series colours.
constexpr PLINT kBackground = 0;
constexpr PLINT kInk = 1;
constexpr PLINT kGrid = 2;
constexpr PLINT kFirstSeries = 3;
constexpr int kSeriesColours = 8;
constexpr PLINT kPalette[][3] = {{255, 255, 255}, {30, 30, 30},    {210, 210, 210}, {31, 119, 180},
                                 {255, 127, 14},  {44, 160, 44},   {214, 39, 40},   {148, 103, 189},
                                 {140, 86, 75},   {227, 119, 194}, {127, 127, 127}};

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

int exit_child(const char* message) {
  std::fprintf(stderr, "PLplot: %s\n", message);
  _exit(3);
}

// Runs `draw` against a fresh svgcairo stream in a child process and returns the SVG.
std::string render(const ChartOptions& options, const std::function<void()>& draw) {
  char path[] = "/tmp/clhost-chart-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) throw std::runtime_error("chart: cannot create a temporary file");
  close(fd);
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error("chart: fork failed");
  if (child == 0) {
    plsexit(&exit_child);
    plsdev("svgcairo");
    plsfnam(path);
    plspage(0.0, 0.0, options.width_px, options.height_px, 0, 0);
    plscmap0n(static_cast<PLINT>(std::size(kPalette)));
    for (PLINT i = 0; i < static_cast<PLINT>(std::size(kPalette)); ++i) {
      plscol0(i, kPalette[i][0], kPalette[i][1], kPalette[i][2]);
    }
    plinit();
    pladv(0);
    draw();
    plend();
    _exit(0);
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
  }
  std::ifstream in(path);
  std::string svg{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::remove(path);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || svg.find("<svg") == std::string::npos) {
    throw std::runtime_error("chart '" + options.title + "': PLplot failed (svgcairo driver; " +
                             "package plplot-driver-cairo)");
  }
  static int charts = 0;
  // Drop the XML declaration (the SVG goes inline) and give its ids a page-unique prefix.
  return scope_svg_ids(svg.substr(svg.find("<svg")), "c" + std::to_string(++charts));
}

void labels(const ChartOptions& options) {
  plcol0(kInk);
  plschr(0.0, 0.8);
  pllab(options.x_label.c_str(), options.y_label.c_str(), options.title.c_str());
}

}  // namespace

std::string scope_svg_ids(const std::string& svg, const std::string& prefix) {
  std::string out = replace_all(svg, "id=\"", "id=\"" + prefix + "-");
  out = replace_all(out, "href=\"#", "href=\"#" + prefix + "-");
  return replace_all(out, "url(#", "url(#" + prefix + "-");
}

std::string line_chart_svg(const std::vector<Series>& series, const ChartOptions& options) {
  return render(options, [&] {
    double x_min = INFINITY;
    double x_max = -INFINITY;
    double y_min = INFINITY;
    double y_max = -INFINITY;
    for (const Series& line : series) {
      for (size_t i = 0; i < line.x.size(); ++i) {
        if (!std::isfinite(line.y[i])) continue;
        x_min = std::min(x_min, line.x[i]);
        x_max = std::max(x_max, line.x[i]);
        y_min = std::min(y_min, line.y[i]);
        y_max = std::max(y_max, line.y[i]);
      }
    }
    if (!std::isfinite(x_min)) x_min = 0, x_max = 1, y_min = 0, y_max = 1;
    if (options.fixed_y) y_min = options.y_min, y_max = options.y_max;
    if (x_max <= x_min) x_max = x_min + 1;
    if (y_max <= y_min) y_max = y_min + 1;
    const double pad = (y_max - y_min) * 0.05;
    // The legend sits right of the plot: long series names take plot width instead of being cut
    // at the image's edge (about 0.0075 of the width per character at the legend's size).
    size_t longest = 0;
    for (const Series& line : series) longest = std::max(longest, line.label.size());
    const double right = std::clamp(0.9 - 0.0075 * static_cast<double>(longest), 0.45, 0.72);
    plvpor(0.1, right, 0.14, 0.9);
    plwind(x_min, x_max, options.fixed_y ? y_min : y_min - pad, y_max + pad);
    plcol0(kGrid);
    plbox("g", 0, 0, "g", 0, 0);
    plcol0(kInk);
    plschr(0.0, 0.75);
    plbox("bcnst", 0, 0, "bcnstv", 0, 0);
    labels(options);
    std::vector<PLINT> option_flags;
    std::vector<PLINT> colours;
    std::vector<PLINT> styles;
    std::vector<PLFLT> widths;
    std::vector<const char*> texts;
    for (size_t s = 0; s < series.size(); ++s) {
      const Series& line = series[s];
      const PLINT colour = kFirstSeries + static_cast<PLINT>(s % kSeriesColours);
      plcol0(colour);
      pllsty(line.dashed ? 2 : 1);
      plwidth(2.0);
      std::vector<PLFLT> xs;
      std::vector<PLFLT> ys;
      for (size_t i = 0; i < line.x.size(); ++i) {
        if (std::isfinite(line.y[i])) {
          xs.push_back(line.x[i]);
          ys.push_back(line.y[i]);
        }
      }
      if (xs.size() >= 2) plline(static_cast<PLINT>(xs.size()), xs.data(), ys.data());
      if (!xs.empty() && xs.size() <= 40) {
        plpoin(static_cast<PLINT>(xs.size()), xs.data(), ys.data(), 17);
      }
      option_flags.push_back(PL_LEGEND_LINE);
      colours.push_back(colour);
      styles.push_back(line.dashed ? 2 : 1);
      widths.push_back(2.0);
      texts.push_back(line.label.c_str());
    }
    pllsty(1);
    plwidth(1.0);
    if (!series.empty()) {
      std::vector<PLINT> text_colours(series.size(), kInk);
      PLFLT width = 0;
      PLFLT height = 0;
      plschr(0.0, 0.6);
      pllegend(&width, &height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
               PL_POSITION_RIGHT | PL_POSITION_OUTSIDE, 0.02, 0.0, 0.05, kBackground, kInk, 1, 0, 0,
               static_cast<PLINT>(series.size()), option_flags.data(), 0.8, 0.7, 1.8, 0.0,
               text_colours.data(), texts.data(), nullptr, nullptr, nullptr, nullptr,
               colours.data(), styles.data(), widths.data(), nullptr, nullptr, nullptr, nullptr);
    }
  });
}

std::string heatmap_svg(const std::vector<std::vector<double>>& matrix,
                        const std::vector<std::string>& row_labels,
                        const std::vector<std::string>& column_labels,
                        const ChartOptions& options) {
  return render(options, [&] {
    const auto rows = static_cast<double>(matrix.size());
    const auto columns = static_cast<double>(matrix.empty() ? 1 : matrix[0].size());
    plvpor(0.24, 0.94, 0.16, 0.88);
    plwind(0.0, columns, rows, 0.0);  // row 0 at the top, as the matrix is printed
    // White (0) to dark blue (1), through cmap1.
    const PLFLT positions[] = {0.0, 1.0};
    const PLFLT red[] = {1.0, 0.03};
    const PLFLT green[] = {1.0, 0.19};
    const PLFLT blue[] = {1.0, 0.42};
    plscmap1l(1, 2, positions, red, green, blue, nullptr);
    plschr(0.0, 0.6);
    for (size_t i = 0; i < matrix.size(); ++i) {
      for (size_t j = 0; j < matrix[i].size(); ++j) {
        const double value = matrix[i][j];
        if (!std::isfinite(value)) continue;
        const PLFLT x[4] = {double(j), double(j) + 1, double(j) + 1, double(j)};
        const PLFLT y[4] = {double(i), double(i), double(i) + 1, double(i) + 1};
        const double span = options.y_max > options.y_min ? options.y_max - options.y_min : 1.0;
        const double scaled = std::clamp((value - options.y_min) / span, 0.0, 1.0);
        const double shade = options.higher_is_better ? scaled : 1.0 - scaled;
        plcol1(shade);
        plfill(4, x, y);
        char text[16];
        std::snprintf(text, sizeof(text), "%.3f", value);
        plcol0(shade > 0.6 ? kBackground : kInk);
        plptex(double(j) + 0.5, double(i) + 0.6, 1.0, 0.0, 0.5, text);
      }
    }
    plcol0(kInk);
    plbox("bc", 0, 0, "bc", 0, 0);
    plschr(0.0, 0.6);
    for (size_t j = 0; j < column_labels.size(); ++j) {
      plmtex("b", 1.5, (double(j) + 0.5) / columns, 0.5, column_labels[j].c_str());
    }
    for (size_t i = 0; i < row_labels.size(); ++i) {
      plmtex("lv", 0.8, 1.0 - (double(i) + 0.5) / rows, 1.0, row_labels[i].c_str());
    }
    plschr(0.0, 0.8);
    pllab("", "", options.title.c_str());
    plmtex("b", 3.2, 0.5, 0.5, options.x_label.c_str());
  });
}

}  // namespace clhost::tools
