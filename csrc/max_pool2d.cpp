// 2-D max pooling with argmax indices, and its hand-written backward.
// Derivation: docs/derivations.md, "pooling".
#include "pooling.h"

#include <limits>
#include <tuple>

namespace manual_ops {
namespace {

// The first tap t*d of the window starting at o*s - p that lies inside [0, I), or -1.
int64_t first_tap(int64_t o, int64_t s, int64_t p, int64_t d, int64_t k, int64_t I) {
  const int64_t start = o * s - p;
  const int64_t first = start >= 0 ? start : start + (-start + d - 1) / d * d;
  return first < std::min(start + (k - 1) * d + 1, I) ? first : -1;
}

// The flat index each output starts from, as torch: the window's first in-bounds tap
// (-1 for a window lying wholly in the padding; its output stays -inf).
std::vector<int64_t> first_indices(const PoolGeometry& g) {
  std::vector<int64_t> idx(g.OH * g.OW);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const int64_t ih = first_tap(oh, g.sh, g.ph, g.dh, g.kh, g.H);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t iw = first_tap(ow, g.sw, g.pw, g.dw, g.kw, g.W);
      idx[oh * g.OW + ow] = ih < 0 || iw < 0 ? -1 : ih * g.W + iw;
    }
  }
  return idx;
}

// One tap of a running argmax over n outputs: output i compares src[i*step], found at flat
// position pos + i*pos_step. A later tap wins only if strictly greater, so the first maximum
// wins ties; a NaN always wins, so NaN propagates (torch's rule). Branch-free, so it
// vectorises; gcc (at the baseline SSE2) does so only when index_t is 32-bit.
template <typename scalar_t, typename index_t>
inline void argmax_tap(const scalar_t* __restrict__ src, int64_t step, int64_t n, index_t pos, index_t pos_step,
                       scalar_t* __restrict__ out, index_t* __restrict__ idx) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t v = src[i * step];
    const bool take = v > out[i] || v != v;
    out[i] = take ? v : out[i];
    idx[i] = take ? pos + static_cast<index_t>(i) * pos_step : idx[i];
  }
}

// Forward, NCHW: y[p, oh, ow] = max over (i, j) of x[p, oh*sh - ph + i*dh, ow*sw - pw + j*dw],
// ind = the flat position ih*W + iw of that maximum. Per plane and output row, each tap
// (i, j) sweeps the whole row of outputs it is valid for, so the inner loop runs along W.
// The running argmax lives in a per-thread index_t row (scratch allocated once per call).
template <typename scalar_t, typename index_t>
void max_pool_nchw(const scalar_t* x, scalar_t* y, int64_t* ind, const PoolGeometry& g) {
  const std::vector<int64_t> first = first_indices(g);
  std::vector<TapRange> cols(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) cols[j] = tap_range(j, g.sw, g.pw, g.dw, g.W, g.OW);
  std::vector<index_t> scratch(at::get_num_threads() * g.OW);
  const scalar_t lowest = -std::numeric_limits<scalar_t>::infinity();
  at::parallel_for(0, g.planes(), grain_for(g.OH * g.OW * g.kh * g.kw), [&](int64_t p0, int64_t p1) {
    index_t* arg = scratch.data() + at::get_thread_num() * g.OW;
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* in = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        scalar_t* out = y + (p * g.OH + oh) * g.OW;
        std::fill(out, out + g.OW, lowest);
        std::copy(first.begin() + oh * g.OW, first.begin() + (oh + 1) * g.OW, arg);
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t lo = cols[j].lo, pos = ih * g.W + lo * g.sw + j * g.dw - g.pw;
            argmax_tap<scalar_t, index_t>(in + pos, g.sw, cols[j].hi - lo, pos, g.sw, out + lo, arg + lo);
          }
        }
        std::copy(arg, arg + g.OW, ind + (p * g.OH + oh) * g.OW);
      }
    }
  });
}

// Forward, NHWC: the same max and argmax, vectorised along C; parallel over (n, oh) rows.
template <typename scalar_t, typename index_t>
void max_pool_nhwc(const scalar_t* x, scalar_t* y, int64_t* ind, const PoolGeometry& g) {
  const std::vector<int64_t> first = first_indices(g);
  const int64_t C = g.C;
  std::vector<index_t> scratch(at::get_num_threads() * C);
  const scalar_t lowest = -std::numeric_limits<scalar_t>::infinity();
  at::parallel_for(0, g.N * g.OH, grain_for(g.OW * g.kh * g.kw * C), [&](int64_t r0, int64_t r1) {
    index_t* arg = scratch.data() + at::get_thread_num() * C;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        scalar_t* out = y + (r * g.OW + ow) * C;
        std::fill(out, out + C, lowest);
        std::fill(arg, arg + C, static_cast<index_t>(first[oh * g.OW + ow]));
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t iw = ow * g.sw - g.pw + j * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            const int64_t pos = ih * g.W + iw;
            argmax_tap<scalar_t, index_t>(x + (n * g.H * g.W + pos) * C, 1, C, pos, 0, out, arg);
          }
        }
        std::copy(arg, arg + C, ind + (r * g.OW + ow) * C);
      }
    }
  });
}

std::tuple<Tensor, Tensor> max_pool2d_forward(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
              "non-empty 3D or 4D (batch mode) tensor expected for input, but got input of size ", input.sizes());
  const PoolGeometry g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::MemoryFormat fmt = memory_format_of(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out = at::empty(g.output_sizes(), input.options().memory_format(fmt));
  Tensor ind = at::empty(g.output_sizes(), input.options().dtype(at::kLong).memory_format(fmt));
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "max_pool2d_forward", [&] {
    // Running argmaxes are int32 (vectorisable) unless a plane has 2^31 or more elements.
    const bool nhwc = fmt == at::MemoryFormat::ChannelsLast, narrow = g.H * g.W <= INT32_MAX;
    auto kernel = nhwc ? (narrow ? max_pool_nhwc<scalar_t, int32_t> : max_pool_nhwc<scalar_t, int64_t>)
                       : (narrow ? max_pool_nchw<scalar_t, int32_t> : max_pool_nchw<scalar_t, int64_t>);
    kernel(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), ind.mutable_data_ptr<int64_t>(), g);
  });
  return {out, ind};
}

// Backward: dx[p, k] = sum over outputs o with ind[p, o] = k of dy[p, o]. Each output
// routes its gradient to its argmax; overlapping windows accumulate. Index -1 (a window
// wholly in the padding) routes nothing. NCHW: one plane per task, so writes never race.
template <typename scalar_t>
void max_unpool_add_nchw(const scalar_t* dy, const int64_t* ind, scalar_t* dx, int64_t planes, int64_t HW,
                         int64_t OHW) {
  at::parallel_for(0, planes, grain_for(HW + OHW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* gi = dx + p * HW;
      std::fill(gi, gi + HW, scalar_t(0));
      for (int64_t o = p * OHW; o < (p + 1) * OHW; ++o) {
        const int64_t k = ind[o];
        if (k == -1) continue;
        TORCH_CHECK(k >= 0 && k < HW, "max_pool2d_backward: index ", k, " is out of range for an input plane of ",
                    HW, " elements");
        gi[k] += dy[o];
      }
    }
  });
}

// The same routing in NHWC, dx[n, k, c] += dy[n, o, c]; one image per task.
template <typename scalar_t>
void max_unpool_add_nhwc(const scalar_t* dy, const int64_t* ind, scalar_t* dx, int64_t N, int64_t HW, int64_t OHW,
                         int64_t C) {
  at::parallel_for(0, N, grain_for((HW + OHW) * C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      scalar_t* gi = dx + n * HW * C;
      std::fill(gi, gi + HW * C, scalar_t(0));
      for (int64_t o = n * OHW * C; o < (n + 1) * OHW * C; o += C) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = ind[o + c];
          if (k == -1) continue;
          TORCH_CHECK(k >= 0 && k < HW, "max_pool2d_backward: index ", k, " is out of range for an input plane of ",
                      HW, " elements");
          gi[k * C + c] += dy[o + c];
        }
      }
    }
  });
}

Tensor max_pool2d_backward(const Tensor& grad_output, const Tensor& input, const Tensor& indices) {
  const char* op = "max_pool2d_backward";
  check_floating(op, "input", input);
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, op, ": expected a 3-D or 4-D input, but got input of size ",
              input.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": expected indices of dtype int64, but got ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == input.dim() && indices.sizes().slice(0, input.dim() - 2) ==
                                                   input.sizes().slice(0, input.dim() - 2),
              op, ": expected indices with the batch and channel sizes of input ", input.sizes(),
              ", but got indices of size ", indices.sizes());
  check_grad_output(op, grad_output, input, indices.sizes().vec());
  const at::MemoryFormat fmt = memory_format_of(input);
  const Tensor dy = grad_output.contiguous(fmt), ind = indices.contiguous(fmt);
  Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(fmt));
  const int64_t C = input.size(-3), HW = input.size(-2) * input.size(-1);
  const int64_t N = input.dim() == 4 ? input.size(0) : 1, OHW = indices.size(-2) * indices.size(-1);
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "max_pool2d_backward", [&] {
    const scalar_t* g = dy.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      max_unpool_add_nhwc<scalar_t>(g, ind.const_data_ptr<int64_t>(), gi, N, HW, OHW, C);
    } else {
      max_unpool_add_nchw<scalar_t>(g, ind.const_data_ptr<int64_t>(), gi, N * C, HW, OHW);
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
}

}  // namespace manual_ops
