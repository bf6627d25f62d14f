// The loops of activation.cpp, one copy per CPU capability (cpu/activation_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

// The smooth and piecewise-linear activations, each one formula f with its derivatives
// (docs/derivations.md, "Activations"). `alpha` and `beta` are each activation's options:
// leaky_relu's negative_slope and elu's alpha in alpha; hardtanh's min_val, max_val and softplus's
// beta, threshold in (alpha, beta). Sigmoid, tanh and hardtanh write their derivatives in terms of the
// output y (which in-place use leaves in place of the input), the others in terms of the input x.
enum class Activation : int8_t {
  sigmoid, tanh, silu, gelu, gelu_tanh, leaky_relu, elu, hardtanh, hardswish, hardsigmoid, softplus
};

struct ActivationArgs {
  Activation kind;
  double alpha;
  double beta;
};

// All tensors are dense with equal strides; each loop walks numel() elements (y may be x).
// y = f(x)
using activation_fn = void(const at::Tensor& x, at::Tensor& y, const ActivationArgs& a);
// grad_input = f'(s) * grad_output, s the saved input or output
using activation_backward_fn = void(const at::Tensor& saved, const at::Tensor& grad_output,
                                    at::Tensor& grad_input, const ActivationArgs& a);
// out = (d f'(s) / ds) * grad_output * grad_grad_input
using activation_double_backward_fn = void(const at::Tensor& saved, const at::Tensor& grad_output,
                                           const at::Tensor& grad_grad_input, at::Tensor& out,
                                           const ActivationArgs& a);

MANUAL_OPS_DECLARE_KERNEL(activation_stub, activation_fn);
MANUAL_OPS_DECLARE_KERNEL(activation_backward_stub, activation_backward_fn);
MANUAL_OPS_DECLARE_KERNEL(activation_double_backward_stub, activation_double_backward_fn);

}  // namespace manual_ops
