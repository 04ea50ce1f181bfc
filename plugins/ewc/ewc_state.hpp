// EWC penalty state and its sizing. Header-only so that `clhost memory-plan` sizes the state
// with the very code the plug-in allocates it with. No LibTorch: plain float/uint8 arrays.
#pragma once

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ewc_penalty.hpp"

namespace clhost::ewc {

// Elements per quantisation block of the compact state; each block keeps 4 floats of scale.
inline constexpr int64_t kQuantBlock = 16384;
inline constexpr int64_t kQuantBlockOverheadBytes = 4 * sizeof(float);

enum class StateLayout {
  kSeparate,        // one fp32 Fisher and one fp32 anchor per task: 8*T bytes/param
  kOnline,          // F <- gamma*F + F_new, anchor = latest parameters: 8 bytes/param
  kMergedFp32,      // one merged quadratic, fp32: 8 bytes/param for any number of tasks
  kMergedInt8,      // the same, 8-bit log-scale Fisher + 8-bit anchor: ~2 bytes/param
  kMergedInt8Fp16,  // the same, 8-bit log-scale Fisher + fp16 anchor: ~3 bytes/param
  kMergedInt4Int8,  // the same, 4-bit log-scale Fisher + 8-bit anchor per 32: ~1.56 bytes/param
};

// int4_int8: anchors in groups of 32 sharing one fp16 scale (as ggml's Q8_0), Fisher codes two
// per byte (element i in byte i/2, the low nibble when i is even).
inline constexpr int64_t kAnchorGroup = 32;
// 4-bit Fisher: codes 1..15 log-linear over at most this many nats below the block's largest
// value (a factor of at most e^(16/28) = 1.77 between a value and its code's).
inline constexpr float kLogRange4 = 16.0F;

inline const char* layout_name(StateLayout layout) {
  switch (layout) {
    case StateLayout::kSeparate: return "separate (fp32, per task)";
    case StateLayout::kOnline: return "online (fp32)";
    case StateLayout::kMergedFp32: return "efficient (merged quadratic, fp32)";
    case StateLayout::kMergedInt8: return "efficient (merged quadratic, int8)";
    case StateLayout::kMergedInt8Fp16:
      return "efficient (merged quadratic, int8 Fisher, fp16 anchor)";
    case StateLayout::kMergedInt4Int8:
      return "efficient (merged quadratic, 4-bit Fisher, 8-bit anchor per 32)";
  }
  return "?";
}

// Bytes of EWC state for one parameter tensor of `numel` elements after `tasks` tasks.
inline int64_t state_bytes_for_tensor(int64_t numel, int64_t tasks, StateLayout layout) {
  const int64_t fp32_pair = numel * 2 * static_cast<int64_t>(sizeof(float));
  switch (layout) {
    case StateLayout::kSeparate: return fp32_pair * tasks;
    case StateLayout::kOnline:
    case StateLayout::kMergedFp32: return tasks > 0 ? fp32_pair : 0;
    case StateLayout::kMergedInt4Int8: {
      if (tasks == 0) return 0;
      const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
      const int64_t groups = (numel + kAnchorGroup - 1) / kAnchorGroup;
      return (numel + 1) / 2 + numel + groups * 2 + blocks * kQuantBlockOverheadBytes;
    }
    case StateLayout::kMergedInt8:
    case StateLayout::kMergedInt8Fp16: {
      if (tasks == 0) return 0;
      const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
      const int64_t per_element = layout == StateLayout::kMergedInt8 ? 2 : 3;
      return numel * per_element + blocks * kQuantBlockOverheadBytes;
    }
  }
  return 0;
}

// For a model given only by its total parameter count (memory-plan): one tensor.
inline int64_t state_bytes(int64_t parameters, int64_t tasks, StateLayout layout) {
  return state_bytes_for_tensor(parameters, tasks, layout);
}

// 8-bit block-wise quantisation. Fisher: code 0 is an exact zero, codes 1..255 are log-linear
// between the block's smallest kept and largest value (at most kLogRange apart; smaller values
// become 0 — they are < e^-24 of the block's largest and contribute nothing measurable). Anchor:
// codes 0..255 linear between the block's min and max.
struct QuantBlockScale {
  float log_low = 0.0F;
  float log_step = 0.0F;
  float anchor_low = 0.0F;
  float anchor_step = 0.0F;
};
static_assert(sizeof(QuantBlockScale) == kQuantBlockOverheadBytes);

inline constexpr float kLogRange = 24.0F;

// A block's log-linear Fisher codes: `steps` steps from log_low up to the log of its largest
// value, at most `range` nats below it; sets the scale's log_low and log_step. False (scale
// untouched) when no value is positive.
inline bool log_code_range(const float* fisher, int64_t count, float range, int steps,
                           QuantBlockScale& scale) {
  float high = 0.0F;
  for (int64_t i = 0; i < count; ++i) high = std::max(high, fisher[i]);
  if (!(high > 0.0F)) return false;
  const float log_high = std::log(high);
  float log_low = log_high;
  for (int64_t i = 0; i < count; ++i) {
    if (fisher[i] > 0.0F) log_low = std::min(log_low, std::log(fisher[i]));
  }
  log_low = std::max(log_low, log_high - range);
  scale.log_low = log_low;
  scale.log_step = (log_high - log_low) / static_cast<float>(steps);
  return true;
}

// Code 0 for zero and values below the range, else 1 + the nearest of the `steps` steps.
inline uint8_t log_code(float value, const QuantBlockScale& scale, int steps) {
  if (value <= 0.0F || std::log(value) < scale.log_low - 0.5F * scale.log_step) return 0;
  const float position =
      scale.log_step > 0.0F ? (std::log(value) - scale.log_low) / scale.log_step : 0.0F;
  return static_cast<uint8_t>(1 + std::clamp(std::lround(position), 0L, static_cast<long>(steps)));
}

inline QuantBlockScale quantize_block(const float* fisher, const float* anchor, int64_t count,
                                      uint8_t* fisher_codes, uint8_t* anchor_codes) {
  QuantBlockScale scale;
  if (count <= 0) return scale;
  const bool any = log_code_range(fisher, count, kLogRange, 254, scale);
  for (int64_t i = 0; i < count; ++i) fisher_codes[i] = any ? log_code(fisher[i], scale, 254) : 0;
  float low = anchor[0];
  float top = anchor[0];
  for (int64_t i = 0; i < count; ++i) {
    low = std::min(low, anchor[i]);
    top = std::max(top, anchor[i]);
  }
  scale.anchor_low = low;
  scale.anchor_step = (top - low) / 255.0F;
  for (int64_t i = 0; i < count; ++i) {
    const float position = scale.anchor_step > 0.0F ? (anchor[i] - low) / scale.anchor_step : 0.0F;
    anchor_codes[i] = static_cast<uint8_t>(std::clamp(std::lround(position), 0L, 255L));
  }
  return scale;
}

// The 256 Fisher values a block's codes stand for.
inline void fisher_table(const QuantBlockScale& scale, float* table) {
  table[0] = 0.0F;
  for (int code = 1; code < 256; ++code) {
    table[code] = std::exp(scale.log_low + static_cast<float>(code - 1) * scale.log_step);
  }
}

inline float anchor_value(const QuantBlockScale& scale, uint8_t code) {
  return scale.anchor_low + static_cast<float>(code) * scale.anchor_step;
}

// 4-bit Fisher codes of a block into `nibbles` ((count + 1) / 2 bytes); sets the scale's log_low
// and log_step. Code 0 is an exact zero (and values more than kLogRange4 below the largest).
inline void quantize_fisher4(const float* fisher, int64_t count, uint8_t* nibbles,
                             QuantBlockScale& scale) {
  for (int64_t i = 0; i < (count + 1) / 2; ++i) nibbles[i] = 0;
  scale.log_low = 0.0F;
  scale.log_step = 0.0F;
  if (!log_code_range(fisher, count, kLogRange4, 14, scale)) return;
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t code = log_code(fisher[i], scale, 14);
    nibbles[i / 2] = static_cast<uint8_t>(nibbles[i / 2] | (code << ((i & 1) * 4)));
  }
}

// The 16 Fisher values a block's 4-bit codes stand for (code 0: zero).
inline void fisher4_table(const QuantBlockScale& scale, float* table) {
  table[0] = 0.0F;
  for (int code = 1; code < 16; ++code) {
    table[code] = std::exp(scale.log_low + static_cast<float>(code - 1) * scale.log_step);
  }
}

inline uint8_t fisher4_code(const uint8_t* nibbles, int64_t i) {
  return static_cast<uint8_t>((nibbles[i / 2] >> ((i & 1) * 4)) & 0x0F);
}

// fp16 anchors (round to nearest even; c10::Half, as clang before 15 has no _Float16 on
// x86-64). Runs at consolidation only; the penalty decodes with ewc_penalty.hpp.
inline uint16_t to_half_bits(float value) {
  return c10::Half(value).x;
}

// Anchors in groups of kAnchorGroup: each group's fp16 scale is its largest magnitude / 127 and
// each code round(anchor / scale) in [-127, 127], computed with the scale as stored.
inline void quantize_anchor_groups(const float* anchor, int64_t count, int8_t* codes,
                                   uint16_t* scales) {
  for (int64_t group = 0; group * kAnchorGroup < count; ++group) {
    const int64_t begin = group * kAnchorGroup;
    const int64_t end = std::min(count, begin + kAnchorGroup);
    float largest = 0.0F;
    for (int64_t i = begin; i < end; ++i) largest = std::max(largest, std::fabs(anchor[i]));
    scales[group] = to_half_bits(largest / 127.0F);
    const float scale = half_to_float(scales[group]);
    for (int64_t i = begin; i < end; ++i) {
      const long code = scale > 0.0F ? std::lround(anchor[i] / scale) : 0L;
      codes[i] = static_cast<int8_t>(std::clamp(code, -127L, 127L));
    }
  }
}

}  // namespace clhost::ewc
