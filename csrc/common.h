// Shared checks and layout helpers for the manual_ops kernels.
#pragma once

#include <ATen/ATen.h>
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

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": expected ", name,
              " to be float32 or float64, but got ", t.scalar_type());
}

inline void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, but got ", name_a, " of dtype ", a.scalar_type(), " and ", name_b,
              " of dtype ", b.scalar_type());
}

}  // namespace manual_ops
