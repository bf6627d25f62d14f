// 2-D max pooling with argmax indices, and its hand-written backward.
// Derivation: docs/derivations.md, "pooling".
#include "pooling.h"

#include <limits>
#include <tuple>

namespace manual_ops {
namespace {

// The flat index the running argmax of output (oh, ow) starts from, as torch: its window's first
// in-bounds tap (-1 for a window lying wholly in the padding; its output stays -inf).
inline int64_t first_index(const PoolGeometry& g, int64_t oh, int64_t ow) {
  const Window r = g.rows[oh], c = g.cols[ow];
  return r.count == 0 || c.count == 0 ? -1 : r.first * g.W + c.first;
}

// One tap of a running argmax over n outputs: output i compares src[i*step], found at flat
// position pos + i*pos_step. A later tap wins only if strictly greater, so the first maximum
// wins ties; a NaN always wins, so NaN propagates (torch's rule). Branch-free, so it
// vectorises; gcc (at the baseline SSE2) does so only when index_t is 32-bit.
template <typename scalar_t, typename index_t, typename opmath_t = at::opmath_type<scalar_t>>
inline void argmax_tap(const scalar_t* __restrict__ src, int64_t step, int64_t n, index_t pos, index_t pos_step,
                       opmath_t* __restrict__ out, index_t* __restrict__ idx) {
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t v = src[i * step];
    const bool take = v > out[i] || v != v;
    out[i] = take ? v : out[i];
    idx[i] = take ? pos + static_cast<index_t>(i) * pos_step : idx[i];
  }
}

// Forward, NCHW: y[p, oh, ow] = max over (i, j) of x[p, oh*sh - ph + i*dh, ow*sw - pw + j*dw],
// ind = the flat position ih*W + iw of that maximum. Per plane and output row, each in-bounds
// row tap ih of the window and each column tap j sweeps the whole row of outputs j is valid
// for (tap_range), so the inner loop runs along W without bounds tests. The running argmax
// and the running maximum (in opmath_t: float32 for bfloat16 and float16, so that the compares
// need no conversions) live in rows allocated per chunk of planes.
template <typename scalar_t, typename index_t>
void max_pool_nchw(const scalar_t* x, scalar_t* y, int64_t* ind, const PoolGeometry& g) {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<TapRange> cols(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) cols[j] = tap_range(j, g.sw, g.pw, g.dw, g.W, g.OW);
  const opmath_t lowest = -std::numeric_limits<opmath_t>::infinity();
  at::parallel_for(0, g.planes(), grain_for(g.OH * g.OW * g.kh * g.kw), [&](int64_t p0, int64_t p1) {
    std::vector<index_t> arg(g.OW);
    std::vector<opmath_t> best(g.OW);
    opmath_t* out = best.data();
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* in = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        std::fill(out, out + g.OW, lowest);
        for (int64_t ow = 0; ow < g.OW; ++ow) arg[ow] = static_cast<index_t>(first_index(g, oh, ow));
        const Window rows = g.rows[oh];
        for (int64_t ih = rows.first; ih < rows.first + rows.count * g.dh; ih += g.dh) {
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t lo = cols[j].lo, pos = ih * g.W + lo * g.sw + j * g.dw - g.pw;
            argmax_tap<scalar_t, index_t>(in + pos, g.sw, cols[j].hi - lo, pos, g.sw, out + lo, arg.data() + lo);
          }
        }
        std::copy(best.begin(), best.end(), y + (p * g.OH + oh) * g.OW);  // exact: each is one of the inputs
        std::copy(arg.begin(), arg.end(), ind + (p * g.OH + oh) * g.OW);
      }
    }
  });
}

// Forward, NHWC: the same max and argmax over each window's in-bounds taps, vectorised along C;
// parallel over (n, oh) rows, the running argmax and maximum in rows allocated per chunk.
template <typename scalar_t, typename index_t>
void max_pool_nhwc(const scalar_t* x, scalar_t* y, int64_t* ind, const PoolGeometry& g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C;
  const opmath_t lowest = -std::numeric_limits<opmath_t>::infinity();
  at::parallel_for(0, g.N * g.OH, grain_for(g.OW * g.kh * g.kw * C), [&](int64_t r0, int64_t r1) {
    std::vector<index_t> arg(C);
    std::vector<opmath_t> best(C);
    opmath_t* out = best.data();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      const Window rows = g.rows[oh];
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window cols = g.cols[ow];
        std::fill(out, out + C, lowest);
        std::fill(arg.begin(), arg.end(), static_cast<index_t>(first_index(g, oh, ow)));
        for (int64_t ih = rows.first; ih < rows.first + rows.count * g.dh; ih += g.dh) {
          for (int64_t iw = cols.first; iw < cols.first + cols.count * g.dw; iw += g.dw) {
            const int64_t pos = ih * g.W + iw;
            argmax_tap<scalar_t, index_t>(x + (n * g.H * g.W + pos) * C, 1, C, pos, 0, out, arg.data());
          }
        }
        std::copy(best.begin(), best.end(), y + (r * g.OW + ow) * C);
        std::copy(arg.begin(), arg.end(), ind + (r * g.OW + ow) * C);
      }
    }
  });
}

std::tuple<Tensor, Tensor> max_pool2d_forward(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
              "non-empty 3D or 4D (batch mode) tensor expected for input, but got input of size ", input.sizes());
  const PoolGeometry g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  Tensor ind = at::empty(g.output_sizes(), input.options().dtype(at::kLong).memory_format(memory_format_of(input)));
  Tensor out = run_pooling(input, input, g.output_sizes(), [&](bool nhwc, const auto* x, auto* y) {
    using scalar_t = std::remove_pointer_t<decltype(y)>;
    // Running argmaxes are int32 (vectorisable) unless a plane has 2^31 or more elements.
    const bool narrow = g.H * g.W <= INT32_MAX;
    auto kernel = nhwc ? (narrow ? max_pool_nhwc<scalar_t, int32_t> : max_pool_nhwc<scalar_t, int64_t>)
                       : (narrow ? max_pool_nchw<scalar_t, int32_t> : max_pool_nchw<scalar_t, int64_t>);
    kernel(x, y, ind.mutable_data_ptr<int64_t>(), g);
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
  const Tensor ind = indices.contiguous(memory_format_of(input));
  const int64_t C = input.size(-3), HW = input.size(-2) * input.size(-1);
  const int64_t N = input.dim() == 4 ? input.size(0) : 1, OHW = indices.size(-2) * indices.size(-1);
  Tensor grad_input = run_pooling(input, grad_output, input.sizes(), [&](bool nhwc, const auto* dy, auto* dx) {
    if (nhwc) {
      max_unpool_add_nhwc(dy, ind.const_data_ptr<int64_t>(), dx, N, HW, OHW, C);
    } else {
      max_unpool_add_nchw(dy, ind.const_data_ptr<int64_t>(), dx, N * C, HW, OHW);
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
