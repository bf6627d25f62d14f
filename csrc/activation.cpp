// The activation family (sigmoid, tanh, silu, gelu, leaky_relu, elu, hardtanh, hardswish, hardsigmoid,
// softplus): one forward, one in-place forward, one backward and one double-backward op, each taking the
// activation's name and its two options. Derivation: docs/derivations.md, "Activations".
#include "common.h"
#include "cpu/activation_kernel.h"

#include <algorithm>
#include <iterator>
#include <string_view>
#include <utility>

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(activation_stub);
MANUAL_OPS_DEFINE_KERNEL(activation_backward_stub);
MANUAL_OPS_DEFINE_KERNEL(activation_double_backward_stub);

namespace {

ActivationArgs parse(const char* op, std::string_view name, double alpha, double beta) {
  static constexpr std::pair<std::string_view, Activation> kNames[] = {
      {"sigmoid", Activation::sigmoid},       {"tanh", Activation::tanh},
      {"silu", Activation::silu},             {"gelu", Activation::gelu},
      {"gelu_tanh", Activation::gelu_tanh},   {"leaky_relu", Activation::leaky_relu},
      {"elu", Activation::elu},               {"hardtanh", Activation::hardtanh},
      {"hardswish", Activation::hardswish},   {"hardsigmoid", Activation::hardsigmoid},
      {"softplus", Activation::softplus}};
  const auto* found =
      std::find_if(std::begin(kNames), std::end(kNames), [&](const auto& k) { return k.first == name; });
  TORCH_CHECK_VALUE(found != std::end(kNames), op, ": unknown activation '", name,
                    "'; expected one of sigmoid, tanh, silu, gelu, gelu_tanh, leaky_relu, elu, hardtanh, "
                    "hardswish, hardsigmoid, softplus");
  return {found->second, alpha, beta};
}

// As torch's kernels for a dtype they have no loop for: NotImplementedError naming the activation and the dtype.
void check_dtype(const char* op, c10::string_view name, const Tensor& t) {
  TORCH_CHECK_NOT_IMPLEMENTED(is_kernel_dtype(t.scalar_type()), op, ": \"", name, "\" not implemented for '",
                              t.scalar_type(), "'");
}

void check_same(const char* op, const Tensor& saved, const char* name, const Tensor& t) {
  check_same_dtype(op, "saved", saved, name, t);
  TORCH_CHECK(t.sizes() == saved.sizes(), op, ": expected ", name, " of size ", saved.sizes(), ", but got ", name,
              " of size ", t.sizes());
}

Tensor activation_forward(const Tensor& input, c10::string_view name, double alpha, double beta) {
  const ActivationArgs a = parse("activation_forward", name, alpha, beta);
  check_dtype("activation_forward", name, input);
  const Tensor x = dense(input);
  Tensor out = at::empty_like(x);
  activation_stub(x, out, a);
  return out;
}

void activation_inplace(Tensor& self, c10::string_view name, double alpha, double beta) {
  const ActivationArgs a = parse("activation_", name, alpha, beta);
  check_dtype("activation_", name, self);
  in_place_dense(self, [&](Tensor& x) { activation_stub(x, x, a); });
}

// grad_input = f'(saved) * grad_output; `saved` is the input, or the output for sigmoid, tanh, hardtanh. The
// result is laid out as torch's (elementwise_layout), and so is the double backward's.
Tensor activation_backward(const Tensor& grad_output, const Tensor& saved, c10::string_view name, double alpha,
                           double beta) {
  const char* op = "activation_backward";
  const ActivationArgs a = parse(op, name, alpha, beta);
  check_dtype(op, name, saved);
  check_same(op, saved, "grad_output", grad_output);
  // torch's leaky_relu_backward takes the input first, its other activations' backward the gradient
  const Tensor layout = a.kind == Activation::leaky_relu ? elementwise_layout(saved, grad_output)
                                                          : elementwise_layout(grad_output, saved);
  Tensor grad_input = at::empty_like(layout);
  activation_backward_stub(strided_like(saved, layout), strided_like(grad_output, layout), grad_input, a);
  return grad_input;
}

// The saved tensor's gradient in the double backward: (d f'(s) / ds) * grad_output * grad_grad_input.
Tensor activation_double_backward(const Tensor& grad_output, const Tensor& saved, const Tensor& grad_grad_input,
                                  c10::string_view name, double alpha, double beta) {
  const char* op = "activation_double_backward";
  const ActivationArgs a = parse(op, name, alpha, beta);
  check_dtype(op, name, saved);
  check_same(op, saved, "grad_output", grad_output);
  check_same(op, saved, "grad_grad_input", grad_grad_input);
  const Tensor layout = elementwise_layout(grad_grad_input, saved);
  Tensor out = at::empty_like(layout);
  activation_double_backward_stub(strided_like(saved, layout), strided_like(grad_output, layout),
                                  strided_like(grad_grad_input, layout), out, a);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("activation_forward", &activation_forward);
  m.impl("activation_", &activation_inplace);
  m.impl("activation_backward", &activation_backward);
  m.impl("activation_double_backward", &activation_double_backward);
}

}  // namespace manual_ops
