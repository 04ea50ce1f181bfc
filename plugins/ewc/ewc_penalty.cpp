#include "ewc_penalty.hpp"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace clhost::ewc {
namespace {

// Float partial sums over stretches keep the loops vectorisable; the stretches are added in
// double so that long tensors do not lose precision.
constexpr int64_t kStretch = 4096;
// Generic kernels decode this many elements into stack buffers, then run the fp32 loop on them.
constexpr int64_t kDecodeChunk = 512;

template <bool kWithGrad>
float quadratic_stretch(const float* value, float* grad, const float* fisher, const float* anchor,
                        int64_t n, float lambda) {
  float partial = 0.0F;
  for (int64_t i = 0; i < n; ++i) {
    const float difference = value[i] - anchor[i];
    const float weighted = fisher[i] * difference;
    partial += weighted * difference;
    if constexpr (kWithGrad) grad[i] += lambda * weighted;
  }
  return partial;
}

float quadratic_stretch(const float* value, float* grad, const float* fisher, const float* anchor,
                        int64_t n, float lambda) {
  return grad != nullptr ? quadratic_stretch<true>(value, grad, fisher, anchor, n, lambda)
                         : quadratic_stretch<false>(value, grad, fisher, anchor, n, lambda);
}

double generic_fp32(const float* value, float* grad, const float* fisher, const float* anchor,
                    int64_t n, float lambda) {
  double sum = 0.0;
  for (int64_t begin = 0; begin < n; begin += kStretch) {
    const int64_t count = std::min(kStretch, n - begin);
    sum += quadratic_stretch(value + begin, grad != nullptr ? grad + begin : nullptr,
                             fisher + begin, anchor + begin, count, lambda);
  }
  return sum;
}

// Decodes chunk by chunk with `decode_anchor(index)`, then the fp32 loop.
template <typename DecodeAnchor>
double generic_quantized(const float* value, float* grad, const float* table,
                         const uint8_t* fisher_codes, int64_t n, float lambda,
                         DecodeAnchor decode_anchor) {
  float fisher[kDecodeChunk];
  float anchor[kDecodeChunk];
  double sum = 0.0;
  for (int64_t begin = 0; begin < n; begin += kDecodeChunk) {
    const int64_t count = std::min(kDecodeChunk, n - begin);
    for (int64_t i = 0; i < count; ++i) fisher[i] = table[fisher_codes[begin + i]];
    for (int64_t i = 0; i < count; ++i) anchor[i] = decode_anchor(begin + i);
    sum += quadratic_stretch(value + begin, grad != nullptr ? grad + begin : nullptr, fisher,
                             anchor, count, lambda);
  }
  return sum;
}

double generic_int8_fp16(const float* value, float* grad, const FisherCodeTables& tables,
                         const uint8_t* fisher_codes, const uint16_t* anchor_half, int64_t n,
                         float lambda) {
  return generic_quantized(value, grad, tables.value, fisher_codes, n, lambda,
                           [anchor_half](int64_t i) { return half_to_float(anchor_half[i]); });
}

double generic_int8(const float* value, float* grad, const FisherCodeTables& tables,
                    const uint8_t* fisher_codes, const uint8_t* anchor_codes, float anchor_low,
                    float anchor_step, int64_t n, float lambda) {
  return generic_quantized(value, grad, tables.value, fisher_codes, n, lambda, [&](int64_t i) {
    return anchor_low + static_cast<float>(anchor_codes[i]) * anchor_step;
  });
}

inline float fisher4_at(const float* table16, const uint8_t* nibbles, int64_t i) {
  return table16[(nibbles[i / 2] >> ((i & 1) * 4)) & 0x0F];
}

inline float anchor_at(const int8_t* codes, const uint16_t* scales, int64_t i) {
  return static_cast<float>(codes[i]) * half_to_float(scales[i / 32]);
}

// Decodes a chunk (a multiple of 32 elements from a group start, or the range's tail) group by
// group: one fp16 scale per 32 anchors, two Fisher codes per byte.
double generic_int4_int8(const float* value, float* grad, const float* table16,
                         const uint8_t* fisher_nibbles, const int8_t* anchor_codes,
                         const uint16_t* anchor_scales, int64_t n, float lambda) {
  static_assert(kDecodeChunk % 32 == 0, "chunks start at anchor group boundaries");
  float fisher[kDecodeChunk];
  float anchor[kDecodeChunk];
  double sum = 0.0;
  for (int64_t begin = 0; begin < n; begin += kDecodeChunk) {
    const int64_t count = std::min(kDecodeChunk, n - begin);
    for (int64_t i = 0; i + 1 < count; i += 2) {
      const uint8_t pair = fisher_nibbles[(begin + i) / 2];
      fisher[i] = table16[pair & 0x0F];
      fisher[i + 1] = table16[pair >> 4];
    }
    if (count % 2 != 0) fisher[count - 1] = fisher4_at(table16, fisher_nibbles, begin + count - 1);
    for (int64_t group = 0; group * 32 < count; ++group) {
      const float scale = half_to_float(anchor_scales[(begin / 32) + group]);
      const int64_t end = std::min(count, group * 32 + 32);
      for (int64_t i = group * 32; i < end; ++i) {
        anchor[i] = static_cast<float>(anchor_codes[begin + i]) * scale;
      }
    }
    sum += quadratic_stretch(value + begin, grad != nullptr ? grad + begin : nullptr, fisher,
                             anchor, count, lambda);
  }
  return sum;
}

#define CLHOST_AVX2 __attribute__((target("avx2,fma,f16c")))

CLHOST_AVX2 double horizontal_sum(__m256 lanes) {
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  const __m128 single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
  return static_cast<double>(_mm_cvtss_f32(single));
}

// The shared AVX2 loop; `load(i, fisher, anchor)` decodes eight elements starting at i, `scalar`
// decodes one (the tail).
template <typename Load8, typename Load1>
CLHOST_AVX2 double avx2_quadratic(const float* value, float* grad, int64_t n, float lambda,
                                  Load8 load, Load1 scalar) {
  const __m256 lambdas = _mm256_set1_ps(lambda);
  double sum = 0.0;
  for (int64_t begin = 0; begin < n; begin += kStretch) {
    const int64_t end = std::min(n, begin + kStretch);
    __m256 partial = _mm256_setzero_ps();
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      __m256 fisher;
      __m256 anchor;
      load(i, fisher, anchor);
      const __m256 difference = _mm256_sub_ps(_mm256_loadu_ps(value + i), anchor);
      const __m256 weighted = _mm256_mul_ps(fisher, difference);
      partial = _mm256_fmadd_ps(weighted, difference, partial);
      if (grad != nullptr) {
        _mm256_storeu_ps(grad + i, _mm256_fmadd_ps(lambdas, weighted, _mm256_loadu_ps(grad + i)));
      }
    }
    float tail = 0.0F;
    for (; i < end; ++i) {
      float fisher = 0.0F;
      float anchor = 0.0F;
      scalar(i, fisher, anchor);
      const float weighted = fisher * (value[i] - anchor);
      tail += weighted * (value[i] - anchor);
      if (grad != nullptr) grad[i] += lambda * weighted;
    }
    sum += horizontal_sum(partial) + static_cast<double>(tail);
  }
  return sum;
}

CLHOST_AVX2 double avx2_fp32(const float* value, float* grad, const float* fisher,
                             const float* anchor, int64_t n, float lambda) {
  return avx2_quadratic(
      value, grad, n, lambda,
      [=](int64_t i, __m256& f, __m256& a) CLHOST_AVX2 {
        f = _mm256_loadu_ps(fisher + i);
        a = _mm256_loadu_ps(anchor + i);
      },
      [=](int64_t i, float& f, float& a) {
        f = fisher[i];
        a = anchor[i];
      });
}

// Sixteen-entry lookup: two in-register permutes (each uses the index's low 3 bits) and a blend
// on bit 3, moved into the sign bit that blendv reads.
CLHOST_AVX2 __m256 lookup16(__m256 first, __m256 second, __m256i index) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(first, index),
                          _mm256_permutevar8x32_ps(second, index),
                          _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

// One code the way decode8 does it (the vector loop's tail).
inline float nibble_value(const FisherCodeTables& tables, uint8_t code) {
  if (code == 0) return 0.0F;
  const int step = code - 1;
  return tables.high[step >> 4] * tables.low[step & 15];
}

// Eight Fisher codes -> values, as high[(c-1) >> 4] * low[(c-1) & 15], code 0 -> 0.
struct FisherDecoder {
  __m256 high_first, high_second, low_first, low_second;

  CLHOST_AVX2 explicit FisherDecoder(const FisherCodeTables& tables)
      : high_first(_mm256_loadu_ps(tables.high)),
        high_second(_mm256_loadu_ps(tables.high + 8)),
        low_first(_mm256_loadu_ps(tables.low)),
        low_second(_mm256_loadu_ps(tables.low + 8)) {}

  CLHOST_AVX2 __m256 decode8(const uint8_t* codes) const {
    const __m256i code =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
    const __m256i step = _mm256_sub_epi32(code, _mm256_set1_epi32(1));
    const __m256 value =
        _mm256_mul_ps(lookup16(high_first, high_second, _mm256_srli_epi32(step, 4)),
                      lookup16(low_first, low_second, step));
    const __m256 kept = _mm256_castsi256_ps(_mm256_cmpgt_epi32(code, _mm256_setzero_si256()));
    return _mm256_and_ps(value, kept);
  }
};

CLHOST_AVX2 double avx2_int8_fp16(const float* value, float* grad, const FisherCodeTables& tables,
                                  const uint8_t* fisher_codes, const uint16_t* anchor_half,
                                  int64_t n, float lambda) {
  const FisherDecoder decoder(tables);
  return avx2_quadratic(
      value, grad, n, lambda,
      [&](int64_t i, __m256& f, __m256& a) CLHOST_AVX2 {
        f = decoder.decode8(fisher_codes + i);
        a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(anchor_half + i)));
      },
      [&](int64_t i, float& f, float& a) {
        f = nibble_value(tables, fisher_codes[i]);
        a = half_to_float(anchor_half[i]);
      });
}

CLHOST_AVX2 double avx2_int8(const float* value, float* grad, const FisherCodeTables& tables,
                             const uint8_t* fisher_codes, const uint8_t* anchor_codes,
                             float anchor_low, float anchor_step, int64_t n, float lambda) {
  const FisherDecoder decoder(tables);
  const __m256 low = _mm256_set1_ps(anchor_low);
  const __m256 step = _mm256_set1_ps(anchor_step);
  return avx2_quadratic(
      value, grad, n, lambda,
      [&](int64_t i, __m256& f, __m256& a) CLHOST_AVX2 {
        f = decoder.decode8(fisher_codes + i);
        const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(anchor_codes + i));
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(packed)), step, low);
      },
      [&](int64_t i, float& f, float& a) {
        f = nibble_value(tables, fisher_codes[i]);
        a = anchor_low + static_cast<float>(anchor_codes[i]) * anchor_step;
      });
}

// Eight elements from i (a multiple of 8): four bytes of nibbles spread to eight bytes in element
// order, looked up in the 16-value table; eight int8 anchors times their group's scale.
CLHOST_AVX2 double avx2_int4_int8(const float* value, float* grad, const float* table16,
                                  const uint8_t* fisher_nibbles, const int8_t* anchor_codes,
                                  const uint16_t* anchor_scales, int64_t n, float lambda) {
  const __m256 first = _mm256_loadu_ps(table16);
  const __m256 second = _mm256_loadu_ps(table16 + 8);
  const __m128i low_nibbles = _mm_set1_epi8(0x0F);
  return avx2_quadratic(
      value, grad, n, lambda,
      [&](int64_t i, __m256& f, __m256& a) CLHOST_AVX2 {
        int32_t packed = 0;
        __builtin_memcpy(&packed, fisher_nibbles + i / 2, sizeof(packed));
        const __m128i bytes = _mm_cvtsi32_si128(packed);
        const __m128i low = _mm_and_si128(bytes, low_nibbles);
        const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles);
        f = lookup16(first, second, _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(low, high)));
        const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(anchor_codes + i));
        a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes)),
                          _mm256_set1_ps(_cvtsh_ss(anchor_scales[i / 32])));
      },
      [&](int64_t i, float& f, float& a) {
        f = fisher4_at(table16, fisher_nibbles, i);
        a = anchor_at(anchor_codes, anchor_scales, i);
      });
}

#undef CLHOST_AVX2

}  // namespace

void fisher_code_tables(float log_low, float log_step, FisherCodeTables& out) {
  out.value[0] = 0.0F;
  for (int code = 1; code < 256; ++code) {
    out.value[code] = std::exp(log_low + static_cast<float>(code - 1) * log_step);
  }
  fisher_nibble_tables(log_low, log_step, out);
}

void fisher_nibble_tables(float log_low, float log_step, FisherCodeTables& out) {
  for (int nibble = 0; nibble < 16; ++nibble) {
    // The same expression as value[16 * nibble + 1].
    out.high[nibble] = std::exp(log_low + static_cast<float>(16 * nibble) * log_step);
    out.low[nibble] = std::exp(static_cast<float>(nibble) * log_step);
  }
}

const PenaltyKernels& generic_penalty_kernels() {
  static const PenaltyKernels kernels{"generic (x86-64 SSE2)", true,         generic_fp32,
                                      generic_int8_fp16,       generic_int8, generic_int4_int8};
  return kernels;
}

const PenaltyKernels* avx2_penalty_kernels() {
  static const PenaltyKernels kernels{"avx2+fma+f16c", false,     avx2_fp32,
                                      avx2_int8_fp16,  avx2_int8, avx2_int4_int8};
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (ECX bit 29): not every compiler's __builtin_cpu_supports knows it;
  // AVX2's check includes the operating system's support for the AVX registers.
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1U << 29U)) != 0;
  const bool supported =
      __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0 && f16c;
  return supported ? &kernels : nullptr;
}

const PenaltyKernels& penalty_kernels() {
  static const PenaltyKernels* const chosen = [] {
    const PenaltyKernels* avx2 = avx2_penalty_kernels();
    return avx2 != nullptr ? avx2 : &generic_penalty_kernels();
  }();
  return *chosen;
}

}  // namespace clhost::ewc
