// The manual_ops operator library: every schema lives here; each op family's
// file registers its CPU kernels with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

// `import manual_ops._C` loads this shared library, which runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
  // Returns (loss, lse): lse is the float64 log-sum-exp of each row's logits, for the backward.
  m.def(
      "cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, str reduction, int ignore_index, "
      "float label_smoothing) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
      "str reduction, int ignore_index, float label_smoothing, bool[2] output_mask) -> (Tensor, Tensor)");
}
