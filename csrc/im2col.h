// Channels-last im2col / col2im for 2-D convolution: the geometry (ConvGeometry); the loops are
// compiled once per CPU capability (cpu/im2col_kernel.cpp).
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

}  // namespace manual_ops
