// Timing helper shared by the benchmarks: the median of repeated wall-clock measurements.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace clhost::bench {

template <class Body>
double median_seconds(int repetitions, Body&& body) {
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace clhost::bench
