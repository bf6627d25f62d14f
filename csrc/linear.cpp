// Fully connected layer y = x W^T + b over any leading dims, with the backward
// written by hand. Derivation: docs/derivations.md, "linear".
//
// bfloat16 and float16 matrices are multiplied in float32 tiles: a tile of rows is
// converted to float32, multiplied by an sgemm, and the result rounded once.
#include "autograd_kernel.h"
#include "common.h"

#include <algorithm>
#include <tuple>

namespace manual_ops {
namespace {

constexpr int64_t kTileBytes = 4 << 20;  // float32 scratch per tile of rows

// Rows per tile when each row takes `width` float32 values of scratch (at least one row).
int64_t tile_rows(int64_t M, int64_t width) {
  return std::clamp<int64_t>(kTileBytes / (4 * std::max<int64_t>(width, 1)), 1, std::max<int64_t>(M, 1));
}

// out = a @ b (+ bias) for a low-precision (M, k) a, float32 b (k, n) and bias (n): a tile of
// rows of a at a time is converted to float32, multiplied (one sgemm), and rounded into out.
void mm_in_float_tiles(const Tensor& a, const Tensor& b, const Tensor& bias, Tensor& out) {
  const int64_t M = a.size(0), T = tile_rows(M, a.size(1) + b.size(1));
  Tensor a_f = at::empty({T, a.size(1)}, b.options()), y_f = at::empty({T, b.size(1)}, b.options());
  for (int64_t r0 = 0; r0 < M; r0 += T) {
    const int64_t n = std::min(T, M - r0);
    Tensor a_t = a_f.narrow(0, 0, n), y_t = y_f.narrow(0, 0, n);
    a_t.copy_(a.narrow(0, r0, n));
    bias.defined() ? at::addmm_out(y_t, bias, a_t, b) : at::mm_out(y_t, a_t, b);
    out.narrow(0, r0, n).copy_(y_t);
  }
}

// a^T @ c in float32 for low-precision a (M, m) and c (M, n): the sum over tiles of rows of
// the tiles' products, each tile converted to float32; returns the float32 (m, n) sum.
Tensor mm_t_in_float_tiles(const Tensor& a, const Tensor& c) {
  const at::TensorOptions f32 = a.options().dtype(at::kFloat);
  const int64_t M = a.size(0), T = tile_rows(M, a.size(1) + c.size(1));
  Tensor a_f = at::empty({T, a.size(1)}, f32), c_f = at::empty({T, c.size(1)}, f32);
  Tensor sum = at::zeros({a.size(1), c.size(1)}, f32);
  for (int64_t r0 = 0; r0 < M; r0 += T) {
    const int64_t n = std::min(T, M - r0);
    Tensor a_t = a_f.narrow(0, 0, n), c_t = c_f.narrow(0, 0, n);
    a_t.copy_(a.narrow(0, r0, n));
    c_t.copy_(c.narrow(0, r0, n));
    sum.addmm_(a_t.t(), c_t);
  }
  return sum;
}

void check_linear(const char* op, const Tensor& input, const Tensor& weight) {
  TORCH_CHECK(input.dim() >= 1, op, ": expected input to have at least 1 dimension, but got input of size ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": expected a 2-D weight (out_features, in_features), but got weight of size ",
              weight.sizes());
  check_floating(op, "input", input);
  check_same_dtype(op, "input", input, "weight", weight);
  TORCH_CHECK(input.size(-1) == weight.size(1), op, ": expected the last dimension of input to be in_features=",
              weight.size(1), " (weight of size ", weight.sizes(), "), but got input of size ",
              input.sizes());
}

// The (M, in_features) row matrix of an input of size (*, in_features); M is the product of the
// leading sizes (spelled out: with in_features = 0, reshape could not infer it).
Tensor rows(const Tensor& t) {
  return t.reshape({c10::multiply_integers(t.sizes().slice(0, t.dim() - 1)), t.size(-1)});
}

std::vector<int64_t> output_size(const Tensor& input, const Tensor& weight) {
  std::vector<int64_t> out = input.sizes().vec();
  out.back() = weight.size(0);
  return out;
}

// Forward: Y[m, o] = sum_i X[m, i] * W[o, i] + b[o], i.e. Y = X @ W^T (+ b), one GEMM.
Tensor linear_forward(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias) {
  const char* op = "linear";
  check_linear(op, input, weight);
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below are internal: record no autograd
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_same_dtype(op, "input", input, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": expected bias to be 1-D with ",
                weight.size(0), " elements (weight of size ", weight.sizes(), "), but got bias of size ",
                bias->sizes());
  }
  const Tensor x = rows(input);
  if (is_reduced_floating(input.scalar_type())) {
    Tensor y = at::empty({x.size(0), weight.size(0)}, input.options());
    mm_in_float_tiles(x, weight.to(at::kFloat).t(), has_bias ? bias->to(at::kFloat) : Tensor(), y);
    return y.view(output_size(input, weight));
  }
  const Tensor y = has_bias ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  return y.view(output_size(input, weight));
}

// Backward, from the chain rule through Y = X W^T + b with dY of size (M, out):
//   dX = dY @ W          dX[m, i] = sum_o dY[m, o] W[o, i]
//   dW = dY^T @ X        dW[o, i] = sum_m dY[m, o] X[m, i]
//   db = sum_m dY[m, :]
std::tuple<Tensor, Tensor, Tensor> linear_backward(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, std::array<bool, 3> output_mask) {
  const char* op = "linear_backward";
  check_linear(op, input, weight);
  const std::vector<int64_t> out_size = output_size(input, weight);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(out_size), op,
              ": expected grad_output of size ", at::IntArrayRef(out_size), ", but got grad_output of size ",
              grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  at::AutoDispatchBelowADInplaceOrView guard;
  const Tensor dy = rows(grad_output);
  Tensor grad_input, grad_weight, grad_bias;
  if (is_reduced_floating(input.scalar_type())) {
    if (output_mask[0]) {
      grad_input = at::empty(input.sizes(), input.options());
      Tensor dx = rows(grad_input);  // a view: grad_input is contiguous
      mm_in_float_tiles(dy, weight.to(at::kFloat), Tensor(), dx);
    }
    if (output_mask[1]) grad_weight = mm_t_in_float_tiles(dy, rows(input)).to(weight.scalar_type());
  } else {
    if (output_mask[0]) grad_input = at::mm(dy, weight).view(input.sizes());
    if (output_mask[1]) grad_weight = at::mm(dy.t(), rows(input));
  }
  if (output_mask[2]) grad_bias = dy.sum(0);
  return {grad_input, grad_weight, grad_bias};
}

using ForwardSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&);
using BackwardSig =
    std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, std::array<bool, 3>);

// The autograd kernel of linear_forward: LinearFunction's derivatives (manual_ops/ops/linear.py),
// in C++; the backward is linear_backward, differentiable through that op's autograd kernel
// (LinearBackward).
struct LinearAutograd : public torch::autograd::Function<LinearAutograd> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const std::optional<Tensor>& bias) {
    static const auto op = operator_handle<ForwardSig>("manual_ops::linear_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return op.call(input, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = operator_handle<BackwardSig>("manual_ops::linear_backward");
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_input, grad_weight, grad_bias] = call_backward_op(
        op, grads[0], saved[0], saved[1],
        std::array<bool, 3>{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                            ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)});  // edges: tensors only
    return {grad_input, grad_weight, grad_bias};
  }
};

Tensor linear_forward_autograd(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias) {
  return LinearAutograd::apply(input, weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward", &linear_backward);
}

TORCH_LIBRARY_IMPL(manual_ops, Autograd, m) { m.impl("linear_forward", &linear_forward_autograd); }

}  // namespace manual_ops
