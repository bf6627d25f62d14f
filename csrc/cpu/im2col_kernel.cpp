// The im2col and col2im loops of conv2d (im2col.h), compiled once per CPU capability
// (cpu_capability.h): they copy and add runs of channels, which the compiler vectorises at each
// level's width.
#include "cpu/im2col_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

// dst[0, n) = src[0, n): a loop for short runs (a 3-channel stem's kernel row is 9 values), where a
// call to memmove would cost more than the copy itself.
template <typename scalar_t>
void copy_run(const scalar_t* __restrict src, int64_t n, scalar_t* __restrict dst) {
  if (n >= 32) {
    std::copy_n(src, n, dst);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// cols[r, :] for the rows r of the nb NHWC samples at x, group g.
template <typename scalar_t>
void im2col_nhwc(const scalar_t* x, const ConvGeometry& G, int64_t nb, int64_t g, scalar_t* cols) {
  const int64_t L = G.L(), K = G.K(), Cg = G.Cg();
  // With one group and dw = 1, a kernel row's kw taps are adjacent in x: one run of kw*C values.
  const bool row_runs = G.groups == 1 && G.dw == 1;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1));
  at::parallel_for(0, nb * L, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / L, oh = (r % L) / G.OW, ow = r % G.OW;
      const int64_t iw0 = ow * G.sw - G.pl;
      scalar_t* dst = cols + r * K;
      for (int64_t i = 0; i < G.kh; ++i, dst += G.kw * Cg) {
        const int64_t ih = oh * G.sh - G.pt + i * G.dh;
        if (ih < 0 || ih >= G.H) {
          std::fill_n(dst, G.kw * Cg, scalar_t(0));
          continue;
        }
        const scalar_t* src = x + (b * G.H + ih) * G.W * G.C + g * Cg;  // x[b, ih, 0, g*Cg]
        if (row_runs && iw0 >= 0 && iw0 + G.kw <= G.W) {
          copy_run(src + iw0 * G.C, G.kw * Cg, dst);
          continue;
        }
        for (int64_t j = 0; j < G.kw; ++j) {
          const int64_t iw = iw0 + j * G.dw;
          if (iw < 0 || iw >= G.W) {
            std::fill_n(dst + j * Cg, Cg, scalar_t(0));
          } else {
            copy_run(src + iw * G.C, Cg, dst + j * Cg);
          }
        }
      }
    }
  });
}

// The adjoint of im2col, as a gather so that threads never write the same element:
//   dx[b, ih, iw, g*Cg + c] = sum over (oh, i, ow, j) with oh*sh - pt + i*dh = ih and
//                             ow*sw - pl + j*dw = iw of dcols[(b, oh, ow), (i, j, c)].
// Input rows/columns that no window reaches (the "lost" rows when stride does not
// divide H + pt + pb - dh*(kh-1) - 1) get zero.
// dx holds the nb NHWC samples that dcols' rows belong to; only group g's channels are written.
template <typename scalar_t>
void col2im_nhwc(const scalar_t* dcols, const ConvGeometry& G, int64_t nb, int64_t g, scalar_t* dx) {
  const int64_t L = G.L(), K = G.K(), Cg = G.Cg();
  at::parallel_for(0, nb * G.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / G.H, ih = t % G.H;
      scalar_t* row = dx + (b * G.H + ih) * G.W * G.C + g * Cg;
      for (int64_t iw = 0; iw < G.W; ++iw) std::fill_n(row + iw * G.C, Cg, scalar_t(0));
      for (int64_t i = 0; i < G.kh; ++i) {
        const int64_t ohs = ih + G.pt - i * G.dh;  // = oh * sh
        if (ohs < 0 || ohs % G.sh != 0 || ohs / G.sh >= G.OH) continue;
        const scalar_t* src_row = dcols + (b * L + (ohs / G.sh) * G.OW) * K + i * G.kw * Cg;
        for (int64_t ow = 0; ow < G.OW; ++ow) {
          const scalar_t* src = src_row + ow * K;
          for (int64_t j = 0; j < G.kw; ++j) {
            const int64_t iw = ow * G.sw - G.pl + j * G.dw;
            if (iw < 0 || iw >= G.W) continue;
            scalar_t* __restrict d = row + iw * G.C;
            const scalar_t* __restrict s = src + j * Cg;
            for (int64_t c = 0; c < Cg; ++c) d[c] += s[c];
          }
        }
      }
    }
  });
}

void im2col_kernel(const at::Tensor& x, const ConvGeometry& G, int64_t nb, int64_t g, const at::Tensor& cols) {
  MANUAL_OPS_DISPATCH_FLOATING(x.scalar_type(), "im2col_nhwc", [&] {
    im2col_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), G, nb, g, cols.mutable_data_ptr<scalar_t>());
  });
}

void col2im_kernel(const at::Tensor& dcols, const ConvGeometry& G, int64_t nb, int64_t g, const at::Tensor& dx) {
  AT_DISPATCH_FLOATING_TYPES(dcols.scalar_type(), "col2im_nhwc", [&] {
    col2im_nhwc<scalar_t>(dcols.const_data_ptr<scalar_t>(), G, nb, g, dx.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(im2col_stub, CPU_CAPABILITY::im2col_kernel);
MANUAL_OPS_REGISTER_KERNEL(col2im_stub, CPU_CAPABILITY::col2im_kernel);

}  // namespace manual_ops
