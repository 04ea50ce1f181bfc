#include "metrics_log.hpp"

#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

namespace clhost {

std::string format_double(double value, int digits) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << value;
  return out.str();
}

MetricsLog::MetricsLog(const std::string& path, int64_t keep_bytes, bool quiet,
                       EventJournal& events)
    : journal_(path, keep_bytes),
      events_(events),
      quiet_(quiet),
      terminal_(isatty(fileno(stderr)) != 0) {
  if (keep_bytes < 0) {
    journal_.append(
        "task,step,global_step,loss,penalty,batch_size,micro_batch,samples_per_second,"
        "step_tensor_peak_bytes,event\n");
  }
}

void MetricsLog::step_row(size_t task, int64_t step, int64_t global_step, double loss,
                          double penalty, int64_t batch, int64_t micro_batch,
                          double samples_per_second, int64_t peak_bytes) {
  std::ostringstream row;
  row << task << ',' << step << ',' << global_step << ',' << loss << ',' << penalty << ',' << batch
      << ',' << micro_batch << ',' << format_double(samples_per_second, 1) << ',' << peak_bytes
      << ",\n";
  journal_.append(row.str());
  events_.append(nlohmann::json{{"event", "progress"},
                                {"task", task},
                                {"step", step},
                                {"global_step", global_step},
                                {"loss", loss},
                                {"penalty", penalty},
                                {"batch_size", batch},
                                {"micro_batch", micro_batch},
                                {"samples_per_second", samples_per_second},
                                {"step_tensor_peak_bytes", peak_bytes}});
}

int64_t MetricsLog::event(size_t task, int64_t steps_done, int64_t batch, int64_t micro_batch,
                          const char* kind, const std::string& what) {
  const int64_t step = steps_done - task_first_global_ + 1;
  std::ostringstream row;
  row << task << ',' << step << ',' << steps_done + 1 << ",,," << batch << ',' << micro_batch
      << ",,,\"" << what << "\"\n";
  journal_.append(row.str());
  events_.append(nlohmann::json{{"event", "batch"},
                                {"kind", kind},
                                {"task", task},
                                {"step", step},
                                {"global_step", steps_done + 1},
                                {"batch_size", batch},
                                {"micro_batch", micro_batch},
                                {"what", what}});
  // On a terminal the line ends the progress bar being redrawn; in a pipe there is none.
  if (!quiet_) {
    std::fprintf(stderr, "%s[batch] task %zu step %lld: %s\n", terminal_ ? "\n" : "", task + 1,
                 static_cast<long long>(step), what.c_str());
  }
  return step;
}

}  // namespace clhost
