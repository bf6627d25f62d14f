// 2-D adaptive average pooling and its hand-written backward.
// Derivation: docs/derivations.md, "pooling".
#include "pooling.h"

#include <ATen/AccumulateType.h>

namespace manual_ops {
namespace {

// Output o of O over an input of I covers [floor(o*I/O), ceil((o+1)*I/O)).
struct Window {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

// The windows of all O outputs, computed once per call (the divisions are not cheap).
std::vector<Window> adaptive_windows(int64_t I, int64_t O) {
  std::vector<Window> windows(O);
  for (int64_t o = 0; o < O; ++o) windows[o] = {o * I / O, ((o + 1) * I + O - 1) / O};
  return windows;
}

struct AdaptiveGeometry {
  int64_t N, C, H, W, OH, OW;
  bool batched;
};

// Sum of a contiguous run in the accumulation type, with eight independent partial sums
// so that the adds pipeline (and vectorise) instead of forming one dependent chain.
template <typename scalar_t, typename acc_t = at::acc_type<scalar_t, false>>
acc_t run_sum(const scalar_t* p, int64_t n) {
  constexpr int64_t kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += p[i + l];
  }
  for (; i < n; ++i) part[0] += p[i];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Forward, NCHW: y[p, oh, ow] = (1 / |R||S|) * sum over ih in R(oh), iw in S(ow) of x[p, ih, iw],
// with R, S the adaptive windows; accumulated in acc_type (double for float), as a window
// can be the whole plane. A window spanning full rows is one contiguous run.
template <typename scalar_t>
void adaptive_avg_nchw(const scalar_t* x, scalar_t* y, const AdaptiveGeometry& g) {
  const std::vector<Window> row_windows = adaptive_windows(g.H, g.OH), col_windows = adaptive_windows(g.W, g.OW);
  at::parallel_for(0, g.N * g.C, grain_for(g.H * g.W + g.OH * g.OW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* in = x + p * g.H * g.W;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = row_windows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = col_windows[ow];
          at::acc_type<scalar_t, false> sum = 0;
          if (cols.size() == g.W) {
            sum = run_sum(in + rows.begin * g.W, rows.size() * g.W);
          } else {
            for (int64_t ih = rows.begin; ih < rows.end; ++ih) sum += run_sum(in + ih * g.W + cols.begin, cols.size());
          }
          y[(p * g.OH + oh) * g.OW + ow] = static_cast<scalar_t>(sum / (rows.size() * cols.size()));
        }
      }
    }
  });
}

// Forward, NHWC: the same averages, vectorised along C into a per-thread acc_type row
// (scratch allocated once per call); parallel over (n, oh) rows.
template <typename scalar_t>
void adaptive_avg_nhwc(const scalar_t* x, scalar_t* y, const AdaptiveGeometry& g) {
  const std::vector<Window> row_windows = adaptive_windows(g.H, g.OH), col_windows = adaptive_windows(g.W, g.OW);
  using acc_t = at::acc_type<scalar_t, false>;
  const int64_t C = g.C;
  std::vector<acc_t> scratch(at::get_num_threads() * C);
  const int64_t row_work = (g.H / std::max<int64_t>(1, g.OH) + 1) * g.W * C;
  at::parallel_for(0, g.N * g.OH, grain_for(row_work), [&](int64_t r0, int64_t r1) {
    acc_t* acc = scratch.data() + at::get_thread_num() * C;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      const Window rows = row_windows[oh];
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window cols = col_windows[ow];
        std::fill(acc, acc + C, acc_t(0));
        for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
          for (int64_t iw = cols.begin; iw < cols.end; ++iw) {
            const scalar_t* src = x + ((n * g.H + ih) * g.W + iw) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += src[c];
          }
        }
        const acc_t area = static_cast<acc_t>(rows.size() * cols.size());
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
void adaptive_avg_backward_nchw(const scalar_t* dy, scalar_t* dx, const AdaptiveGeometry& g) {
  const std::vector<Window> row_windows = adaptive_windows(g.H, g.OH), col_windows = adaptive_windows(g.W, g.OW);
  const bool tiles = g.OH > 0 && g.OW > 0 && g.H % g.OH == 0 && g.W % g.OW == 0;
  at::parallel_for(0, g.N * g.C, grain_for(2 * g.H * g.W + g.OH * g.OW), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* gi = dx + p * g.H * g.W;
      if (!tiles) std::fill(gi, gi + g.H * g.W, scalar_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = row_windows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = col_windows[ow];
          using opmath_t = at::opmath_type<scalar_t>;
          const scalar_t grad = static_cast<scalar_t>(opmath_t(dy[(p * g.OH + oh) * g.OW + ow]) /
                                                      static_cast<opmath_t>(rows.size() * cols.size()));
          if (cols.size() == g.W) {
            spread(gi + rows.begin * g.W, rows.size() * g.W, grad, tiles);
          } else {
            for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
              spread(gi + ih * g.W + cols.begin, cols.size(), grad, tiles);
            }
          }
        }
      }
    }
  });
}

// Backward, NHWC: the same spreading, vectorised along C; one image per task.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void adaptive_avg_backward_nhwc(const scalar_t* dy, scalar_t* dx, const AdaptiveGeometry& g) {
  const std::vector<Window> row_windows = adaptive_windows(g.H, g.OH), col_windows = adaptive_windows(g.W, g.OW);
  const int64_t C = g.C;
  at::parallel_for(0, g.N, grain_for((2 * g.H * g.W + g.OH * g.OW) * C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(dx + n * g.H * g.W * C, dx + (n + 1) * g.H * g.W * C, scalar_t(0));
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const Window rows = row_windows[oh];
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const Window cols = col_windows[ow];
          const opmath_t area = static_cast<opmath_t>(rows.size() * cols.size());
          const scalar_t* grad = dy + ((n * g.OH + oh) * g.OW + ow) * C;
          for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
            for (int64_t iw = cols.begin; iw < cols.end; ++iw) {
              scalar_t* dst = dx + ((n * g.H + ih) * g.W + iw) * C;
              for (int64_t c = 0; c < C; ++c) dst[c] += static_cast<scalar_t>(opmath_t(grad[c]) / area);
            }
          }
        }
      }
    }
  });
}

// torch's checks, order and messages for adaptive_avg_pool2d.
AdaptiveGeometry adaptive_geometry(const char* op, const Tensor& input, IntArrayRef output_size) {
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
  return {ndim == 4 ? input.size(0) : 1, input.size(-3), input.size(-2), input.size(-1),
          output_size[0], output_size[1], ndim == 4};
}

std::vector<int64_t> output_sizes(const AdaptiveGeometry& g) {
  return g.batched ? std::vector<int64_t>{g.N, g.C, g.OH, g.OW} : std::vector<int64_t>{g.C, g.OH, g.OW};
}

Tensor adaptive_avg_pool2d_forward(const Tensor& input, IntArrayRef output_size) {
  const AdaptiveGeometry g = adaptive_geometry("adaptive_avg_pool2d", input, output_size);
  const at::MemoryFormat fmt = memory_format_of(input);
  const Tensor x = input.contiguous(fmt);
  Tensor out = at::empty(output_sizes(g), input.options().memory_format(fmt));
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_forward", [&] {
    auto kernel = fmt == at::MemoryFormat::ChannelsLast ? adaptive_avg_nhwc<scalar_t> : adaptive_avg_nchw<scalar_t>;
    kernel(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g);
  });
  return out;
}

Tensor adaptive_avg_pool2d_backward(const Tensor& grad_output, const Tensor& input) {
  const char* op = "adaptive_avg_pool2d_backward";
  TORCH_CHECK((input.dim() == 3 || input.dim() == 4) && grad_output.dim() == input.dim(), op,
              ": expected a 3-D or 4-D input and a grad_output of as many dimensions, but got input of size ",
              input.sizes(), " and grad_output of size ", grad_output.sizes());
  const AdaptiveGeometry g = adaptive_geometry(op, input, grad_output.sizes().slice(input.dim() - 2));
  check_grad_output(op, grad_output, input, output_sizes(g));
  const at::MemoryFormat fmt = memory_format_of(input);
  const Tensor dy = grad_output.contiguous(fmt);
  Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(fmt));
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_backward", [&] {
    auto kernel = fmt == at::MemoryFormat::ChannelsLast ? adaptive_avg_backward_nhwc<scalar_t>
                                                        : adaptive_avg_backward_nchw<scalar_t>;
    kernel(dy.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), g);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
}

}  // namespace manual_ops
