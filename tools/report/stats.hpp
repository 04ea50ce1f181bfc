// Statistics for `clhost compare`: means with Student-t intervals, and paired differences.
#pragma once

#include <cstddef>
#include <vector>

namespace clhost::tools {

struct Interval {
  double mean = 0;
  double low = 0;   // NaN when fewer than two values
  double high = 0;  // NaN when fewer than two values
  size_t count = 0;
};

// Two-sided 97.5% quantile of Student's t with `degrees` degrees of freedom (exact table to 30,
// then t ≈ 1.96 + 2.4/df, within 0.002 of the exact value).
double student_t_975(size_t degrees);

// Mean and 95% t-interval of the mean.
Interval mean_interval(const std::vector<double>& values);

// b[i] - a[i] for each pair (same seed in both arms): mean and 95% paired t-interval.
// `significant` is true when the interval excludes 0.
struct PairedDifference {
  Interval difference;
  bool significant = false;
};
PairedDifference paired_difference(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace clhost::tools
