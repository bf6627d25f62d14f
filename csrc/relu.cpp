// ReLU and its in-place form, with the backward written by hand.
// Derivation: docs/derivations.md, "relu".
#include "common.h"
#include "cpu/relu_kernel.h"

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(relu_stub);
MANUAL_OPS_DEFINE_KERNEL(relu_backward_stub);

namespace {

Tensor relu_forward(const Tensor& input) {
  check_floating("relu", "input", input);
  const Tensor x = dense(input);
  Tensor out = at::empty_like(x);
  relu_stub(x, out);
  return out;
}

void relu_inplace(Tensor& self) {
  check_floating("relu_", "self", self);
  in_place_dense(self, [](Tensor& x) { relu_stub(x, x); });
}

// Backward from the saved output y = relu(x): dx[i] = dy[i] * 1[y[i] > 0]
// (y > 0 exactly where x > 0, so the output can stand in for an overwritten input;
// like torch, a NaN output passes the gradient through).
Tensor relu_backward(const Tensor& grad_output, const Tensor& result) {
  const char* op = "relu_backward";
  check_floating(op, "result", result);
  check_same_dtype(op, "result", result, "grad_output", grad_output);
  TORCH_CHECK(grad_output.sizes() == result.sizes(), op, ": expected grad_output of size ", result.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  const Tensor layout = elementwise_layout(result, grad_output);
  Tensor dx = at::empty_like(layout);
  relu_backward_stub(strided_like(result, layout), strided_like(grad_output, layout), dx);
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("relu_forward", &relu_forward);
  m.impl("relu_", &relu_inplace);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace manual_ops
