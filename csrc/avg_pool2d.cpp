// 2-D average pooling and its hand-written backward.
// Derivation: docs/derivations.md, "pooling".
//
// Sums and divisions are in opmath_t (float32 for bfloat16 and float16), in rows (forward) or
// planes (backward) of scratch allocated per chunk of work, rounded once into the output.
#include "pooling.h"

#include <optional>
#include <type_traits>

namespace manual_ops {
namespace {

// The divisor of output (oh, ow) factors as h[oh] * w[ow]:
//   divisor_override            -> d (put in h, with w = 1);
//   count_include_pad           -> (min(start + k, I + p) - start) per dimension, start = o*s - p:
//                                  the window including padding, but never the overhang ceil_mode adds;
//   otherwise                   -> the number of in-bounds elements per dimension (the window's count).
template <typename opmath_t>
struct Divisors {
  std::vector<opmath_t> h, w;
};

template <typename opmath_t>
std::vector<opmath_t> divisors_1d(const std::vector<Window>& windows, int64_t s, int64_t p, int64_t k, int64_t I,
                                  bool count_include_pad) {
  std::vector<opmath_t> div(windows.size());
  for (size_t o = 0; o < windows.size(); ++o) {
    const int64_t start = static_cast<int64_t>(o) * s - p;
    div[o] = static_cast<opmath_t>(count_include_pad ? std::min(start + k, I + p) - start : windows[o].count);
  }
  return div;
}

template <typename opmath_t>
Divisors<opmath_t> divisors(const PoolGeometry& g, bool count_include_pad, std::optional<int64_t> divisor_override) {
  if (divisor_override) {
    return {std::vector<opmath_t>(g.OH, static_cast<opmath_t>(*divisor_override)), std::vector<opmath_t>(g.OW, 1)};
  }
  return {divisors_1d<opmath_t>(g.rows, g.sh, g.ph, g.kh, g.H, count_include_pad),
          divisors_1d<opmath_t>(g.cols, g.sw, g.pw, g.kw, g.W, count_include_pad)};
}

std::vector<TapRange> column_taps(const PoolGeometry& g) {
  std::vector<TapRange> cols(g.kw);
  for (int64_t j = 0; j < g.kw; ++j) cols[j] = tap_range(j, g.sw, g.pw, 1, g.W, g.OW);
  return cols;
}

// Rounds n opmath_t values into scalar_t.
template <typename scalar_t, typename opmath_t>
inline void round_into(const opmath_t* src, int64_t n, scalar_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Forward, NCHW: y[p, oh, ow] = (1 / div[oh, ow]) * sum over in-bounds (ih, iw) of the
// window x[p, ih, iw]. Per output row, each column tap j sweeps the outputs it is valid for
// (tap_range), so the inner loop runs along W without bounds tests; the sum is accumulated in
// an opmath_t row (a window of kh*kw terms, in torch's order: ih, then iw).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_pool_nchw(const scalar_t* x, scalar_t* y, const PoolGeometry& g, const Divisors<opmath_t>& div) {
  const std::vector<TapRange> cols = column_taps(g);
  at::parallel_for(0, g.planes(), grain_for(g.OH * g.OW * g.kh * g.kw), [&](int64_t p0, int64_t p1) {
    std::vector<opmath_t> acc(g.OW);
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        std::fill(acc.begin(), acc.end(), opmath_t(0));
        for (int64_t ih = g.rows[oh].first; ih < g.rows[oh].end(); ++ih) {
          for (int64_t j = 0; j < g.kw; ++j) {
            const scalar_t* src = x + (p * g.H + ih) * g.W + j - g.pw;
            for (int64_t ow = cols[j].lo; ow < cols[j].hi; ++ow) acc[ow] += opmath_t(src[ow * g.sw]);
          }
        }
        const opmath_t dh = div.h[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) acc[ow] /= dh * div.w[ow];
        round_into(acc.data(), g.OW, y + (p * g.OH + oh) * g.OW);
      }
    }
  });
}

// Forward, NHWC: the same average, vectorised along C; parallel over (n, oh) rows.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_pool_nhwc(const scalar_t* x, scalar_t* y, const PoolGeometry& g, const Divisors<opmath_t>& div) {
  const int64_t C = g.C;
  at::parallel_for(0, g.N * g.OH, grain_for(g.OW * g.kh * g.kw * C), [&](int64_t r0, int64_t r1) {
    std::vector<opmath_t> acc(C);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      const Window rows = g.rows[oh];
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window cols = g.cols[ow];
        std::fill(acc.begin(), acc.end(), opmath_t(0));
        for (int64_t ih = rows.first; ih < rows.end(); ++ih) {
          for (int64_t iw = cols.first; iw < cols.end(); ++iw) {
            const scalar_t* src = x + ((n * g.H + ih) * g.W + iw) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += opmath_t(src[c]);
          }
        }
        const opmath_t d = div.h[oh] * div.w[ow];
        for (int64_t c = 0; c < C; ++c) acc[c] /= d;
        round_into(acc.data(), C, y + (r * g.OW + ow) * C);
      }
    }
  });
}

// Backward, NCHW: dx[p, ih, iw] = sum over windows (oh, ow) containing (ih, iw) of
// dy[p, oh, ow] / div[oh, ow]: each output spreads its gradient evenly over its window
// (for a 2x2, stride-2 pool: the 1/4 upsampling). Per output row the quotients are formed once,
// then each tap sweeps them. One plane per task, so no write races; the plane is accumulated in
// opmath_t (in dx itself when that is scalar_t, else in a plane allocated per chunk).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_pool_backward_nchw(const scalar_t* dy, scalar_t* dx, const PoolGeometry& g, const Divisors<opmath_t>& div) {
  constexpr bool in_place = std::is_same_v<scalar_t, opmath_t>;
  const std::vector<TapRange> cols = column_taps(g);
  at::parallel_for(0, g.planes(), grain_for(g.H * g.W + g.OH * g.OW * g.kh * g.kw), [&](int64_t p0, int64_t p1) {
    std::vector<opmath_t> scratch(in_place ? 0 : g.H * g.W), quotient(g.OW);
    for (int64_t p = p0; p < p1; ++p) {
      opmath_t* plane = in_place ? reinterpret_cast<opmath_t*>(dx + p * g.H * g.W) : scratch.data();
      std::fill(plane, plane + g.H * g.W, opmath_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const scalar_t* grad = dy + (p * g.OH + oh) * g.OW;
        const opmath_t dh = div.h[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) quotient[ow] = opmath_t(grad[ow]) / (dh * div.w[ow]);
        for (int64_t ih = g.rows[oh].first; ih < g.rows[oh].end(); ++ih) {
          for (int64_t j = 0; j < g.kw; ++j) {
            opmath_t* __restrict dst = plane + ih * g.W + j - g.pw;
            const opmath_t* __restrict q = quotient.data();
            for (int64_t ow = cols[j].lo; ow < cols[j].hi; ++ow) dst[ow * g.sw] += q[ow];
          }
        }
      }
      if constexpr (!in_place) round_into(plane, g.H * g.W, dx + p * g.H * g.W);
    }
  });
}

// Backward, NHWC: the same spreading, vectorised along C; one image per task.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_pool_backward_nhwc(const scalar_t* dy, scalar_t* dx, const PoolGeometry& g, const Divisors<opmath_t>& div) {
  constexpr bool in_place = std::is_same_v<scalar_t, opmath_t>;
  const int64_t C = g.C, image = g.H * g.W * C;
  at::parallel_for(0, g.N, grain_for((g.H * g.W + g.OH * g.OW * g.kh * g.kw) * C), [&](int64_t n0, int64_t n1) {
    std::vector<opmath_t> scratch(in_place ? 0 : image), quotient(C);
    for (int64_t n = n0; n < n1; ++n) {
      opmath_t* acc = in_place ? reinterpret_cast<opmath_t*>(dx + n * image) : scratch.data();
      std::fill(acc, acc + image, opmath_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = g.rows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const scalar_t* grad = dy + ((n * g.OH + oh) * g.OW + ow) * C;
          const opmath_t d = div.h[oh] * div.w[ow];
          for (int64_t c = 0; c < C; ++c) quotient[c] = opmath_t(grad[c]) / d;
          const Window cols = g.cols[ow];
          for (int64_t ih = rows.first; ih < rows.end(); ++ih) {
            for (int64_t iw = cols.first; iw < cols.end(); ++iw) {
              opmath_t* dst = acc + (ih * g.W + iw) * C;
              for (int64_t c = 0; c < C; ++c) dst[c] += quotient[c];
            }
          }
        }
      }
      if constexpr (!in_place) round_into(acc, image, dx + n * image);
    }
  });
}

PoolGeometry avg_geometry(const char* op, const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                          IntArrayRef padding, bool ceil_mode, std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override || *divisor_override != 0, "divisor must be not zero");
  return pool2d_geometry(op, input, kernel_size, stride, padding, {1, 1}, ceil_mode);
}

Tensor avg_pool2d_forward(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                          bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolGeometry g = avg_geometry("avg_pool2d", input, kernel_size, stride, padding, ceil_mode, divisor_override);
  return run_pooling(input, input, g.output_sizes(), [&](bool nhwc, const auto* x, auto* y) {
    using scalar_t = std::remove_pointer_t<decltype(y)>;
    const auto div = divisors<at::opmath_type<scalar_t>>(g, count_include_pad, divisor_override);
    (nhwc ? avg_pool_nhwc<scalar_t> : avg_pool_nchw<scalar_t>)(x, y, g, div);
  });
}

Tensor avg_pool2d_backward(const Tensor& grad_output, const Tensor& input, IntArrayRef kernel_size,
                           IntArrayRef stride, IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  const char* op = "avg_pool2d_backward";
  const PoolGeometry g = avg_geometry(op, input, kernel_size, stride, padding, ceil_mode, divisor_override);
  check_grad_output(op, grad_output, input, g.output_sizes());
  return run_pooling(input, grad_output, input.sizes(), [&](bool nhwc, const auto* dy, auto* dx) {
    using scalar_t = std::remove_pointer_t<decltype(dx)>;
    const auto div = divisors<at::opmath_type<scalar_t>>(g, count_include_pad, divisor_override);
    (nhwc ? avg_pool_backward_nhwc<scalar_t> : avg_pool_backward_nchw<scalar_t>)(dy, dx, g, div);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("avg_pool2d_forward", &avg_pool2d_forward);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
}

}  // namespace manual_ops
