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
}
