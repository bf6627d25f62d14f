// The float32 row primitives of cross_entropy.cpp, one copy per CPU capability
// (cpu/cross_entropy_kernel.cpp). A row is x[0..C), contiguous.
#pragma once

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

// max_c x_c
using row_max_fn = float(const float* x, int64_t C);
// sum_c exp(x_c - m)
using row_sum_exp_fn = float(const float* x, int64_t C, float m);
// sum_c w_c (m - x_c) (w = 1 when null), terms of weight 0 left out (so that 0 * inf is 0)
using row_weighted_gap_fn = float(const float* x, const float* w, int64_t C, float m);
// out_c = a exp(x_c - l) + b w_c (w = 1 when null); out may be x
using row_scaled_softmax_fn = void(const float* x, int64_t C, float l, float a, const float* w, float b, float* out);

MANUAL_OPS_DECLARE_KERNEL(row_max_stub, row_max_fn);
MANUAL_OPS_DECLARE_KERNEL(row_sum_exp_stub, row_sum_exp_fn);
MANUAL_OPS_DECLARE_KERNEL(row_weighted_gap_stub, row_weighted_gap_fn);
MANUAL_OPS_DECLARE_KERNEL(row_scaled_softmax_stub, row_scaled_softmax_fn);

}  // namespace manual_ops
