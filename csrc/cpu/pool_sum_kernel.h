// The window sums of adaptive_avg_pool2d.cpp, one copy per CPU capability
// (cpu/pool_sum_kernel.cpp), for T = float, double, bfloat16 and float16.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

// sum_{i < n} p[i] in opmath_t (float32 for bfloat16 and float16): n is at most a few hundred values.
template <typename T>
using chunk_sum_fn = at::opmath_type<T>(const T* p, int64_t n);
// part[c] += src[c] for c < C, in opmath_t.
template <typename T>
using add_row_fn = void(at::opmath_type<T>* part, const T* src, int64_t C);

// The stubs of dtype T (defined and instantiated for the four in adaptive_avg_pool2d.cpp).
template <typename T>
struct PoolSumStubs {
  static KernelStub<chunk_sum_fn<T>> chunk_sum;
  static KernelStub<add_row_fn<T>> add_row;
};

}  // namespace manual_ops
