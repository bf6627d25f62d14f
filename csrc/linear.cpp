// Fully connected layer y = x W^T + b over any leading dims, with the backward
// written by hand. Derivation: docs/derivations.md, "linear".
//
// The GEMMs are matmul()'s (gemm.h): at::mm for float32 and float64; for bfloat16 and float16,
// float32 arithmetic on operands converted as they are packed, rounded once.
#include "autograd_kernel.h"
#include "common.h"
#include "gemm.h"

#include <tuple>

namespace manual_ops {
namespace {

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
  if (t.dim() == 2) return t;
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
  Tensor y = at::empty({x.size(0), weight.size(0)}, input.options());
  matmul(matrix(x), matrix(weight).transposed(), matrix(y), false, has_bias ? *bias : Tensor());
  return input.dim() == 2 ? y : y.view(output_size(input, weight));
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
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options());
    matmul(matrix(dy), matrix(weight), matrix(rows(grad_input)), false);  // rows(): a view, grad_input is contiguous
  }
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options());
    matmul(matrix(dy).transposed(), matrix(rows(input)), matrix(grad_weight), false);
  }
  if (output_mask[2]) grad_bias = dy.sum(0);
  return {grad_input, grad_weight, grad_bias};
}

using ForwardSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&);
using BackwardSig =
    std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, std::array<bool, 3>);

// The backward node of linear_forward: LinearFunction's derivatives (manual_ops/ops/linear.py), in
// C++, with next edges (input, weight, bias). The backward is linear_backward, differentiable
// through that op's autograd kernel (LinearBackward).
struct LinearBackwardNode final : public Node {
  SavedVariable input_, weight_;

  std::string name() const override { return "LinearBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto op = operator_handle<BackwardSig>("manual_ops::linear_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    auto [grad_input, grad_weight, grad_bias] = call_backward_op(
        op, grads[0], input_.unpack(), weight_.unpack(),
        std::array<bool, 3>{task_should_compute_output(0), task_should_compute_output(1),
                            task_should_compute_output(2)});  // no bias: no edge, so false
    return {grad_input, grad_weight, grad_bias};
  }

#ifdef MANUAL_OPS_COMPILED_AUTOGRAD
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(input_, false);
    args.collect(weight_, false);
  }

  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    return apply_backward_op_compiled(*this, "manual_ops::linear_backward", grads, saved, {&input_, &weight_}, {});
  }
#endif
};

// The autograd kernel of linear_forward.
Tensor linear_forward_autograd(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias) {
  static const auto op = operator_handle<ForwardSig>("manual_ops::linear_forward");
  check_no_forward_grad("linear_forward", input, weight, bias);
  auto node = make_backward_node<LinearBackwardNode>(input, weight, bias);
  Tensor output = call_below_autograd(op, input, weight, bias);
  if (node) {
    torch::autograd::set_history(output, node);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight, false);
  }
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward", &linear_backward);
}

TORCH_LIBRARY_IMPL(manual_ops, Autograd, m) { m.impl("linear_forward", &linear_forward_autograd); }

}  // namespace manual_ops
