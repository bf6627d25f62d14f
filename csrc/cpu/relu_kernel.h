// The loops of relu.cpp, one copy per CPU capability (cpu/relu_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace manual_ops {

// y = relu(x) over x.numel() elements of dense x and y of equal strides (y may be x).
using relu_fn = void(const at::Tensor& x, at::Tensor& y);
// grad_input = relu'(y) * grad_output, all three dense with equal strides.
using relu_backward_fn = void(const at::Tensor& result, const at::Tensor& grad_output, at::Tensor& grad_input);

MANUAL_OPS_DECLARE_KERNEL(relu_stub, relu_fn);
MANUAL_OPS_DECLARE_KERNEL(relu_backward_stub, relu_backward_fn);

}  // namespace manual_ops
