// Times the EWC penalty kernels (plugins/ewc/ewc_penalty.cpp) on n parameters of synthetic state,
// beside the memory-traffic floor of the same access pattern: one pass that reads the parameters,
// the gradients and the state and writes the gradients, with no arithmetic beyond an add. Shared
// by bench_ewc (the MLP and the transformer's sizes) and bench_sequence (share of a step).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_timing.hpp"
#include "ewc_penalty.hpp"
#include "ewc_state.hpp"

namespace clhost::bench {

struct SyntheticPenaltyState {
  std::vector<float> value, grad, fisher, anchor;
  ewc::FisherCodeTables tables{};
  std::vector<uint8_t> fisher_codes, anchor_codes;
  std::vector<uint16_t> anchor_half;
  float table16[16] = {};
  std::vector<uint8_t> fisher_nibbles;
  std::vector<int8_t> anchor_q8;
  std::vector<uint16_t> anchor_group_scales;

  explicit SyntheticPenaltyState(int64_t n)
      : value(static_cast<size_t>(n)),
        grad(static_cast<size_t>(n)),
        fisher(static_cast<size_t>(n)),
        anchor(static_cast<size_t>(n)),
        fisher_codes(static_cast<size_t>(n)),
        anchor_codes(static_cast<size_t>(n)),
        anchor_half(static_cast<size_t>(n)),
        fisher_nibbles(static_cast<size_t>((n + 1) / 2)),
        anchor_q8(static_cast<size_t>(n)),
        anchor_group_scales(static_cast<size_t>((n + ewc::kAnchorGroup - 1) / ewc::kAnchorGroup)) {
    std::mt19937 random(1);
    std::uniform_real_distribution<float> uniform(-0.1F, 0.1F);
    ewc::fisher_code_tables(-14.0F, 0.04F, tables);
    for (size_t i = 0; i < value.size(); ++i) {
      value[i] = uniform(random);
      fisher[i] = uniform(random) + 0.1F;
      anchor[i] = uniform(random);
      fisher_codes[i] = static_cast<uint8_t>(random());
      anchor_codes[i] = static_cast<uint8_t>(random());
      anchor_half[i] = ewc::to_half_bits(anchor[i]);
      anchor_q8[i] = static_cast<int8_t>(random());
    }
    for (auto& byte : fisher_nibbles) byte = static_cast<uint8_t>(random());
    for (auto& scale : anchor_group_scales) scale = ewc::to_half_bits(1e-3F);
    ewc::QuantBlockScale scale;
    scale.log_low = -14.0F;
    scale.log_step = 0.9F;
    ewc::fisher4_table(scale, table16);
  }
};

// The floor: gradients += parameters while every state byte is loaded once (xor-folded so the
// loads are not optimised away). The state's width per parameter in two arrays, in half bytes.
template <int kFirstHalves, int kSecondHalves>
__attribute__((target("avx2"))) uint64_t traffic_floor(const float* value, float* grad,
                                                       const void* first, const void* second,
                                                       int64_t n) {
  const auto* first_bytes = static_cast<const uint8_t*>(first);
  const auto* second_bytes = static_cast<const uint8_t*>(second);
  __m256i folded = _mm256_setzero_si256();
  auto fold = [&](const uint8_t* bytes, int halves) __attribute__((target("avx2"))) {
    if (halves == 8) {
      folded =
          _mm256_xor_si256(folded, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
    } else if (halves == 4) {
      folded = _mm256_xor_si256(
          folded, _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes))));
    } else if (halves == 2) {
      folded = _mm256_xor_si256(
          folded, _mm256_castsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes))));
    } else {
      int32_t word = 0;
      std::memcpy(&word, bytes, sizeof(word));
      folded = _mm256_xor_si256(folded, _mm256_castsi128_si256(_mm_cvtsi32_si128(word)));
    }
  };
  for (int64_t i = 0; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(grad + i,
                     _mm256_add_ps(_mm256_loadu_ps(grad + i), _mm256_loadu_ps(value + i)));
    fold(first_bytes + i * kFirstHalves / 2, kFirstHalves);
    fold(second_bytes + i * kSecondHalves / 2, kSecondHalves);
  }
  uint64_t lanes[4];
  std::memcpy(lanes, &folded, sizeof(lanes));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

// Milliseconds per penalty + gradient pass for each layout's kernel (the dispatched set and the
// generic one), with the floor and the bytes each pass moves.
inline nlohmann::json time_penalty_kernels(int64_t n, int repetitions) {
  SyntheticPenaltyState s(n);
  const float lambda = 1.0F;
  volatile double sink = 0.0;
  volatile uint64_t floor_sink = 0;
  const ewc::PenaltyKernels& best = ewc::penalty_kernels();
  const ewc::PenaltyKernels& generic = ewc::generic_penalty_kernels();
  auto blocks = [&](auto&& run_block) {
    double sum = 0.0;
    for (int64_t begin = 0; begin < n; begin += ewc::kQuantBlock) {
      sum += run_block(begin, std::min(ewc::kQuantBlock, n - begin));
    }
    sink = sink + sum;
  };
  auto fp32 = [&](const ewc::PenaltyKernels& k) {
    sink =
        sink + k.fp32(s.value.data(), s.grad.data(), s.fisher.data(), s.anchor.data(), n, lambda);
  };
  auto int8_fp16 = [&](const ewc::PenaltyKernels& k) {
    blocks([&](int64_t begin, int64_t count) {
      return k.int8_fp16(s.value.data() + begin, s.grad.data() + begin, s.tables,
                         s.fisher_codes.data() + begin, s.anchor_half.data() + begin, count,
                         lambda);
    });
  };
  auto int8 = [&](const ewc::PenaltyKernels& k) {
    blocks([&](int64_t begin, int64_t count) {
      return k.int8(s.value.data() + begin, s.grad.data() + begin, s.tables,
                    s.fisher_codes.data() + begin, s.anchor_codes.data() + begin, -0.1F, 1e-3F,
                    count, lambda);
    });
  };
  auto int4_int8 = [&](const ewc::PenaltyKernels& k) {
    blocks([&](int64_t begin, int64_t count) {
      return k.int4_int8(s.value.data() + begin, s.grad.data() + begin, s.table16,
                         s.fisher_nibbles.data() + begin / 2, s.anchor_q8.data() + begin,
                         s.anchor_group_scales.data() + begin / ewc::kAnchorGroup, count, lambda);
    });
  };
  struct Row {
    const char* layout;
    double state_bytes;
    std::function<void(const ewc::PenaltyKernels&)> kernel;
    std::function<uint64_t()> floor;
  };
  const std::vector<Row> rows = {
      {"fp32 (separate per task, online, efficient fp32)", 8, fp32,
       [&] {
         return traffic_floor<8, 8>(s.value.data(), s.grad.data(), s.fisher.data(), s.anchor.data(),
                                    n);
       }},
      {"int8_fp16", 3, int8_fp16,
       [&] {
         return traffic_floor<2, 4>(s.value.data(), s.grad.data(), s.fisher_codes.data(),
                                    s.anchor_half.data(), n);
       }},
      {"int8", 2, int8,
       [&] {
         return traffic_floor<2, 2>(s.value.data(), s.grad.data(), s.fisher_codes.data(),
                                    s.anchor_codes.data(), n);
       }},
      {"int4_int8 (the default)", 1.5625, int4_int8, [&] {
         return traffic_floor<1, 2>(s.value.data(), s.grad.data(), s.fisher_nibbles.data(),
                                    s.anchor_q8.data(), n);
       }}};
  // Floor and kernels timed in turn within each repetition, so that the machine's drift hits
  // them alike; the ratios are medians of the per-repetition ratios.
  auto seconds = [](auto&& body) {
    const auto start = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  auto median = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  nlohmann::json out = nlohmann::json::array();
  for (const Row& row : rows) {
    std::vector<double> floor_s, best_s, generic_s, best_ratio, generic_ratio;
    for (int repetition = 0; repetition < repetitions; ++repetition) {
      floor_s.push_back(seconds([&] { floor_sink = floor_sink ^ row.floor(); }));
      best_s.push_back(seconds([&] { row.kernel(best); }));
      generic_s.push_back(seconds([&] { row.kernel(generic); }));
      best_ratio.push_back(best_s.back() / floor_s.back());
      generic_ratio.push_back(generic_s.back() / floor_s.back());
    }
    const double floor_median = median(floor_s);
    const auto bytes = static_cast<int64_t>(static_cast<double>(n) * (12.0 + row.state_bytes));
    out.push_back({{"layout", row.layout},
                   {"parameters", n},
                   {"bytes_moved_per_pass", bytes},
                   {"traffic_floor_ms", floor_median * 1e3},
                   {"floor_gb_per_second", static_cast<double>(bytes) / floor_median / 1e9},
                   {"kernel", best.name},
                   {"kernel_ms", median(best_s) * 1e3},
                   {"kernel_over_floor", median(best_ratio)},
                   {"generic_kernel_ms", median(generic_s) * 1e3},
                   {"generic_over_floor", median(generic_ratio)}});
  }
#if defined(__GNUC__) && !defined(__clang__)  // clang before 15 has no _Float16 on x86-64
  // What the int8_fp16 layout (the default until ewc 1.2.0) cost before the fused kernels:
  // _Float16 decoded by a library call per value into a scratch block, then the fp32 loop.
  std::vector<float> decoded_fisher(static_cast<size_t>(std::min(n, ewc::kQuantBlock)));
  std::vector<float> decoded_anchor(decoded_fisher.size());
  const double previous_s = median_seconds(repetitions, [&] {
    blocks([&](int64_t begin, int64_t count) {
      for (int64_t i = 0; i < count; ++i) {
        decoded_fisher[static_cast<size_t>(i)] = s.tables.value[s.fisher_codes[begin + i]];
        _Float16 half;
        std::memcpy(&half, &s.anchor_half[static_cast<size_t>(begin + i)], sizeof(half));
        decoded_anchor[static_cast<size_t>(i)] = static_cast<float>(half);
      }
      return generic.fp32(s.value.data() + begin, s.grad.data() + begin, decoded_fisher.data(),
                          decoded_anchor.data(), count, lambda);
    });
  });
  out[1]["before_fused_kernels_ms"] = previous_s * 1e3;
#endif
  return out;
}

}  // namespace clhost::bench
