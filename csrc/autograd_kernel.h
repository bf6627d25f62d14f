// Helpers for the C++ autograd kernels (torch::autograd::Function) of the forward ops whose
// Python autograd.Function costs more than a small op's computation (cross_entropy, linear).
// Each has the derivatives of its Python twin in manual_ops/ops/; the Python wrappers use the twin
// where forward-mode AD, torch.func or torch.compile is involved.
#pragma once

#include "common.h"

#include <torch/csrc/autograd/custom_function.h>

#include <utility>

namespace manual_ops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <class Sig>
c10::TypedOperatorHandle<Sig> operator_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// A backward op called from an autograd kernel's backward: while grad mode is on (create_graph),
// through the op's own autograd kernel, which records it for double backward; else straight to
// the computation.
template <class Sig, class... Args>
auto call_backward_op(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  if (at::GradMode::is_enabled()) return op.call(std::forward<Args>(args)...);
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

}  // namespace manual_ops
