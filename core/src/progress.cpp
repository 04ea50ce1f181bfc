#include "progress.hpp"

#include <unistd.h>

#include <algorithm>

namespace clhost {

ProgressReporter::ProgressReporter(std::FILE* stream, bool enabled)
    : stream_(stream), enabled_(enabled), terminal_(::isatty(::fileno(stream)) != 0) {}

void ProgressReporter::begin_task(const std::string& label, int64_t total_steps) {
  label_ = label;
  total_ = std::max<int64_t>(total_steps, 1);
  next_plain_line_ = total_ / 10;
  started_ = std::chrono::steady_clock::now();
  last_draw_ = started_ - std::chrono::seconds(1);
}

void ProgressReporter::update(int64_t step, double loss, double samples_per_second) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - started_).count();
  const double eta =
      step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : 0.0;
  if (terminal_) {
    // Redrawing more often than 10 Hz costs time and shows nothing.
    if (step < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * step / total_);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    std::fprintf(stream_, "\r%s [%s] %lld/%lld loss %.4f %.0f samples/s ETA %.0fs\033[K",
                 label_.c_str(), bar.c_str(), static_cast<long long>(step),
                 static_cast<long long>(total_), loss, samples_per_second, eta);
    std::fflush(stream_);
  } else if (step >= next_plain_line_ || step == total_) {
    next_plain_line_ = step + std::max<int64_t>(total_ / 10, 1);
    std::fprintf(stream_, "%s step %lld/%lld loss %.4f %.0f samples/s ETA %.0fs\n", label_.c_str(),
                 static_cast<long long>(step), static_cast<long long>(total_), loss,
                 samples_per_second, eta);
    std::fflush(stream_);
  }
}

void ProgressReporter::end_task(const std::string& summary) {
  if (!enabled_) return;
  if (terminal_) std::fprintf(stream_, "\n");
  std::fprintf(stream_, "%s\n", summary.c_str());
  std::fflush(stream_);
}

}  // namespace clhost
