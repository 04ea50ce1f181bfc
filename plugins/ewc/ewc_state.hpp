// EWC penalty state and its sizing. Header-only so that `clhost memory-plan` sizes the state
// with the very code the plug-in allocates it with. No LibTorch: plain float/uint8 arrays.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

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
};

inline const char* layout_name(StateLayout layout) {
  switch (layout) {
    case StateLayout::kSeparate: return "separate (fp32, per task)";
    case StateLayout::kOnline: return "online (fp32)";
    case StateLayout::kMergedFp32: return "efficient (merged quadratic, fp32)";
    case StateLayout::kMergedInt8: return "efficient (merged quadratic, int8)";
    case StateLayout::kMergedInt8Fp16:
      return "efficient (merged quadratic, int8 Fisher, fp16 anchor)";
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

inline QuantBlockScale quantize_block(const float* fisher, const float* anchor, int64_t count,
                                      uint8_t* fisher_codes, uint8_t* anchor_codes) {
  QuantBlockScale scale;
  if (count <= 0) return scale;
  float high = 0.0F;
  for (int64_t i = 0; i < count; ++i) high = std::max(high, fisher[i]);
  if (high > 0.0F) {
    const float log_high = std::log(high);
    float log_low = log_high;
    for (int64_t i = 0; i < count; ++i) {
      if (fisher[i] > 0.0F) log_low = std::min(log_low, std::log(fisher[i]));
    }
    log_low = std::max(log_low, log_high - kLogRange);
    scale.log_low = log_low;
    scale.log_step = (log_high - log_low) / 254.0F;
    for (int64_t i = 0; i < count; ++i) {
      if (fisher[i] <= 0.0F || std::log(fisher[i]) < log_low - 0.5F * scale.log_step) {
        fisher_codes[i] = 0;
        continue;
      }
      const float position =
          scale.log_step > 0.0F ? (std::log(fisher[i]) - log_low) / scale.log_step : 0.0F;
      fisher_codes[i] = static_cast<uint8_t>(1 + std::clamp(std::lround(position), 0L, 254L));
    }
  } else {
    for (int64_t i = 0; i < count; ++i) fisher_codes[i] = 0;
  }
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

// fp16 anchors (round to nearest even; GCC's _Float16 on x86-64). Runs at consolidation only;
// the penalty decodes with ewc_penalty.hpp.
inline uint16_t to_half_bits(float value) {
  const auto half = static_cast<_Float16>(value);
  uint16_t bits = 0;
  __builtin_memcpy(&bits, &half, sizeof(bits));
  return bits;
}

}  // namespace clhost::ewc
