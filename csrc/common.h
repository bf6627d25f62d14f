// Shared checks and layout helpers for the manual_ops kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace manual_ops {

using at::IntArrayRef;
using at::Tensor;

// True when `t` is 4-D and torch's layout rule, suggest_memory_format, calls it channels-last: it reads the
// strides themselves, the size-1 dimensions' too, so that a tensor whose strides are ambiguous (C = 1, or
// H = W = 1) keeps the layout it was made in, as in torch. Outputs and gradients follow this rule (conv2d's
// when its input or its weight is channels-last, as torch's), and the Python fake kernels mirror it exactly.
inline bool is_channels_last(const Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::MemoryFormat memory_format_of(const Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A dense copy of `t` (itself when already dense): dense tensors of equal strides can be walked as
// flat arrays of numel() elements from data_ptr() (the elementwise ops: relu, the activations).
inline Tensor dense(const Tensor& t) { return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t); }

// f(x) on a dense x holding `self`'s values, which an in-place elementwise kernel overwrites: `self` itself
// when it is dense, else a dense copy written back into `self` afterwards.
template <typename F>
void in_place_dense(Tensor& self, const F& f) {
  Tensor x = dense(self);
  f(x);
  if (!x.is_same(self)) self.copy_(x);
}

// `t` with the strides of the dense `like` (itself when it has them already).
inline Tensor strided_like(const Tensor& t, const Tensor& like) {
  return t.strides() == like.strides() ? t : at::empty_like(like).copy_(t);
}

// The dense tensor whose strides an elementwise op's result takes, as torch's TensorIterator picks them for
// two operands: the first one's where it is dense, else the second's (a dense copy of it when it is not
// dense itself: an expanded gradient of a sum, say, has no order of its own). Which operand comes first
// follows torch's kernel: threshold_backward(self, grad) for relu, sigmoid_backward(grad, output) and the
// like for the activations.
inline Tensor elementwise_layout(const Tensor& first, const Tensor& second) {
  return first.is_non_overlapping_and_dense() ? first : dense(second);
}

// The layout of conv2d's output and of both its gradients, as torch's (mkldnn_conv_use_channels_last and
// thnn_conv_use_channels_last): channels-last when the input or the weight is; but a 1x1 kernel's gradient
// (whose strides are ambiguous) is laid out as the weight itself, as torch's is (tests/test_layouts.py).
inline at::MemoryFormat conv_memory_format(const Tensor& input, const Tensor& weight) {
  return is_channels_last(input) || is_channels_last(weight) ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous;
}

inline at::MemoryFormat conv_grad_weight_format(const Tensor& input, const Tensor& weight) {
  return weight.size(2) == 1 && weight.size(3) == 1 ? memory_format_of(weight) : conv_memory_format(input, weight);
}

// Every kernel runs in these four dtypes: float32 and float64, and bfloat16 and float16,
// which are only storage: arithmetic on them is done in float32 (at::opmath_type<scalar_t>).
#define MANUAL_OPS_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

inline bool is_reduced_floating(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// Whether the kernels run in dtype t (the four above).
inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kDouble || is_reduced_floating(t); }

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK(is_kernel_dtype(s), op, ": expected ", name,
              " to be float32, float64, bfloat16 or float16, but got ", s);
}

inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, but got ", name_a, " of dtype ", a.scalar_type(), " and ", name_b,
              " of dtype ", b.scalar_type());
}

}  // namespace manual_ops
