// The EWC penalty kernels (plugins/ewc/ewc_penalty.cpp): every implementation this CPU runs
// against a double-precision reference, with and without gradients, at lengths with and without
// vector tails; the fp16 decoder against LibTorch's c10::Half for all 65,536 bit patterns.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "ewc_penalty.hpp"
#include "ewc_state.hpp"

namespace {

using clhost::ewc::PenaltyKernels;

TEST(HalfToFloat, MatchesFloat16ForEveryBitPattern) {
  for (uint32_t bits = 0; bits <= 0xffffU; ++bits) {
    const auto half_bits = static_cast<uint16_t>(bits);
    const auto expected = static_cast<float>(c10::Half(half_bits, c10::Half::from_bits()));
    const float decoded = clhost::ewc::half_to_float(half_bits);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(decoded)) << "bits " << bits;
      continue;
    }
    uint32_t expected_bits = 0;
    uint32_t decoded_bits = 0;
    std::memcpy(&expected_bits, &expected, sizeof(expected));
    std::memcpy(&decoded_bits, &decoded, sizeof(decoded));
    ASSERT_EQ(decoded_bits, expected_bits) << "bits " << bits;
  }
}

// The code tables agree with the state's own table (ewc_state.hpp), and their nibble factors
// give every code's value to 1e-5 (the table's own exponent is rounded to float: a few 1e-6;
// one code step is ~10%).
TEST(FisherCodeTables, MatchTheStateTableAndFactorByNibbles) {
  clhost::ewc::QuantBlockScale scale;
  scale.log_low = -17.3F;
  scale.log_step = 24.0F / 254.0F;
  float table[256];
  clhost::ewc::fisher_table(scale, table);
  clhost::ewc::FisherCodeTables tables{};
  clhost::ewc::fisher_code_tables(scale.log_low, scale.log_step, tables);
  for (int code = 0; code < 256; ++code) {
    ASSERT_EQ(tables.value[code], table[code]) << "code " << code;
    if (code == 0) continue;
    const float factored = tables.high[(code - 1) >> 4] * tables.low[(code - 1) & 15];
    ASSERT_NEAR(factored, table[code], 1e-5F * table[code]) << "code " << code;
  }
}

std::vector<const PenaltyKernels*> kernel_sets() {
  std::vector<const PenaltyKernels*> sets{&clhost::ewc::generic_penalty_kernels()};
  if (const PenaltyKernels* avx2 = clhost::ewc::avx2_penalty_kernels()) sets.push_back(avx2);
  return sets;
}

struct Case {
  std::vector<float> value, grad, fisher, anchor;
  clhost::ewc::FisherCodeTables tables{};
  std::vector<uint8_t> fisher_codes, anchor_codes;
  std::vector<uint16_t> anchor_half;
  float anchor_low = -0.3F;
  float anchor_step = 0.6F / 255.0F;
};

Case make_case(int64_t n, uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-0.5F, 0.5F);
  std::uniform_int_distribution<int> code(0, 255);
  Case c;
  clhost::ewc::fisher_code_tables(-12.0F, 0.05F, c.tables);
  for (int64_t i = 0; i < n; ++i) {
    c.value.push_back(uniform(random));
    c.grad.push_back(uniform(random));
    c.fisher_codes.push_back(static_cast<uint8_t>(code(random)));
    c.anchor_codes.push_back(static_cast<uint8_t>(code(random)));
    // fp16 anchors spread over the normal range and the subnormals.
    const float anchor = i % 7 == 0 ? uniform(random) * 1e-6F : uniform(random);
    c.anchor_half.push_back(clhost::ewc::to_half_bits(anchor));
    c.fisher.push_back(c.tables.value[c.fisher_codes.back()]);
    c.anchor.push_back(anchor);
  }
  return c;
}

// The reference: decoded values, double arithmetic.
double reference(const Case& c, const std::vector<float>& anchors, std::vector<double>& grad,
                 float lambda) {
  double sum = 0.0;
  grad.assign(c.grad.begin(), c.grad.end());
  for (size_t i = 0; i < c.value.size(); ++i) {
    const double difference = static_cast<double>(c.value[i]) - anchors[i];
    sum += c.fisher[i] * difference * difference;
    grad[i] += static_cast<double>(lambda) * c.fisher[i] * difference;
  }
  return sum;
}

// Relative to the terms' size: the gradient adds lambda*F*d to a given gradient, and the two can
// cancel; the nibble-factored Fisher is within 1e-5 of the table.
void expect_close(double sum, double expected_sum, const std::vector<float>& grad,
                  const std::vector<double>& expected_grad, const std::vector<float>& initial_grad,
                  const std::string& what) {
  EXPECT_NEAR(sum, expected_sum, 1e-5 * std::abs(expected_sum) + 1e-12) << what;
  for (size_t i = 0; i < grad.size(); ++i) {
    const double scale = std::abs(expected_grad[i]) + std::abs(initial_grad[i]);
    ASSERT_NEAR(grad[i], expected_grad[i], 1e-5 * scale + 1e-7) << what << " element " << i;
  }
}

TEST(PenaltyKernels, EveryLayoutMatchesTheReference) {
  const float lambda = 3.5F;
  for (const PenaltyKernels* kernels : kernel_sets()) {
    for (const int64_t n : {1, 7, 8, 9, 4095, 4097, 20011}) {
      const Case c = make_case(n, static_cast<uint32_t>(n));
      const std::string what = std::string(kernels->name) + " n=" + std::to_string(n);
      std::vector<double> expected_grad;

      std::vector<float> fp32_anchor(c.anchor);
      double expected = reference(c, fp32_anchor, expected_grad, lambda);
      std::vector<float> grad = c.grad;
      double sum =
          kernels->fp32(c.value.data(), grad.data(), c.fisher.data(), c.anchor.data(), n, lambda);
      expect_close(sum, expected, grad, expected_grad, c.grad, what + " fp32");
      EXPECT_DOUBLE_EQ(
          kernels->fp32(c.value.data(), nullptr, c.fisher.data(), c.anchor.data(), n, lambda), sum)
          << what << " fp32 without gradient";

      std::vector<float> half_anchor;
      for (const uint16_t bits : c.anchor_half) {
        half_anchor.push_back(clhost::ewc::half_to_float(bits));
      }
      expected = reference(c, half_anchor, expected_grad, lambda);
      grad = c.grad;
      sum = kernels->int8_fp16(c.value.data(), grad.data(), c.tables, c.fisher_codes.data(),
                               c.anchor_half.data(), n, lambda);
      expect_close(sum, expected, grad, expected_grad, c.grad, what + " int8_fp16");

      std::vector<float> code_anchor;
      for (const uint8_t code : c.anchor_codes) {
        code_anchor.push_back(c.anchor_low + static_cast<float>(code) * c.anchor_step);
      }
      expected = reference(c, code_anchor, expected_grad, lambda);
      grad = c.grad;
      sum = kernels->int8(c.value.data(), grad.data(), c.tables, c.fisher_codes.data(),
                          c.anchor_codes.data(), c.anchor_low, c.anchor_step, n, lambda);
      expect_close(sum, expected, grad, expected_grad, c.grad, what + " int8");
    }
  }
}

// int4_int8: 4-bit Fisher codes two per byte, int8 anchors with one fp16 scale per 32 elements.
TEST(PenaltyKernels, Int4Int8MatchesTheReference) {
  const float lambda = 2.0F;
  for (const PenaltyKernels* kernels : kernel_sets()) {
    for (const int64_t n : {1, 7, 8, 31, 33, 4095, 4097, 16384}) {
      const std::string what = std::string(kernels->name) + " n=" + std::to_string(n);
      std::mt19937 random(static_cast<uint32_t>(n));
      std::uniform_real_distribution<float> uniform(-0.5F, 0.5F);
      std::uniform_int_distribution<int> nibble(0, 15);
      std::uniform_int_distribution<int> code(-127, 127);
      clhost::ewc::QuantBlockScale scale;
      scale.log_low = -9.0F;
      scale.log_step = 0.6F;
      float table[16];
      clhost::ewc::fisher4_table(scale, table);
      Case c;
      std::vector<uint8_t> nibbles(static_cast<size_t>((n + 1) / 2), 0);
      std::vector<int8_t> codes;
      std::vector<uint16_t> scales;
      for (int64_t g = 0; g * 32 < n; ++g) {
        scales.push_back(clhost::ewc::to_half_bits(std::fabs(uniform(random)) / 127.0F));
      }
      std::vector<float> anchors;
      for (int64_t i = 0; i < n; ++i) {
        c.value.push_back(uniform(random));
        c.grad.push_back(uniform(random));
        const int fisher_code = nibble(random);
        nibbles[static_cast<size_t>(i / 2)] |= static_cast<uint8_t>(fisher_code << ((i & 1) * 4));
        EXPECT_EQ(clhost::ewc::fisher4_code(nibbles.data(), i), fisher_code);
        c.fisher.push_back(table[fisher_code]);
        codes.push_back(static_cast<int8_t>(code(random)));
        anchors.push_back(static_cast<float>(codes.back()) *
                          clhost::ewc::half_to_float(scales[static_cast<size_t>(i / 32)]));
      }
      std::vector<double> expected_grad;
      const double expected = reference(c, anchors, expected_grad, lambda);
      std::vector<float> grad = c.grad;
      const double sum = kernels->int4_int8(c.value.data(), grad.data(), table, nibbles.data(),
                                            codes.data(), scales.data(), n, lambda);
      expect_close(sum, expected, grad, expected_grad, c.grad, what + " int4_int8");
      EXPECT_DOUBLE_EQ(kernels->int4_int8(c.value.data(), nullptr, table, nibbles.data(),
                                          codes.data(), scales.data(), n, lambda),
                       sum)
          << what << " without gradient";
    }
  }
}

// The quantisers' error bounds: a 4-bit Fisher code is within half a log step (at most
// kLogRange4 / 28 nats) of its value or zero below the range; an anchor within half its group's
// step (largest magnitude / 254, as fp16 rounds it).
TEST(StateQuantisation, Int4FisherAndGroupedAnchorsStayWithinHalfAStep) {
  std::mt19937 random(5);
  std::lognormal_distribution<float> importance(-6.0F, 2.5F);
  std::normal_distribution<float> weight(0.0F, 0.05F);
  const int64_t n = 16384;
  std::vector<float> fisher(n);
  std::vector<float> anchor(n);
  for (int64_t i = 0; i < n; ++i) {
    fisher[static_cast<size_t>(i)] = i % 97 == 0 ? 0.0F : importance(random);
    anchor[static_cast<size_t>(i)] = weight(random) * (i / 32 % 5 == 0 ? 20.0F : 1.0F);
  }
  std::vector<uint8_t> nibbles((n + 1) / 2);
  clhost::ewc::QuantBlockScale scale;
  clhost::ewc::quantize_fisher4(fisher.data(), n, nibbles.data(), scale);
  float table[16];
  clhost::ewc::fisher4_table(scale, table);
  const float largest = *std::max_element(fisher.begin(), fisher.end());
  EXPECT_NEAR(std::log(table[15]), std::log(largest), 1e-4);
  for (int64_t i = 0; i < n; ++i) {
    const float value = fisher[static_cast<size_t>(i)];
    const float decoded = table[clhost::ewc::fisher4_code(nibbles.data(), i)];
    if (value <= 0.0F || std::log(value) < scale.log_low - 0.5F * scale.log_step) {
      ASSERT_EQ(decoded, 0.0F) << i;
      continue;
    }
    ASSERT_LE(std::fabs(std::log(decoded) - std::log(value)), 0.5F * scale.log_step + 1e-4F) << i;
  }
  EXPECT_LE(scale.log_step, clhost::ewc::kLogRange4 / 14.0F + 1e-6F);
  std::vector<int8_t> codes(n);
  std::vector<uint16_t> scales(n / 32);
  clhost::ewc::quantize_anchor_groups(anchor.data(), n, codes.data(), scales.data());
  for (int64_t i = 0; i < n; ++i) {
    const float step = clhost::ewc::half_to_float(scales[static_cast<size_t>(i / 32)]);
    const float decoded = static_cast<float>(codes[static_cast<size_t>(i)]) * step;
    ASSERT_LE(std::fabs(decoded - anchor[static_cast<size_t>(i)]), 0.5F * step * 1.01F) << i;
  }
}

TEST(PenaltyKernels, TheFastestSetThisCpuRunsIsChosen) {
  const PenaltyKernels* avx2 = clhost::ewc::avx2_penalty_kernels();
  const PenaltyKernels& chosen = clhost::ewc::penalty_kernels();
  if (avx2 != nullptr) {
    EXPECT_EQ(&chosen, avx2);
  } else {
    EXPECT_EQ(&chosen, &clhost::ewc::generic_penalty_kernels());
  }
}

}  // namespace
