// The timeline as a picture, drawn with PLplot's cairo drivers (pngcairo, svgcairo).
#pragma once

#include <string>

#include "timeline.hpp"

namespace clhost::memory_profiler {

struct PlotOptions {
  int width_px = 1280;
  int height_px = 720;
  std::string title;
};

// Draws the timeline into `path` with PLplot device "pngcairo" or "svgcairo". PLplot calls
// exit() on its own errors, so the drawing happens in a forked child: a failure there costs the
// picture, never the run. The file appears atomically (written beside it, then renamed).
// Returns an empty string on success, otherwise what went wrong.
std::string draw_timeline(const Timeline& timeline, const std::string& device,
                          const std::string& path, const PlotOptions& options);

}  // namespace clhost::memory_profiler
