// The loop of dropout.cpp, one copy per CPU capability (cpu/dropout_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace manual_ops {

// out = in * (mask != 0 ? s : 0), s = 1 / (1 - p) rounded to the dtype (torch's noise value), over numel()
// elements of dense in, mask and out of one dtype and equal strides (out may be in).
using dropout_fn = void(const at::Tensor& in, const at::Tensor& mask, at::Tensor& out, double p);

MANUAL_OPS_DECLARE_KERNEL(dropout_stub, dropout_fn);

}  // namespace manual_ops
