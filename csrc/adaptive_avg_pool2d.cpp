// 2-D adaptive average pooling and its hand-written backward.
// Derivation: docs/derivations.md, "pooling".
#include "cpu/pool_sum_kernel.h"
#include "pooling.h"

#include <ATen/AccumulateType.h>

namespace manual_ops {

template <typename T>
KernelStub<chunk_sum_fn<T>> PoolSumStubs<T>::chunk_sum{};
template <typename T>
KernelStub<add_row_fn<T>> PoolSumStubs<T>::add_row{};
template struct PoolSumStubs<float>;
template struct PoolSumStubs<double>;
template struct PoolSumStubs<c10::BFloat16>;
template struct PoolSumStubs<c10::Half>;

namespace {

constexpr int64_t kChunk = 256;  // values summed in opmath_t before their total is added in acc_t

// Sum of a contiguous run in the accumulation type acc_t (float64 for float32), as a window can be
// the whole plane: chunks of up to kChunk values are summed in opmath_t in vector lanes (chunk_sum),
// and each chunk's total is added in acc_t.
template <typename scalar_t, typename acc_t = at::acc_type<scalar_t, false>>
acc_t run_sum(const scalar_t* p, int64_t n) {
  acc_t total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) total += PoolSumStubs<scalar_t>::chunk_sum(p + c0, std::min(kChunk, n - c0));
  return total;
}

// Forward, NCHW: y[p, oh, ow] = (1 / |R||S|) * sum over ih in R(oh), iw in S(ow) of x[p, ih, iw],
// with R, S the adaptive windows, summed by run_sum. A window spanning full rows is one
// contiguous run.
template <typename scalar_t>
void adaptive_avg_nchw(const scalar_t* x, scalar_t* y, const PoolGeometry& g) {
  at::parallel_for(0, g.N * g.C, grain_for(g.H * g.W + g.OH * g.OW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* in = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = g.rows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = g.cols[ow];
          at::acc_type<scalar_t, false> sum = 0;
          if (cols.count == g.W) {
            sum = run_sum(in + rows.first * g.W, rows.count * g.W);
          } else {
            for (int64_t ih = rows.first; ih < rows.end(); ++ih) sum += run_sum(in + ih * g.W + cols.first, cols.count);
          }
          y[(p * g.OH + oh) * g.OW + ow] = static_cast<scalar_t>(sum / (rows.count * cols.count));
        }
      }
    }
  });
}

// Forward, NHWC: the same averages, vectorised along C: the taps of a window are added into an
// opmath_t row, whose total every kChunk taps is added into an acc_t row (rows allocated per
// chunk); parallel over (n, oh) rows.
template <typename scalar_t>
void adaptive_avg_nhwc(const scalar_t* x, scalar_t* y, const PoolGeometry& g) {
  using acc_t = at::acc_type<scalar_t, false>;
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C;
  const int64_t row_work = (g.H / std::max<int64_t>(1, g.OH) + 1) * g.W * C;
  at::parallel_for(0, g.N * g.OH, grain_for(row_work), [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> acc(C);
    std::vector<opmath_t> part(C);
    auto flush = [&] {
      for (int64_t c = 0; c < C; ++c) acc[c] += part[c];
      std::fill(part.begin(), part.end(), opmath_t(0));
    };
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      const Window rows = g.rows[oh];
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window cols = g.cols[ow];
        std::fill(acc.begin(), acc.end(), acc_t(0));
        int64_t taps = 0;
        for (int64_t ih = rows.first; ih < rows.end(); ++ih) {
          for (int64_t iw = cols.first; iw < cols.end(); ++iw) {
            PoolSumStubs<scalar_t>::add_row(part.data(), x + ((n * g.H + ih) * g.W + iw) * C, C);
            if (++taps % kChunk == 0) flush();
          }
        }
        flush();
        const acc_t area = static_cast<acc_t>(rows.count * cols.count);
        scalar_t* out = y + (r * g.OW + ow) * C;
        for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(acc[c] / area);
      }
    }
  });
}

// Adds v to (or, for assign, writes v into) dst[0, n).
template <typename scalar_t>
inline void spread(scalar_t* dst, int64_t n, scalar_t v, bool assign) {
  if (assign) {
    std::fill(dst, dst + n, v);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] += v;
  }
}

// Backward, NCHW: dx[p, ih, iw] = sum over (oh, ow) whose windows contain (ih, iw) of
// dy[p, oh, ow] / (|R(oh)||S(ow)|). When O divides I in both dimensions the windows tile the
// plane and each element is written once; otherwise they overlap, and the plane is zeroed
// and accumulated. One plane per task, so no write races.
template <typename scalar_t>
void adaptive_avg_backward_nchw(const scalar_t* dy, scalar_t* dx, const PoolGeometry& g) {
  const bool tiles = g.OH > 0 && g.OW > 0 && g.H % g.OH == 0 && g.W % g.OW == 0;
  at::parallel_for(0, g.N * g.C, grain_for(2 * g.H * g.W + g.OH * g.OW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* gi = dx + p * g.H * g.W;
      if (!tiles) std::fill(gi, gi + g.H * g.W, scalar_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = g.rows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = g.cols[ow];
          using opmath_t = at::opmath_type<scalar_t>;
          const scalar_t grad = static_cast<scalar_t>(opmath_t(dy[(p * g.OH + oh) * g.OW + ow]) /
                                                      static_cast<opmath_t>(rows.count * cols.count));
          if (cols.count == g.W) {
            spread(gi + rows.first * g.W, rows.count * g.W, grad, tiles);
          } else {
            for (int64_t ih = rows.first; ih < rows.end(); ++ih) {
              spread(gi + ih * g.W + cols.first, cols.count, grad, tiles);
            }
          }
        }
      }
    }
  });
}

// Backward, NHWC: the same spreading, vectorised along C: each output's dy[n, oh, ow, :] / area
// is formed once (rounded to scalar_t, as in NCHW) into a row allocated per chunk, then written
// (tiling windows) or added to each tap of the window; one image per task.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void adaptive_avg_backward_nhwc(const scalar_t* dy, scalar_t* dx, const PoolGeometry& g) {
  const int64_t C = g.C;
  const bool tiles = g.OH > 0 && g.OW > 0 && g.H % g.OH == 0 && g.W % g.OW == 0;
  at::parallel_for(0, g.N, grain_for((2 * g.H * g.W + g.OH * g.OW) * C), [&](int64_t n0, int64_t n1) {
    std::vector<scalar_t> scaled(C);
    for (int64_t n = n0; n < n1; ++n) {
      if (!tiles) std::fill(dx + n * g.H * g.W * C, dx + (n + 1) * g.H * g.W * C, scalar_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = g.rows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = g.cols[ow];
          const opmath_t area = static_cast<opmath_t>(rows.count * cols.count);
          const scalar_t* grad = dy + ((n * g.OH + oh) * g.OW + ow) * C;
          for (int64_t c = 0; c < C; ++c) scaled[c] = static_cast<scalar_t>(opmath_t(grad[c]) / area);
          for (int64_t ih = rows.first; ih < rows.end(); ++ih) {
            for (int64_t iw = cols.first; iw < cols.end(); ++iw) {
              scalar_t* dst = dx + ((n * g.H + ih) * g.W + iw) * C;
              if (tiles) {
                std::copy(scaled.begin(), scaled.end(), dst);
              } else {
                for (int64_t c = 0; c < C; ++c) dst[c] += scaled[c];
              }
            }
          }
        }
      }
    }
  });
}

// torch's checks, order and messages for adaptive_avg_pool2d, and the geometry.
PoolGeometry adaptive_geometry(const char* op, const Tensor& input, IntArrayRef output_size) {
  TORCH_CHECK(output_size.size() == 2, "adaptive_avg_pool2d: output_size must be 2");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0,
              "adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but received {",
              output_size[0], ", ", output_size[1], "}");
  const int64_t ndim = input.dim();
  TORCH_CHECK(ndim == 3 || ndim == 4, "adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got ", input.sizes());
  for (int64_t d = ndim - 2; d < ndim; ++d) {
    TORCH_CHECK(input.size(d) > 0, "adaptive_avg_pool2d(): Expected input to have non-zero size for non-batch ",
                "dimensions, but input has sizes ", input.sizes(), " with dimension ", d, " being empty");
  }
  check_floating(op, "input", input);
  PoolGeometry g;
  g.batched = ndim == 4;
  g.N = g.batched ? input.size(0) : 1;
  g.C = input.size(-3), g.H = input.size(-2), g.W = input.size(-1), g.OH = output_size[0], g.OW = output_size[1];
  g.rows = adaptive_windows(g.H, g.OH);
  g.cols = adaptive_windows(g.W, g.OW);
  return g;
}

Tensor adaptive_avg_pool2d_forward(const Tensor& input, IntArrayRef output_size) {
  const PoolGeometry g = adaptive_geometry("adaptive_avg_pool2d", input, output_size);
  return run_pooling(input, input, g.output_sizes(),
                     [&](bool nhwc, const auto* x, auto* y) {
                       using scalar_t = std::remove_pointer_t<decltype(y)>;
                       (nhwc ? adaptive_avg_nhwc<scalar_t> : adaptive_avg_nchw<scalar_t>)(x, y, g);
                     });
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Tensor& input) {
  const char* op = "adaptive_avg_pool2d_backward";
  TORCH_CHECK((input.dim() == 3 || input.dim() == 4) && grad_output.dim() == input.dim(), op,
              ": expected a 3-D or 4-D input and a grad_output of as many dimensions, but got input of size ",
              input.sizes(), " and grad_output of size ", grad_output.sizes());
  const PoolGeometry g = adaptive_geometry(op, input, grad_output.sizes().slice(input.dim() - 2));
  check_grad_output(op, grad_output, input, g.output_sizes());
  return run_pooling(input, grad_output, input.sizes(), [&](bool nhwc, const auto* dy, auto* dx) {
    using scalar_t = std::remove_pointer_t<decltype(dx)>;
    (nhwc ? adaptive_avg_backward_nhwc<scalar_t> : adaptive_avg_backward_nchw<scalar_t>)(dy, dx, g);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
}

}  // namespace manual_ops
