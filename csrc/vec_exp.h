// exp of 8 float32 lanes with AVX2 and FMA, for the AVX2 paths of the kernels (only callable
// where use_avx2() in cpu_capability.h holds). Formula:
//
//   exp(x) = 2^n * exp(r),   n = round(x / ln2),   r = x - n ln2  in [-ln2/2, ln2/2],
//
// - r in two steps (Cody-Waite): ln2 = L_hi + L_lo with L_hi = 0.693359375 (9 significant bits, so
//   n * L_hi is exact for |n| < 2^15) and L_lo = -2.12194440e-4, r = (x - n L_hi) - n L_lo;
// - exp(r) ~ 1 + r + r^2 P(r), P of degree 5 with the minimax coefficients of the Cephes library's
//   expf (about 1 ulp over the interval);
// - 2^n put into the exponent bits as 2^n1 * 2^n2 with n1 = floor(n / 2), n2 = n - n1, so that both
//   factors are normal floats for every n below and the product rounds once into the subnormals.
//
// x is first clamped to [-104, 89]: exp(-104) is below half the smallest subnormal (2^-150), so
// very negative inputs and -inf give 0; exp(89) overflows, so large inputs and +inf give inf. The
// clamp lets NaN through (max/min return their second operand when one is NaN), and NaN stays NaN.
#pragma once

#include "vec_avx2.h"

namespace manual_ops {

MANUAL_OPS_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 scale2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, scale1), scale2);
}

}  // namespace manual_ops
