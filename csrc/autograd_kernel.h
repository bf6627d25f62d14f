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
#include <torch/version.h>

// Compiled autograd's interface for C++ nodes (PyCompilerInterface, functional apply) as used
// here is torch 2.8's and later; with an older torch the nodes have no compiled_args and compiled
// autograd refuses them, as it did before.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define MANUAL_OPS_COMPILED_AUTOGRAD 1
#include <torch/csrc/dynamo/compiled_autograd.h>
#endif

#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

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

#ifdef MANUAL_OPS_COMPILED_AUTOGRAD
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::SwapSavedVariables;

// Compiled autograd (torch._dynamo.compiled_autograd) traces a backward graph node by node. A node
// lists what its backward reads in compiled_args: its saved tensors, which become inputs of the
// compiled graph, and its constants, on which the graph is specialised (they are part of its cache
// key). Its apply_with_saved then puts a call of its backward op into the graph instead of running
// it, on the graph's stand-ins for the saved tensors, as torch's generated nodes do with their
// functional apply. The call is to a function bound once per process under the op's name, which
// calls the op boxed: the op's schema must read (grad_output, saved tensors..., constants...,
// bool[k] output_mask), the mask being which of the node's k next edges need a gradient.
inline variable_list apply_backward_op_compiled(const Node& node, const char* op_name, const variable_list& grads,
                                                SwapSavedVariables& saved, std::initializer_list<SavedVariable*> tensors,
                                                std::initializer_list<c10::IValue> constants) {
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(op_name, "");
  const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
  std::string fn_name(op_name);
  fn_name.replace(fn_name.find("::"), 2, "_");  // a Python identifier: manual_ops_linear_backward
  {
    static std::mutex mutex;
    static std::unordered_set<std::string> bound;
    std::lock_guard<std::mutex> lock(mutex);
    if (bound.insert(fn_name).second) {
      std::vector<at::TypePtr> schema;
      const auto& arguments = op.schema().arguments();
      for (size_t i = 1; i < arguments.size(); ++i) schema.push_back(arguments[i].type());
      const size_t num_outputs = op.schema().returns().size();
      auto functional = [op, num_outputs](const variable_list& inputs, const std::vector<c10::IValue>& args) {
        if (!inputs[0].defined()) return variable_list(num_outputs);
        torch::jit::Stack stack{inputs[0]};
        stack.insert(stack.end(), args.begin(), args.end());
        if (at::GradMode::is_enabled()) {
          op.callBoxed(stack);
        } else {
          at::AutoDispatchBelowADInplaceOrView guard;
          op.callBoxed(stack);
        }
        variable_list outputs;
        for (const auto& value : stack) outputs.push_back(value.toTensor());
        return outputs;
      };
      compiler->bind_function(saved.get_py_compiler(), fn_name, functional, schema);
    }
  }
  for (SavedVariable* t : tensors) saved.before(*t);
  std::vector<c10::IValue> args;
  for (SavedVariable* t : tensors) args.emplace_back(optional_of(t->unpack()));
  args.insert(args.end(), constants.begin(), constants.end());
  c10::List<bool> output_mask;
  for (size_t i = 0; i < node.num_outputs(); ++i) output_mask.push_back(node.task_should_compute_output(i));
  args.emplace_back(output_mask);
  auto output_metadata = torch::dynamo::autograd::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
      torch::dynamo::autograd::get_input_metadata(node.next_edges()));
  auto outputs = compiler->call_function(saved.get_py_compiler(), "apply_functional", fn_name, grads, args,
                                         output_metadata);
  for (SavedVariable* t : tensors) saved.after(*t);
  return outputs;
}
#endif

}  // namespace manual_ops
