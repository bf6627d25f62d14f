// Helpers for the C++ autograd kernels of the forward ops whose Python autograd.Function costs
// more than a small op's computation (batch_norm, cross_entropy, linear). Each has the derivatives
// of its Python twin in manual_ops/ops/; the Python wrappers use the twin where forward-mode AD,
// torch.func or torch.compile is involved.
//
// A kernel is written the way torch's generated VariableType code writes its own: the computation
// runs below autograd, and when an input requires grad, a backward Node holding SavedVariables is
// made and set as the differentiable outputs' grad_fn. (torch::autograd::Function does the same
// with per-call bookkeeping: input and output metadata, a string-keyed map of saved values and
// output wrapping, measured at 5-9 µs a call, as much as a small op's whole computation.)
#pragma once

#include "common.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace manual_ops {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

template <class Sig>
c10::TypedOperatorHandle<Sig> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// A new node, owned as torch's version owns them: by c10::intrusive_ptr from torch 2.13, by
// std::shared_ptr with torch's deleteNode (which frees long chains of nodes without deep
// recursion) before; the branch for the other version is never instantiated.
template <class NodeT>
auto new_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, NodeT>) {
    return c10::make_intrusive<NodeT>();
  } else {
    return std::shared_ptr<NodeT>(new NodeT(), [](auto* node) { deleteNode(node); });  // found by ADL
  }
}

// The backward node of a forward op's call whose differentiable inputs are `inputs` (its next
// edges, in this order): made when grad mode is on and one of them requires grad; else null, and
// the call records nothing.
template <class NodeT, class... Inputs>
auto make_backward_node(const Inputs&... inputs) {
  decltype(new_node<NodeT>()) node;
  if (!torch::autograd::compute_requires_grad(inputs...)) return node;
  node = new_node<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// As torch's VariableType for an argument without a derivative (a class weight, running stats):
// an error while grad mode is on and it requires grad, instead of a gradient silently not made.
inline void check_not_differentiable(const char* op, const char* name, const std::optional<Tensor>& t) {
  TORCH_CHECK(!(t.has_value() && t->defined() && t->requires_grad()) || !at::GradMode::is_enabled(),
              "The function '", op, "' is not differentiable with respect to argument '", name,
              "'. This input cannot have requires_grad True.");
}

// The C++ kernels have no forward-mode derivative: the Python twins' jvp has it, and the
// functional wrappers route dual inputs there.
template <class... Inputs>
void check_no_forward_grad(const char* op, const Inputs&... inputs) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(torch::autograd::isFwGradDefined(inputs) || ...), "manual_ops::", op,
                              ": forward-mode AD is not supported when the operator is called directly; call it "
                              "through manual_ops.functional, whose functions support it");
}

// The op's computation, past its autograd kernel (which records nothing there).
template <class Sig, class... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

// A backward op called from a backward node: while grad mode is on (create_graph), through the
// op's own autograd kernel, which records it for double backward; else straight to the computation.
template <class Sig, class... Args>
auto call_backward_op(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  if (at::GradMode::is_enabled()) return op.call(std::forward<Args>(args)...);
  return call_below_autograd(op, std::forward<Args>(args)...);
}

inline std::optional<Tensor> optional_of(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

}  // namespace manual_ops
