// The loops of im2col.h, one copy per CPU capability (cpu/im2col_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu_capability.h"
#include "im2col.h"

namespace manual_ops {

// cols (nb * L x K, row-major) = the column matrix of the nb NHWC-contiguous samples of x, group g.
using im2col_fn = void(const at::Tensor& x, const ConvGeometry& G, int64_t nb, int64_t g, const at::Tensor& cols);
// Group g's channels of dx (nb NHWC-contiguous samples, float32 or float64) = col2im of dcols.
using col2im_fn = void(const at::Tensor& dcols, const ConvGeometry& G, int64_t nb, int64_t g, const at::Tensor& dx);

MANUAL_OPS_DECLARE_KERNEL(im2col_stub, im2col_fn);
MANUAL_OPS_DECLARE_KERNEL(col2im_stub, col2im_fn);

}  // namespace manual_ops
