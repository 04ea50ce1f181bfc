// Continual-learning metrics against matrices computed by hand.
#include <gtest/gtest.h>

#include "clhost/metrics.hpp"

namespace {

TEST(Metrics, HandComputedThreeTasks) {
  // Row i: after training task i.
  const clhost::AccuracyMatrix r = {{0.90, 0.10, 0.20},  //
                                    {0.70, 0.80, 0.30},  //
                                    {0.60, 0.75, 0.95}};
  const std::vector<double> b = {0.5, 0.2, 0.1};
  const auto m = clhost::compute_metrics(r, b);
  EXPECT_NEAR(m.average_accuracy, (0.60 + 0.75 + 0.95) / 3, 1e-12);
  // forgetting: task0 max(0.9,0.7)-0.6=0.3; task1 max(0.8)-0.75=0.05 -> 0.175
  EXPECT_NEAR(*m.forgetting, 0.175, 1e-12);
  // BWT: (0.6-0.9 + 0.75-0.8)/2 = -0.175
  EXPECT_NEAR(*m.backward_transfer, -0.175, 1e-12);
  // FWT: (R[0][1]-b1 + R[1][2]-b2)/2 = (0.1-0.2 + 0.3-0.1)/2 = 0.05
  EXPECT_NEAR(*m.forward_transfer, 0.05, 1e-12);
}

TEST(Metrics, ForgettingUsesTheBestEarlierAccuracyNotTheFirst) {
  const clhost::AccuracyMatrix r = {{0.5, 0.0, 0.0}, {0.9, 0.9, 0.0}, {0.4, 0.9, 0.9}};
  const auto m = clhost::compute_metrics(r, {0, 0, 0});
  EXPECT_NEAR(*m.forgetting, (0.9 - 0.4 + 0.0) / 2, 1e-12);
  EXPECT_NEAR(*m.backward_transfer, (0.4 - 0.5 + 0.0) / 2, 1e-12);
}

TEST(Metrics, SingleTaskHasOnlyAverageAccuracy) {
  const auto m = clhost::compute_metrics({{0.8}}, {0.1});
  EXPECT_DOUBLE_EQ(m.average_accuracy, 0.8);
  EXPECT_FALSE(m.forgetting.has_value());
  EXPECT_FALSE(m.forward_transfer.has_value());
}

TEST(Metrics, RejectsMalformedInput) {
  EXPECT_THROW(clhost::compute_metrics({}, {}), std::invalid_argument);
  EXPECT_THROW(clhost::compute_metrics({{1, 2}}, {0}), std::invalid_argument);
  EXPECT_THROW(clhost::compute_metrics({{1}}, {0, 1}), std::invalid_argument);
}

}  // namespace
