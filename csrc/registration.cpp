// The manual_ops operator library: every schema lives here; each op family's
// file registers its CPU kernels with TORCH_LIBRARY_IMPL. The meta device is served by the
// fake kernels in manual_ops/ops; every other device gets reject_device (below).
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "cpu_capability.h"
#include "gemm.h"

#include <cstring>

#include <string>

// The torch this library was compiled against (setup.py passes torch.__version__), as a marker
// that manual_ops/_extension.py finds in this file's bytes before loading it: a library built
// for another torch may not even load, so the check cannot wait for the import.
#define MANUAL_OPS_STRINGIFY_(x) #x
#define MANUAL_OPS_STRINGIFY(x) MANUAL_OPS_STRINGIFY_(x)
extern "C" __attribute__((used, visibility("default"))) const char manual_ops_built_with_torch[] =
    "manual_ops-built-with-torch:" MANUAL_OPS_STRINGIFY(MANUAL_OPS_BUILT_WITH_TORCH) ";";

// manual_ops._C.cpu_capability(): "avx512", "avx2" or "default", the copy of the kernels this process
// runs (cpu_capability.h).
static PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(manual_ops::capability_name(manual_ops::cpu_capability()));
}

// manual_ops._C.low_precision_gemm(dtype): "onednn", "own" or "mm", how matmul() multiplies that
// dtype ("bfloat16" or "float16") in this process (gemm.h).
static PyObject* low_precision_gemm(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  if (std::strcmp(name, "bfloat16") != 0 && std::strcmp(name, "float16") != 0) {
    PyErr_Format(PyExc_ValueError, "low_precision_gemm: expected 'bfloat16' or 'float16', but got '%s'", name);
    return nullptr;
  }
  try {
    const auto path = manual_ops::low_precision_gemm(std::strcmp(name, "bfloat16") == 0 ? at::kBFloat16 : at::kHalf);
    return PyUnicode_FromString(path == manual_ops::LowPrecisionGemm::onednn ? "onednn"
                                : path == manual_ops::LowPrecisionGemm::own  ? "own"
                                                                             : "mm");
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

// `import manual_ops._C` loads this shared library, which runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_capability", cpu_capability, METH_NOARGS, "The kernels this process runs: 'avx512', 'avx2' or 'default'."},
      {"low_precision_gemm", low_precision_gemm, METH_O, "How matmul() multiplies 'bfloat16' or 'float16'."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(manual_ops, m) {
  // padding is (top, left, bottom, right): begin then end, as for ONNX pads.
  m.def(
      "conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[4] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Returns (output, save_mean, save_invstd). Training updates the running stats and
  // num_batches_tracked in place; momentum=None is the cumulative average. beta_floor=None
  // is plain batch norm; k >= 0 clamps the shift to max(beta, -k*s), s per floor_scale.
  m.def(
      "batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps, "
      "float? beta_floor, str floor_scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor save_mean, "
      "Tensor save_invstd, bool training, float? beta_floor, str floor_scale, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // Group norm (csrc/group_norm.cpp): returns (output, save_mean, save_rstd), the statistics of
  // size (N, num_groups).
  m.def(
      "group_norm_forward(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_backward(Tensor grad_output, Tensor input, int num_groups, Tensor save_mean, Tensor save_rstd, "
      "Tensor? weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Layer norm (csrc/layer_norm.cpp): returns (output, save_mean, save_rstd), the statistics of size
  // (*leading, 1, ..., 1).
  m.def(
      "layer_norm_forward(Tensor input, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_backward(Tensor grad_output, Tensor input, int[] normalized_shape, Tensor save_mean, "
      "Tensor save_rstd, Tensor? weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Synchronised batch norm's local steps (the collectives run in Python): batch_norm_stats
  // returns float64 [[mean], [m2]] of the input per channel (m2 = sum of squared deviations);
  // batch_norm_backward_reduce float64 [[sum delta], [sum delta * xhat]]; sync_batch_norm_backward
  // forms dx from the global sums (over count values per channel) and dgamma, dbeta from the local.
  m.def("batch_norm_stats(Tensor input) -> Tensor");
  m.def("batch_norm_backward_reduce(Tensor grad_output, Tensor input, Tensor mean, Tensor invstd) -> Tensor");
  m.def(
      "sync_batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor mean, "
      "Tensor invstd, Tensor local_sums, Tensor global_sums, int count, float? beta_floor, str floor_scale, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // Pooling. Forward and backward are separate ops; the backward ops take the forward's input
  // for its sizes and memory format (the layout of grad_input), as torch's backward ops do.
  // max_pool2d_forward returns (output, indices): int64 flat positions ih*W + iw in each plane.
  m.def(
      "max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");
  m.def(
      "avg_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d_forward(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
  m.def("linear_forward(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("relu_forward(Tensor input) -> Tensor");
  // In place, returning nothing: functionalization (torch.compile) rejects custom ops whose
  // outputs alias inputs, so the Python wrapper returns `self` itself.
  m.def("relu_(Tensor(a!) self) -> ()");
  // relu's backward takes the output (not the input), which relu_ leaves in place of the input.
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");
  // The activation family (csrc/activation.cpp): `activation` names it (sigmoid, tanh, silu, gelu, gelu_tanh,
  // leaky_relu, elu, hardtanh, hardswish, hardsigmoid, softplus); alpha and beta are its options. `saved` is the
  // output for sigmoid, tanh and hardtanh, else the input.
  m.def("activation_forward(Tensor input, str activation, float alpha, float beta) -> Tensor");
  m.def("activation_(Tensor(a!) self, str activation, float alpha, float beta) -> ()");
  m.def("activation_backward(Tensor grad_output, Tensor saved, str activation, float alpha, float beta) -> Tensor");
  m.def(
      "activation_double_backward(Tensor grad_output, Tensor saved, Tensor grad_grad_input, str activation, "
      "float alpha, float beta) -> Tensor");
  // Dropout (csrc/dropout.cpp): `mask` holds bernoulli(1 - p) draws (0 or 1), of the input's shape or broadcasting
  // to it (feature dropout); the backward multiplies by the same mask and scale.
  m.def("dropout_forward(Tensor input, Tensor mask, float p) -> Tensor");
  m.def("dropout_(Tensor(a!) self, Tensor mask, float p) -> ()");
  m.def("dropout_backward(Tensor grad_output, Tensor mask, float p) -> Tensor");
  // Returns (loss, lse): lse is the float64 log-sum-exp of each row's logits, for the backward.
  m.def(
      "cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, str reduction, int ignore_index, "
      "float label_smoothing) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
      "str reduction, int ignore_index, float label_smoothing, bool[2] output_mask) -> (Tensor, Tensor)");
}

namespace {

// The device of the first tensor among an op's arguments (tensors, optional tensors, lists).
std::string device_of(c10::ArrayRef<c10::IValue> args) {
  for (const c10::IValue& v : args) {
    if (v.isTensor() && v.toTensor().defined()) return v.toTensor().device().str();
    if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorVector()) if (t.defined()) return t.device().str();
    }
  }
  return "unknown";
}

// Every manual_ops operator on a device we have no kernels for: NotImplementedError naming the
// op, the device and what is supported, instead of the dispatcher's "could not run ... with
// arguments from the 'CUDA' backend".
void reject_device(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.operator_name().name, ": manual_ops has no kernel for device '",
                              device_of(torch::jit::last(*stack, op.schema().arguments().size())),
                              "'; its kernels run on the CPU (and the meta device traces shapes). Move the "
                              "tensors to the CPU, or use torch's built-in layers on that device.");
}

// All operators defined above (the TORCH_LIBRARY block runs first: same file, earlier).
void reject_all(torch::Library& m) {
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("manual_ops::", 0) == 0) {
      m.impl(name.name.c_str(), torch::CppFunction::makeFromBoxedFunction<&reject_device>());
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CUDA, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, HIP, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, MPS, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, XPU, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, XLA, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, Lazy, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, HPU, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, MTIA, m) { reject_all(m); }
TORCH_LIBRARY_IMPL(manual_ops, PrivateUse1, m) { reject_all(m); }
