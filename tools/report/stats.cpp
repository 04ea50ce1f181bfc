#include "stats.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace clhost::tools {

double student_t_975(size_t degrees) {
  static const double kTable[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                  2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                  2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                  2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (degrees == 0) return std::numeric_limits<double>::quiet_NaN();
  if (degrees <= 30) return kTable[degrees - 1];
  return 1.96 + 2.4 / static_cast<double>(degrees);
}

Interval mean_interval(const std::vector<double>& values) {
  Interval out;
  out.count = values.size();
  if (values.empty()) {
    out.mean = out.low = out.high = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  double sum = 0;
  for (double value : values) sum += value;
  out.mean = sum / static_cast<double>(values.size());
  if (values.size() < 2) {
    out.low = out.high = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  double squares = 0;
  for (double value : values) squares += (value - out.mean) * (value - out.mean);
  const double n = static_cast<double>(values.size());
  const double half = student_t_975(values.size() - 1) * std::sqrt(squares / (n - 1.0) / n);
  out.low = out.mean - half;
  out.high = out.mean + half;
  return out;
}

PairedDifference paired_difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) {
    throw std::invalid_argument("paired difference: the arms have different numbers of runs");
  }
  std::vector<double> differences;
  for (size_t i = 0; i < a.size(); ++i) differences.push_back(b[i] - a[i]);
  PairedDifference out;
  out.difference = mean_interval(differences);
  out.significant = differences.size() >= 2 && (out.difference.low > 0 || out.difference.high < 0);
  return out;
}

}  // namespace clhost::tools
