// Helpers of the AVX2 paths of the kernels not yet written with at::vec (only callable where
// use_avx2() below holds: the avx2 and avx512 levels of cpu_capability.h): loads and stores of 8
// float32 lanes from and to float32, bfloat16 and float16 memory (float16 needs F16C, which every
// AVX2 CPU has), masks and horizontal reductions. The conversions
// are those of c10::BFloat16 and c10::Half, so the AVX2 and the portable code round alike:
//
// - bfloat16 -> float32 is exact: the 16 bits become the high half of the float32's bits;
// - float32 -> bfloat16 rounds to nearest even: add 0x7FFF plus the lowest kept bit, then keep the
//   high 16 bits; a NaN becomes the quiet NaN 0x7FC0 (the carry could otherwise turn it into inf);
// - float16 <-> float32 with the F16C instructions, rounding to nearest even.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu_capability.h"

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#define MANUAL_OPS_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace manual_ops {

inline bool use_avx2() { return cpu_capability() != Capability::DEFAULT; }

// The storage types with AVX2 loops (float32, bfloat16, float16: arithmetic in float32 lanes); the
// kernels choose them with `if constexpr (has_avx2_path<T>)` and then use_avx2().
template <typename T>
constexpr bool has_avx2_path =
    std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

MANUAL_OPS_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

MANUAL_OPS_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}

MANUAL_OPS_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

MANUAL_OPS_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

// The 8 lanes of v rounded to bfloat16, each in the low 16 bits of a 32-bit lane.
MANUAL_OPS_AVX2 inline __m256i bfloat16_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lowest_kept, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), is_nan));
}

// The 16-bit halves of the 32-bit lanes of lo then hi, in order: packing gives, per 128-bit half,
// [lo0..3 hi0..3 | lo4..7 hi4..7]; the 64-bit blocks reordered 0, 2, 1, 3 put them in order.
MANUAL_OPS_AVX2 inline __m256i pack16(__m256i lo, __m256i hi) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
}

MANUAL_OPS_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i b = bfloat16_bits(v);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(pack16(b, b)));
}

MANUAL_OPS_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// 16 values: lo to p[0:8], hi to p[8:16] (for bfloat16, one pack of both halves).
MANUAL_OPS_AVX2 inline void store16(float* p, __m256 lo, __m256 hi) { store8(p, lo), store8(p + 8, hi); }

MANUAL_OPS_AVX2 inline void store16(c10::Half* p, __m256 lo, __m256 hi) { store8(p, lo), store8(p + 8, hi); }

MANUAL_OPS_AVX2 inline void store16(c10::BFloat16* p, __m256 lo, __m256 hi) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), pack16(bfloat16_bits(lo), bfloat16_bits(hi)));
}

// The first k (0..8) lanes set, for masked loads and stores of a row's last partial vector.
MANUAL_OPS_AVX2 inline __m256i first_lanes(int64_t k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

MANUAL_OPS_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MANUAL_OPS_AVX2 inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 8 x 8 transpose of the rows r[0..7]: r[q] becomes column q.
MANUAL_OPS_AVX2 inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

}  // namespace manual_ops
