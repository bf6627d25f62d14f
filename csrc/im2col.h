// Channels-last im2col / col2im for 2-D convolution.
//
// A column matrix has one row per output pixel r = (b, oh, ow) and one column per
// kernel tap k = (c, i, j) of one group, j fastest -- the order of a (Cout, C/groups, kh, kw)
// weight, so W is used as a (Cout, K) matrix without a copy:
//   cols[r, (c, i, j)] = x[b, oh*sh - pt + i*dh, ow*sw - pl + j*dw, g*Cg + c]   (0 outside x)
// x is NHWC, so each tap reads a contiguous run of Cg channels (stored kh*kw apart in the row).
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
  // A 1x1, stride-1, unpadded conv needs no im2col: the NHWC input is the column matrix.
  bool pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 && pb == 0 && pr == 0;
  }
};

// cols[r, :] for the rows r of the nb NHWC samples at x, group g.
template <typename scalar_t>
void im2col_nhwc(const scalar_t* x, const ConvGeometry& G, int64_t nb, int64_t g, scalar_t* cols) {
  const int64_t L = G.L(), K = G.K(), Cg = G.Cg(), taps = G.kh * G.kw;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1));
  at::parallel_for(0, nb * L, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / L, oh = (r % L) / G.OW, ow = r % G.OW;
      scalar_t* row = cols + r * K;
      for (int64_t i = 0; i < G.kh; ++i) {
        const int64_t ih = oh * G.sh - G.pt + i * G.dh;
        for (int64_t j = 0; j < G.kw; ++j) {
          const int64_t iw = ow * G.sw - G.pl + j * G.dw;
          scalar_t* dst = row + i * G.kw + j;
          if (ih < 0 || ih >= G.H || iw < 0 || iw >= G.W) {
            for (int64_t c = 0; c < Cg; ++c) dst[c * taps] = scalar_t(0);
          } else {
            const scalar_t* src = x + ((b * G.H + ih) * G.W + iw) * G.C + g * Cg;
            for (int64_t c = 0; c < Cg; ++c) dst[c * taps] = src[c];
          }
        }
      }
    }
  });
}

// The adjoint of im2col, as a gather so that threads never write the same element:
//   dx[b, ih, iw, g*Cg + c] = sum over (oh, i, ow, j) with oh*sh - pt + i*dh = ih and
//                             ow*sw - pl + j*dw = iw of dcols[(b, oh, ow), (c, i, j)].
// Input rows/columns that no window reaches (the "lost" rows when stride does not
// divide H + pt + pb - dh*(kh-1) - 1) get zero.
// dx holds the nb NHWC samples that dcols' rows belong to; only group g's channels are written.
template <typename scalar_t>
void col2im_nhwc(const scalar_t* dcols, const ConvGeometry& G, int64_t nb, int64_t g, scalar_t* dx) {
  const int64_t L = G.L(), K = G.K(), Cg = G.Cg(), taps = G.kh * G.kw;
  at::parallel_for(0, nb * G.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / G.H, ih = t % G.H;
      scalar_t* row = dx + (b * G.H + ih) * G.W * G.C + g * Cg;
      for (int64_t iw = 0; iw < G.W; ++iw) std::fill_n(row + iw * G.C, Cg, scalar_t(0));
      for (int64_t i = 0; i < G.kh; ++i) {
        const int64_t ohs = ih + G.pt - i * G.dh;  // = oh * sh
        if (ohs < 0 || ohs % G.sh != 0 || ohs / G.sh >= G.OH) continue;
        const scalar_t* src_row = dcols + (b * L + (ohs / G.sh) * G.OW) * K + i * G.kw;
        for (int64_t ow = 0; ow < G.OW; ++ow) {
          const scalar_t* src = src_row + ow * K;
          for (int64_t j = 0; j < G.kw; ++j) {
            const int64_t iw = ow * G.sw - G.pl + j * G.dw;
            if (iw < 0 || iw >= G.W) continue;
            scalar_t* d = row + iw * G.C;
            const scalar_t* s = src + j;
            for (int64_t c = 0; c < Cg; ++c) d[c] += s[c * taps];
          }
        }
      }
    }
  });
}

}  // namespace manual_ops
