// The EWC penalty's hot loops, one per state layout, each fused with its decoding: every
// optimizer step reads the state once and writes the gradients once, nothing else.
//
// Each kernel returns sum_i F_i (v_i - a_i)^2 over its n elements and, when grad is not null,
// adds lambda * F_i (v_i - a_i) to grad_i. Two implementations are built: a generic one for plain
// x86-64 (SSE2) and one for CPUs with AVX2, FMA and F16C, chosen once at run time from the CPU's
// features, because Debian builds for plain x86-64 where fp16 conversion runs in software.
#pragma once

#include <cstdint>

namespace clhost::ewc {

// What a quantisation block's 8-bit Fisher codes stand for: code c >= 1 is
// exp(log_low + (c - 1) * log_step), code 0 an exact zero. `value` is that table; `high` and
// `low` factor it by the code's nibbles, value[c] = high[(c-1) >> 4] * low[(c-1) & 15] (to
// 1e-5), which vector code looks up with two in-register permutes instead of a gather.
struct FisherCodeTables {
  float value[256];
  float high[16];
  float low[16];
};
void fisher_code_tables(float log_low, float log_step, FisherCodeTables& out);
// Only `high` and `low` (32 exponentials instead of 288): enough for kernels that decode by
// nibbles. Built per quantisation block in every step, so the difference counts.
void fisher_nibble_tables(float log_low, float log_step, FisherCodeTables& out);

struct PenaltyKernels {
  const char* name;
  bool reads_value_table;  // false: fisher_nibble_tables is enough for the quantised kernels
  // fp32 Fisher and anchor (separate, online, merged fp32).
  double (*fp32)(const float* value, float* grad, const float* fisher, const float* anchor,
                 int64_t n, float lambda);
  // 8-bit Fisher codes through the block's tables, fp16 anchor bits.
  double (*int8_fp16)(const float* value, float* grad, const FisherCodeTables& fisher_tables,
                      const uint8_t* fisher_codes, const uint16_t* anchor_half, int64_t n,
                      float lambda);
  // 8-bit Fisher codes, 8-bit anchor codes linear between anchor_low and 255 steps above it.
  double (*int8)(const float* value, float* grad, const FisherCodeTables& fisher_tables,
                 const uint8_t* fisher_codes, const uint8_t* anchor_codes, float anchor_low,
                 float anchor_step, int64_t n, float lambda);
  // 4-bit Fisher codes, two per byte (element i in byte i/2, low nibble when i is even), through
  // the block's 16-value table (table16[0] = 0); anchors anchor_codes[i] * the fp16 scale of
  // their group of 32. The range starts at a multiple of 32 elements.
  double (*int4_int8)(const float* value, float* grad, const float* table16,
                      const uint8_t* fisher_nibbles, const int8_t* anchor_codes,
                      const uint16_t* anchor_scales, int64_t n, float lambda);
};

const PenaltyKernels& generic_penalty_kernels();
// Null when this CPU lacks AVX2, FMA or F16C.
const PenaltyKernels* avx2_penalty_kernels();
// The fastest set this CPU runs (decided once).
const PenaltyKernels& penalty_kernels();

// Exact fp16 -> fp32 without _Float16 (which plain x86-64 converts by a library call per value):
// integer operations only, so the compiler vectorises it.
inline float half_to_float(uint16_t half) {
  constexpr uint32_t kExponentMask = 0x7c00U << 13;
  constexpr uint32_t kRebias = (127U - 15U) << 23;
  constexpr uint32_t kMagicBits = 113U << 23;  // 2^-14: renormalises zero and the subnormals
  const uint32_t shifted = (half & 0x7fffU) << 13;
  const uint32_t exponent = shifted & kExponentMask;
  // Inf and NaN keep an all-ones exponent; selects, not branches, so that loops vectorise.
  const uint32_t normal_bits =
      shifted + kRebias + (exponent == kExponentMask ? (128U - 16U) << 23 : 0U);
  const uint32_t subnormal_source = shifted + kRebias + (1U << 23);
  float normal = 0.0F;
  float subnormal = 0.0F;
  float magic = 0.0F;
  __builtin_memcpy(&normal, &normal_bits, sizeof(normal));
  __builtin_memcpy(&subnormal, &subnormal_source, sizeof(subnormal));
  __builtin_memcpy(&magic, &kMagicBits, sizeof(magic));
  subnormal -= magic;
  const float magnitude = exponent == 0 ? subnormal : normal;
  uint32_t bits = 0;
  __builtin_memcpy(&bits, &magnitude, sizeof(bits));
  bits |= static_cast<uint32_t>(half & 0x8000U) << 16;
  float value = 0.0F;
  __builtin_memcpy(&value, &bits, sizeof(value));
  return value;
}

}  // namespace clhost::ewc
