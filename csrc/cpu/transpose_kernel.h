// The NCHW <-> NHWC transposes of conv2d's tiles, one copy per CPU capability
// (cpu/transpose_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace manual_ops {

// dst[b, c, r] = src[b, r, c] for nb row-major (rows x cols) matrices: NCHW <-> NHWC of one tile of
// samples (rows x cols = C x H*W one way, H*W x C the other). src has dst's dtype (values move as
// bits), or is float32 for a bfloat16/float16 dst (rounded once, to nearest even).
using transpose_planes_fn = void(const at::Tensor& src, const at::Tensor& dst, int64_t nb, int64_t rows,
                                 int64_t cols);

MANUAL_OPS_DECLARE_KERNEL(transpose_planes_stub, transpose_planes_fn);

}  // namespace manual_ops
