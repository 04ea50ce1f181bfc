// Continual-learning metrics from the evaluation matrix. R[i][j] is the evaluation (accuracy, or
// bits per byte for text) of task j's test set after training task i (0-based). Definitions follow
// Lopez-Paz & Ranzato (GEM, 2017) and Chaudhry et al. (2018) for forgetting, written for a metric
// where higher is better; for a lower-is-better metric each difference takes the other sign, so
// that forgetting > 0 always means worse and transfer > 0 always means better. docs/outputs.md
// ("Metrics") writes them out.
#pragma once

#include <optional>
#include <vector>

namespace clhost {

using AccuracyMatrix = std::vector<std::vector<double>>;

// What the matrix holds and which way is better.
struct EvaluationMetric {
  const char* name;   // results.json key stem: "accuracy", "bits_per_byte"
  const char* label;  // for people: "accuracy", "bits per byte"
  bool higher_is_better;
};
inline constexpr EvaluationMetric kAccuracyMetric{"accuracy", "accuracy", true};
inline constexpr EvaluationMetric kBitsPerByteMetric{"bits_per_byte", "bits per byte", false};

struct ContinualMetrics {
  double average_accuracy = 0.0;            // mean_j R[T-1][j] (whatever the metric)
  std::optional<double> forgetting;         // mean_{j<T-1} max_{l<T-1} R[l][j] - R[T-1][j]
  std::optional<double> backward_transfer;  // mean_{j<T-1} R[T-1][j] - R[j][j]
  std::optional<double> forward_transfer;   // mean_{j>0} R[j-1][j] - b[j]
};

// `random_init` is b[j], the evaluation of the untrained model on task j. Throws
// std::invalid_argument when the matrix is not T x T or b has the wrong length. Metrics that need
// two tasks or more are empty for a single task. With higher_is_better = false (bits per byte)
// forgetting is mean R[T-1][j] - min_l R[l][j], and both transfers are negated.
ContinualMetrics compute_metrics(const AccuracyMatrix& accuracy,
                                 const std::vector<double>& random_init,
                                 bool higher_is_better = true);

}  // namespace clhost
