// Charts for the HTML reports, drawn with PLplot's svgcairo driver (the same library as the
// memory profiler's pictures) and returned as SVG text to inline in a page.
#pragma once

#include <string>
#include <vector>

namespace clhost::tools {

struct Series {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
  bool dashed = false;
};

struct ChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  int width_px = 760;
  int height_px = 380;
  bool fixed_y = false;  // use y_min/y_max instead of the data's range
  double y_min = 0;
  double y_max = 1;
  // Heatmaps: the colour scale runs from y_min (white) to y_max (dark), reversed when lower
  // values are better, so that darker is always better.
  bool higher_is_better = true;
};

// Makes an SVG's ids (cairo's glyph and clip definitions) unique to `prefix`, so that several
// SVGs inlined in one page do not resolve each other's references.
std::string scope_svg_ids(const std::string& svg, const std::string& prefix);

// Each returns an <svg> element (ids already scoped), or throws std::runtime_error when PLplot
// fails (it draws in a forked child, because PLplot exits the process on its own errors).
std::string line_chart_svg(const std::vector<Series>& series, const ChartOptions& options);

// Values in [0, 1], one row per training task, one column per evaluated task; NaN cells blank.
std::string heatmap_svg(const std::vector<std::vector<double>>& matrix,
                        const std::vector<std::string>& row_labels,
                        const std::vector<std::string>& column_labels, const ChartOptions& options);

}  // namespace clhost::tools
