// Dropout and feature (channel) dropout: the forward and the backward multiply by the same mask, drawn by the
// caller from torch's generator as torch's dropout draws it, times 1 / (1 - p). Derivation:
// docs/derivations.md, "Dropout".
#include <ATen/ExpandUtils.h>

#include "common.h"
#include "cpu/dropout_kernel.h"

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(dropout_stub);

namespace {

// `mask` (of `t`'s dtype; the shape of `t`, or (N, C, 1, ...) for feature dropout, or a 0-dim zero for
// p = 1) as a dense tensor of `t`'s sizes and `layout`'s strides.
Tensor mask_like(const char* op, const char* name, const Tensor& t, const Tensor& mask, const Tensor& layout) {
  check_same_dtype(op, name, t, "mask", mask);
  TORCH_CHECK(at::is_expandable_to(mask.sizes(), t.sizes()), op,
              ": expected a mask that broadcasts to ", name, "'s size ", t.sizes(), ", but got mask of size ",
              mask.sizes());
  return strided_like(mask.expand(t.sizes()), layout);
}

void check_p(const char* op, double p) {
  TORCH_CHECK_VALUE(p >= 0 && p <= 1, op, ": dropout probability has to be between 0 and 1, but got ", p);
}

Tensor dropout_forward(const Tensor& input, const Tensor& mask, double p) {
  const char* op = "dropout_forward";
  check_floating(op, "input", input);
  check_p(op, p);
  const Tensor x = dense(input);
  Tensor out = at::empty_like(x);
  dropout_stub(x, mask_like(op, "input", x, mask, x), out, p);
  return out;
}

void dropout_inplace(Tensor& self, const Tensor& mask, double p) {
  const char* op = "dropout_";
  check_floating(op, "self", self);
  check_p(op, p);
  in_place_dense(self, [&](Tensor& x) { dropout_stub(x, mask_like(op, "self", x, mask, x), x, p); });
}

// grad_input = grad_output * mask / (1 - p), laid out as torch's product of the gradient and its noise.
Tensor dropout_backward(const Tensor& grad_output, const Tensor& mask, double p) {
  const char* op = "dropout_backward";
  check_floating(op, "grad_output", grad_output);
  check_p(op, p);
  const Tensor layout = elementwise_layout(grad_output, mask.expand(grad_output.sizes()));
  Tensor grad_input = at::empty_like(layout);
  dropout_stub(strided_like(grad_output, layout), mask_like(op, "grad_output", grad_output, mask, layout),
               grad_input, p);
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("dropout_forward", &dropout_forward);
  m.impl("dropout_", &dropout_inplace);
  m.impl("dropout_backward", &dropout_backward);
}

}  // namespace manual_ops
