// Shared geometry and argument checks for the pooling kernels (max_pool2d.cpp,
// avg_pool2d.cpp, adaptive_avg_pool2d.cpp). Derivation: docs/derivations.md, "pooling".
#pragma once

#include "common.h"

#include <vector>

namespace manual_ops {

// The in-bounds taps of one output's window along one dimension: input positions first,
// first + d, ..., first + (count - 1) d, with d the dilation (1 but for max pooling).
// count = 0: the window lies wholly in the padding.
struct Window {
  int64_t first, count;
  int64_t end() const { return first + count; }  // one past the last tap when d = 1
};

// Sizes and windows of a 2-D pooling, max, average or adaptive. A 3-D (C, H, W) input is a
// batch of one. rows[oh] and cols[ow] are the windows of each output row and column, computed
// once per call (pool_windows or adaptive_windows), so the kernels' loops neither divide nor
// test bounds. The kernel parameters are those of max and average pooling (unused by adaptive).
struct PoolGeometry {
  int64_t N, C, H, W, OH, OW;
  bool batched;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  std::vector<Window> rows, cols;

  int64_t planes() const { return N * C; }
  std::vector<int64_t> output_sizes() const {
    return batched ? std::vector<int64_t>{N, C, OH, OW} : std::vector<int64_t>{C, OH, OW};
  }
};

// floor(a / b) for b > 0 and any sign of a.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output length of a pooling along one dimension (torch's rule):
//   O = floor((I + 2p - d(k-1) - 1 + (ceil_mode ? s-1 : 0)) / s) + 1,
// and in ceil mode the last window must start inside the input or the left padding,
// i.e. (O-1)s < I + p, else it is dropped.
inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  int64_t out = floor_div(in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// For window taps at o*s - p + t*d: the range [lo, hi) of outputs o in [0, O) whose tap t
// lands inside [0, I). Lets the kernels run their inner loops without bounds tests.
struct TapRange {
  int64_t lo, hi;
};

inline TapRange tap_range(int64_t t, int64_t s, int64_t p, int64_t d, int64_t I, int64_t O) {
  const int64_t off = t * d - p;                              // input position of the tap for o = 0
  const int64_t lo = std::max<int64_t>(0, floor_div(-off + s - 1, s));  // o*s + off >= 0
  const int64_t hi = std::min<int64_t>(O, floor_div(I - 1 - off, s) + 1);  // o*s + off <= I-1
  return {lo, std::max(lo, hi)};
}

// The windows of a fixed-size pooling along one dimension: output o taps o*s - p + t*d,
// t in [0, k), of which those inside [0, I) count.
inline std::vector<Window> pool_windows(int64_t I, int64_t O, int64_t k, int64_t s, int64_t p, int64_t d) {
  std::vector<Window> windows(O);
  for (int64_t o = 0; o < O; ++o) {
    const int64_t start = o * s - p;
    const int64_t t0 = start >= 0 ? 0 : (-start + d - 1) / d;              // first tap at or past 0
    const int64_t t1 = std::min(k, start > I - 1 ? 0 : (I - 1 - start) / d + 1);  // past the last tap before I
    windows[o] = {start + t0 * d, std::max<int64_t>(0, t1 - t0)};
  }
  return windows;
}

// The windows of adaptive pooling: output o of O over I covers [floor(o*I/O), ceil((o+1)*I/O)).
inline std::vector<Window> adaptive_windows(int64_t I, int64_t O) {
  std::vector<Window> windows(O);
  for (int64_t o = 0; o < O; ++o) {
    const int64_t first = o * I / O;
    windows[o] = {first, ((o + 1) * I + O - 1) / O - first};
  }
  return windows;
}

inline void check_pool_arg_sizes(const char* op, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                                 IntArrayRef dilation) {
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": expected kernel_size, stride, padding and dilation of 2 values each, but got kernel_size=",
              kernel_size, ", stride=", stride, ", padding=", padding, ", dilation=", dilation);
}

// Checks a 2-D pooling in torch's order and with torch's messages, then returns its geometry.
inline PoolGeometry pool2d_geometry(const char* op, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                    IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  check_pool_arg_sizes(op, kernel_size, stride, padding, dilation);
  check_floating(op, "input", input);
  const int64_t ndim = input.dim();
  const char* rank_message = "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:";
  TORCH_CHECK(ndim == 3 || ndim == 4, rank_message, input.sizes());
  PoolGeometry g;
  g.batched = ndim == 4;
  g.N = g.batched ? input.size(0) : 1;
  g.C = input.size(-3), g.H = input.size(-2), g.W = input.size(-1);
  g.kh = kernel_size[0], g.kw = kernel_size[1], g.sh = stride[0], g.sw = stride[1];
  g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  const int64_t k[2] = {g.kh, g.kw}, s[2] = {g.sh, g.sw}, p[2] = {g.ph, g.pw}, d[2] = {g.dh, g.dw};
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(s[i] != 0, "stride should not be zero");
    TORCH_CHECK(p[i] >= 0, "pad must be non-negative, but got pad: ", p[i]);
    TORCH_CHECK(p[i] <= ((k[i] - 1) * d[i] + 1) / 2,
                "pad should be at most half of effective kernel size, but got pad=", p[i], ", kernel_size=", k[i],
                " and dilation=", d[i]);
  }
  TORCH_CHECK(g.kh > 0 && g.kw > 0, "kernel size should be greater than zero, but got kH: ", g.kh, " kW: ", g.kw);
  TORCH_CHECK(g.sh > 0 && g.sw > 0, "stride should be greater than zero, but got dH: ", g.sh, " dW: ", g.sw);
  TORCH_CHECK(g.dh > 0 && g.dw > 0, "dilation should be greater than zero, but got dilationH: ", g.dh,
              " dilationW: ", g.dw);
  TORCH_CHECK(g.C > 0 && g.H > 0 && g.W > 0, rank_message, input.sizes());
  TORCH_CHECK(g.kw / 2 >= g.pw && g.kh / 2 >= g.ph,
              "pad should be smaller than or equal to half of kernel size, but got padW = ", g.pw, ", padH = ", g.ph,
              ", kW = ", g.kw, ", kH = ", g.kh);
  g.OH = pool_output_size(g.H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  g.OW = pool_output_size(g.W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TORCH_CHECK(g.OH >= 1 && g.OW >= 1, "Given input size: (", g.C, "x", g.H, "x", g.W, "). Calculated output size: (",
              g.C, "x", g.OH, "x", g.OW, "). Output size is too small");
  g.rows = pool_windows(g.H, g.OH, g.kh, g.sh, g.ph, g.dh);
  g.cols = pool_windows(g.W, g.OW, g.kw, g.sw, g.pw, g.dw);
  return g;
}

// at::parallel_for grain, in items, for items of `work` elements each.
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work));
}

// Checks that grad_output has the forward output's sizes and input's dtype.
inline void check_grad_output(const char* op, const Tensor& grad_output, const Tensor& input,
                              const std::vector<int64_t>& expected) {
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  const IntArrayRef expected_sizes(expected);
  TORCH_CHECK(grad_output.sizes() == expected_sizes, op, ": expected grad_output of size ", expected_sizes,
              ", but got grad_output of size ", grad_output.sizes());
}

// The layout and dtype dispatch of every pooling op: `src` read densely in input's layout
// (channels-last stays channels-last: memory_format_of), a new output of `sizes` in that layout,
// and kernel(nhwc, src, out) called with pointers of input's dtype. Returns the output.
template <typename Kernel>
Tensor run_pooling(const Tensor& input, const Tensor& src, IntArrayRef sizes, const Kernel& kernel) {
  const at::MemoryFormat fmt = memory_format_of(input);
  const Tensor dense = src.contiguous(fmt);
  Tensor out = at::empty(sizes, input.options().memory_format(fmt));
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "pooling", [&] {
    kernel(fmt == at::MemoryFormat::ChannelsLast, dense.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace manual_ops
