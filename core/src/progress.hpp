// Per-task progress: a redrawn bar on a terminal, plain lines (every 10%) otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace clhost {

class ProgressReporter {
 public:
  ProgressReporter(std::FILE* stream, bool enabled);
  void begin_task(const std::string& label, int64_t total_steps);
  void update(int64_t step, double loss, double samples_per_second);
  void end_task(const std::string& summary);

 private:
  std::FILE* stream_;
  bool enabled_;
  bool terminal_;
  std::string label_;
  int64_t total_ = 0;
  int64_t next_plain_line_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace clhost
