#include "clhost/metrics.hpp"

#include <algorithm>
#include <stdexcept>

namespace clhost {

ContinualMetrics compute_metrics(const AccuracyMatrix& accuracy,
                                 const std::vector<double>& random_init, bool higher_is_better) {
  const size_t tasks = accuracy.size();
  if (tasks == 0) throw std::invalid_argument("accuracy matrix is empty");
  for (const auto& row : accuracy) {
    if (row.size() != tasks) throw std::invalid_argument("accuracy matrix is not square");
  }
  if (random_init.size() != tasks) {
    throw std::invalid_argument("random-init accuracies must have one entry per task");
  }
  const auto& last = accuracy[tasks - 1];
  ContinualMetrics metrics;
  double sum = 0.0;
  for (double value : last) sum += value;
  metrics.average_accuracy = sum / static_cast<double>(tasks);
  if (tasks < 2) return metrics;

  // Every difference is taken on sign * R, where higher is better.
  const double sign = higher_is_better ? 1.0 : -1.0;
  const double earlier = static_cast<double>(tasks - 1);
  double forgetting = 0.0;
  double backward = 0.0;
  double forward = 0.0;
  for (size_t j = 0; j + 1 < tasks; ++j) {
    double best = sign * accuracy[j][j];
    for (size_t l = j; l + 1 < tasks; ++l) best = std::max(best, sign * accuracy[l][j]);
    forgetting += best - sign * last[j];
    backward += sign * (last[j] - accuracy[j][j]);
  }
  for (size_t j = 1; j < tasks; ++j) forward += sign * (accuracy[j - 1][j] - random_init[j]);
  metrics.forgetting = forgetting / earlier;
  metrics.backward_transfer = backward / earlier;
  metrics.forward_transfer = forward / earlier;
  return metrics;
}

}  // namespace clhost
