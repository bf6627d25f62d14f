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

// True when `t` is 4-D and laid out channels-last (NHWC in memory) but not also
// plain contiguous. Outputs and gradients follow this rule, and the Python fake
// kernels mirror it exactly.
inline bool is_channels_last(const Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

inline at::MemoryFormat memory_format_of(const Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A dense copy of `t` (itself when already dense): dense tensors of equal strides can be walked as
// flat arrays of numel() elements from data_ptr() (the elementwise ops: relu, the activations).
inline Tensor dense(const Tensor& t) { return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t); }

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

// Every kernel runs in these four dtypes: float32 and float64, and bfloat16 and float16,
// which are only storage: arithmetic on them is done in float32 (at::opmath_type<scalar_t>).
#define MANUAL_OPS_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

inline bool is_reduced_floating(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || is_reduced_floating(s), op, ": expected ", name,
              " to be float32, float64, bfloat16 or float16, but got ", s);
}

inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, but got ", name_a, " of dtype ", a.scalar_type(), " and ", name_b,
              " of dtype ", b.scalar_type());
}

}  // namespace manual_ops
