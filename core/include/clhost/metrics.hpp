// Continual-learning metrics from the accuracy matrix. R[i][j] is the accuracy on task j's test
// set after training task i (0-based). Definitions follow Lopez-Paz & Ranzato (GEM, 2017) and
// Chaudhry et al. (2018) for forgetting; docs/metrics.md writes them out.
#pragma once

#include <optional>
#include <vector>

namespace clhost {

using AccuracyMatrix = std::vector<std::vector<double>>;

struct ContinualMetrics {
  double average_accuracy = 0.0;            // mean_j R[T-1][j]
  std::optional<double> forgetting;         // mean_{j<T-1} max_{l<T-1} R[l][j] - R[T-1][j]
  std::optional<double> backward_transfer;  // mean_{j<T-1} R[T-1][j] - R[j][j]
  std::optional<double> forward_transfer;   // mean_{j>0} R[j-1][j] - b[j]
};

// `random_init` is b[j], the accuracy of the untrained model on task j. Throws
// std::invalid_argument when the matrix is not T x T or b has the wrong length. Metrics that need
// two tasks or more are empty for a single task.
ContinualMetrics compute_metrics(const AccuracyMatrix& accuracy,
                                 const std::vector<double>& random_init);

}  // namespace clhost
