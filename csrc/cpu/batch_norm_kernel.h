// The row loops of batch_norm.cpp, one copy per CPU capability (cpu/batch_norm_kernel.cpp), for
// T = float, double, bfloat16 and float16, with arithmetic in opmath_t = at::opmath_type<T>.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

// Partial sums per channel of an NCL row's values: value i of a row goes to lane i mod kLanes.
// The count is fixed (not the vector width), so every capability adds the same values in the same
// order into each lane: 2 float32 vectors at AVX512, 4 at AVX2.
constexpr int kLanes = 32;

template <typename T>
using opmath_of = at::opmath_type<T>;

// Consecutive NCL rows of L values, row r of channel c (c for the first row, then cycling through C),
// each into the kLanes lanes of its channel, l1[c * kLanes + j] and l2[...]:
//   l1[.. j] += u[i] - ku[c],  l2[.. j] += (u[i] - ku[c]) * (v[i] - m[c]),  j = i mod kLanes.
template <typename T>
using rows_sums_fn = void(const T* u, const T* v, int64_t rows, int64_t L, int64_t c, int64_t C,
                          const opmath_of<T>* ku, const opmath_of<T>* m, opmath_of<T>* l1, opmath_of<T>* l2);
// Consecutive NLC rows of C channels: a1[c] += u[c] - ku[c],  a2[c] += (u[c] - ku[c]) * (v[c] - m[c]).
template <typename T>
using nlc_rows_sums_fn = void(const T* u, const T* v, int64_t rows, int64_t C, const opmath_of<T>* ku,
                              const opmath_of<T>* m, opmath_of<T>* a1, opmath_of<T>* a2);
// out = A * u + B * (v - Mu) + K over consecutive NCL rows of L values, row r with the coefficients
// of its channel (c for the first row, then cycling through C); u or v may be null (that term is
// dropped). In opmath_t, rounded once into T.
template <typename T>
using affine_rows_fn = void(const T* u, const T* v, int64_t rows, int64_t L, int64_t c, int64_t C,
                            const opmath_of<T>* A, const opmath_of<T>* B, const opmath_of<T>* Mu,
                            const opmath_of<T>* K, T* out);
// The same over consecutive NLC rows of C values, value c of a row with the coefficients of channel c.
template <typename T>
using affine_nlc_rows_fn = void(const T* u, const T* v, int64_t rows, int64_t C, const opmath_of<T>* A,
                                const opmath_of<T>* B, const opmath_of<T>* Mu, const opmath_of<T>* K, T* out);

// Per row r of `rows` rows of n values, `stride` apart, each its own channel (ku[r], m[r]): the totals
//   s1[r] = sum (u - ku[r]),  s2[r] = sum (u - ku[r]) * (v - m[r]),
// each summed in kLanes lanes (value i into lane i mod kLanes) and the lanes added pairwise: the same sums, in
// the same order, as rows_sums of one row into zeroed lanes and a pairwise total, without the lanes in memory.
template <typename T>
using row_totals_fn = void(const T* u, const T* v, int64_t rows, int64_t n, int64_t stride, const opmath_of<T>* ku,
                           const opmath_of<T>* m, opmath_of<T>* s1, opmath_of<T>* s2);

// The stubs of dtype T (defined and instantiated for the four in batch_norm.cpp).
template <typename T>
struct BatchNormStubs {
  static KernelStub<rows_sums_fn<T>> rows_sums;
  static KernelStub<nlc_rows_sums_fn<T>> nlc_rows_sums;
  static KernelStub<affine_rows_fn<T>> affine_rows;
  static KernelStub<affine_nlc_rows_fn<T>> affine_nlc_rows;
  static KernelStub<row_totals_fn<T>> row_totals;
};

}  // namespace manual_ops
