// Channels-last im2col / col2im for 2-D convolution.
//
// A column matrix has one row per output pixel r = (b, oh, ow) and one column per
// kernel tap k = (i, j, c) of one group, c fastest -- the memory order of a channels-last
// (Cout, C/groups, kh, kw) weight, so such a weight is used as a (Cout, K) matrix in place:
//   cols[r, (i, j, c)] = x[b, oh*sh - pt + i*dh, ow*sw - pl + j*dw, g*Cg + c]   (0 outside x)
// x is NHWC, so each tap is one contiguous copy of Cg channels; with one group and dw = 1 the
// kw taps of a kernel row are one contiguous copy of kw*C values. A 1x1 strided conv's im2col
// is thus a gather of the strided rows of x.
#pragma once

#include "common.h"

#include <algorithm>
#include <cstring>

namespace manual_ops {

struct ConvGeometry {
  int64_t N, C, H, W;     // input
  int64_t Cout, kh, kw;   // weight (Cout, C/groups, kh, kw)
  int64_t OH, OW;         // output
  int64_t sh, sw;         // stride
  int64_t pt, pl, pb, pr; // padding: top, left, bottom, right
  int64_t dh, dw;         // dilation
  int64_t groups;

  // torch's rule: zero input channels give zero output channels (whatever the weight's Cout).
  int64_t out_channels() const { return C == 0 ? 0 : Cout; }
  int64_t Cg() const { return C / groups; }
  int64_t Coutg() const { return Cout / groups; }
  int64_t L() const { return OH * OW; }
  int64_t K() const { return kh * kw * Cg(); }  // GEMM reduction length of one group
  // A 1x1 unpadded conv whose rows of input pixels are evenly spaced (H divisible by the stride,
  // so that H = OH * sh) needs no im2col: its column matrix is a strided view of the NHWC input,
  // row (b, oh, ow) at pixel (b, oh * sh, ow * sw). (Any other 1x1 conv's im2col is a row gather,
  // see im2col_nhwc.)
  bool pointwise() const {
    return kh == 1 && kw == 1 && pt == 0 && pl == 0 && pb == 0 && pr == 0 && H % sh == 0;
  }
};

// dst[0, n) = src[0, n): a loop for short runs (a 3-channel stem's kernel row is 9 values), where a
// call to memmove would cost more than the copy itself.
template <typename scalar_t>
inline void copy_run(const scalar_t* __restrict src, int64_t n, scalar_t* __restrict dst) {
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

}  // namespace manual_ops
