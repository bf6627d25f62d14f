// Winograd's minimal filtering F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin and Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2015). Derivation: docs/derivations.md,
// "conv2d: Winograd F(2x2, 3x3)".
//
// Each 2x2 block of outputs of one (input channel, output channel) pair is
//   Y = A^T [ (G g G^T) . (B^T d B) ] A        (. the elementwise product)
// for the 4x4 input patch d under the block and the 3x3 kernel g. Summed over input channels, the
// elementwise products become 16 GEMMs over channels, one per element e = (i, j) of the 4x4 grid:
//   M[e] (tiles x N) = V[e] (tiles x K) @ U[e] (K x N),
//   V[e][t][k] = (B^T d_{t,k} B)[i][j],  U[e][k][n] = (G g_{n,k} G^T)[i][j],
// 16 multiplications per 4 outputs instead of 36, for transforms whose cost is linear in the
// tensors' sizes. With the interpolation points 0, 1, -1 (and infinity):
//   B^T = [1 0 -1 0;  0 1 1 0;  0 -1 1 0;  0 1 0 -1]
//   G   = [1 0 0;  1/2 1/2 1/2;  1/2 -1/2 1/2;  0 0 1]
//   A^T = [1 1 1 0;  0 1 -1 -1]
// Their entries are 0, +-1 and +-1/2, so float32 results stay within twice the rounding error of a
// direct sum (F(4x4, 3x3), 4x fewer multiplications, measured 10-20x: not used).
// Tensors are NHWC tiles of samples (conv2d.cpp stages them), so each transform works on vectors
// of contiguous channels. V, U, M and the GEMMs are in the opmath dtype (float32 for bfloat16 and
// float16 tensors, which are converted as the input transforms read them and rounded once as the
// output transforms write them).
#pragma once

#include "common.h"
#include "gemm.h"
#include "im2col.h"

#include <algorithm>
#include <vector>

namespace manual_ops {

// Whether conv2d runs F(2x2, 3x3) for G in dtype t: a 3x3 kernel, stride and dilation 1, one
// group, padding at most 2 (so that dX, the correlation of dY padded by 2 - p, is one too), at
// least kWinogradMinChannels channels in and out (with fewer, the transforms cost more than the
// multiplications they save), and kernel transforms U (16/9 of the weight's size, in the opmath
// dtype) of at most kWinogradMaxWeightBytes: a 512x512 layer's 16.8 MB U raised a ResNet-18 step's
// peak memory by 10% (its backward is where the peak is), for 15% of that layer's time. Not for
// bfloat16 / float16 where matmul() runs them on oneDNN's micro-kernel (AMX; onednn_micro_kernel): Winograd's GEMMs are
// float32 ones, and im2col's in the operands' dtype on that hardware measured faster.
constexpr int64_t kWinogradMinChannels = 16;
constexpr int64_t kWinogradMaxWeightBytes = 4 << 20;

inline bool use_winograd(const ConvGeometry& G, at::ScalarType t) {
  return G.kh == 3 && G.kw == 3 && G.sh == 1 && G.sw == 1 && G.dh == 1 && G.dw == 1 && G.groups == 1 &&
         std::max({G.pt, G.pl, G.pb, G.pr}) <= 2 && G.C >= kWinogradMinChannels && G.Cout >= kWinogradMinChannels &&
         16 * G.C * G.Cout * int64_t(c10::elementSize(at::toOpMathType(t))) <= kWinogradMaxWeightBytes &&
         !(is_reduced_floating(t) && onednn_micro_kernel(t));
}

constexpr int64_t kWinogradChannelBlock = 64;  // channels transformed at once (the 4x4 scratch stays in L1)

// out[i] = sum_s B^T[i][s] d[s] over n channels (the input transform along one axis), in T.
template <typename S, typename T>
inline void winograd_bt(const S* const d[4], T* const out[4], int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    const T d0 = T(d[0][c]), d1 = T(d[1][c]), d2 = T(d[2][c]), d3 = T(d[3][c]);
    out[0][c] = d0 - d2;
    out[1][c] = d1 + d2;
    out[2][c] = d2 - d1;
    out[3][c] = d1 - d3;
  }
}

// out[i] = sum_s A^T[i][s] m[s] (+ bias[c]) over n channels (the output transform along one axis),
// in T, stored as S.
template <typename T, typename S>
inline void winograd_at(const T* const m[4], S* const out[2], int64_t n, const T* bias) {
  for (int64_t c = 0; c < n; ++c) {
    const T b = bias ? bias[c] : T(0);
    out[0][c] = S(m[0][c] + m[1][c] + m[2][c] + b);
    out[1][c] = S(m[1][c] - m[2][c] - m[3][c] + b);
  }
}

// U (16, K, N), in T (the opmath dtype): U[e][k][n] = (G g G^T)[i][j] for e = (i, j), with
// g = weight[n, k] (the forward's kernels, weight of size (N, K, 3, 3)); or, when `flipped`,
// g = weight[k, n] rotated by 180 degrees (dX's kernels, weight of size (K, N, 3, 3)).
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
Tensor winograd_weights(const Tensor& weight, bool flipped) {
  static constexpr double Gm[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  const int64_t K = flipped ? weight.size(0) : weight.size(1), N = flipped ? weight.size(1) : weight.size(0);
  Tensor U = at::empty({16, K, N}, weight.options().dtype(c10::CppTypeToScalarType<T>::value)
                                       .memory_format(at::MemoryFormat::Contiguous));
  const auto w = weight.accessor<scalar_t, 4>();
  T* u = U.mutable_data_ptr<T>();
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t n = 0; n < N; ++n) {
        double g[3][3], t[4][3];
        for (int64_t a = 0; a < 3; ++a)
          for (int64_t b = 0; b < 3; ++b) g[a][b] = flipped ? double(w[k][n][2 - a][2 - b]) : double(w[n][k][a][b]);
        for (int64_t i = 0; i < 4; ++i)  // t = G g
          for (int64_t b = 0; b < 3; ++b) t[i][b] = Gm[i][0] * g[0][b] + Gm[i][1] * g[1][b] + Gm[i][2] * g[2][b];
        for (int64_t i = 0; i < 4; ++i)  // U = t G^T
          for (int64_t j = 0; j < 4; ++j)
            u[((i * 4 + j) * K + k) * N + n] = T(t[i][0] * Gm[j][0] + t[i][1] * Gm[j][1] + t[i][2] * Gm[j][2]);
      }
    }
  });
  return U;
}

// The 2x2 output blocks of nb samples of (OH, OW) outputs, th x tw per sample (the last row and
// column of blocks reach past an odd OH, OW), numbered t = (b * th + by) * tw + bx.
struct WinogradBlocks {
  int64_t th, tw, count;
  WinogradBlocks(int64_t nb, int64_t OH, int64_t OW) : th((OH + 1) / 2), tw((OW + 1) / 2), count(nb * th * tw) {}
  int64_t sample(int64_t t) const { return t / (th * tw); }
  int64_t row(int64_t t) const { return (t / tw % th) * 2; }  // of the block's first output
  int64_t col(int64_t t) const { return (t % tw) * 2; }
};

// A 1-D tensor of `numel` elements of `options` for scratch that does not outlive the call
// (conv2d.cpp: the calling thread's reused buffer, when small enough).
Tensor thread_scratch(int64_t numel, at::TensorOptions options);

// Scratch of winograd_conv for up to `samples` samples of (OH, OW) outputs: V and M, in the opmath
// dtype of `options`', both in one thread_scratch buffer (one WinogradScratch alive at a time).
struct WinogradScratch {
  Tensor V, M;
  WinogradScratch(int64_t samples, int64_t OH, int64_t OW, int64_t K, int64_t N, at::TensorOptions options) {
    options = options.dtype(at::toOpMathType(c10::typeMetaToScalarType(options.dtype())));
    const int64_t tiles = WinogradBlocks(samples, OH, OW).count;
    const Tensor buffer = thread_scratch(16 * tiles * (K + N), options);
    V = buffer.narrow(0, 0, 16 * tiles * K);
    M = buffer.narrow(0, 16 * tiles * K, 16 * tiles * N);
  }
};

// V[e][t][k] = (B^T d_{t,k} B)[i][j] for the 4x4 patches d of x (nb, H, W, K), NHWC-contiguous and
// zero-padded by pt on top and pl on the left, under the 2x2 output blocks t of an (OH, OW)
// output: along the rows of each patch, then along its columns.
template <typename scalar_t, typename T>
void winograd_input(const Tensor& x, int64_t pt, int64_t pl, int64_t OH, int64_t OW, T* V) {
  const int64_t H = x.size(1), W = x.size(2), K = x.size(3);
  const WinogradBlocks blocks(x.size(0), OH, OW);
  const int64_t tiles = blocks.count;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  constexpr int64_t kBlock = kWinogradChannelBlock;
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<T> rows(16 * kBlock);
    std::vector<scalar_t> zeros(kBlock, scalar_t(0));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = blocks.sample(t), y0 = blocks.row(t) - pt, x0 = blocks.col(t) - pl;
      for (int64_t c0 = 0; c0 < K; c0 += kBlock) {
        const int64_t n = std::min(kBlock, K - c0);
        for (int64_t r = 0; r < 4; ++r) {
          const scalar_t* d[4];
          T* out[4];
          for (int64_t s = 0; s < 4; ++s) {
            const int64_t iy = y0 + r, ix = x0 + s;
            d[s] = iy >= 0 && iy < H && ix >= 0 && ix < W ? xp + ((b * H + iy) * W + ix) * K + c0 : zeros.data();
            out[s] = rows.data() + (r * 4 + s) * kBlock;
          }
          winograd_bt(d, out, n);
        }
        for (int64_t j = 0; j < 4; ++j) {
          const T* d[4];
          T* out[4];
          for (int64_t r = 0; r < 4; ++r) {
            d[r] = rows.data() + (r * 4 + j) * kBlock;
            out[r] = V + ((r * 4 + j) * tiles + t) * K + c0;
          }
          winograd_bt(d, out, n);
        }
      }
    }
  });
}

// y (nb, OH, OW, N), NHWC-contiguous: the stride-1 correlation of x (nb, H, W, K), NHWC-contiguous
// and zero-padded by pt on top and pl on the left (and as far as OH, OW need below and right),
// with the 3x3 kernels whose transforms are U (winograd_weights), plus bias (N values, or null).
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void winograd_conv(const Tensor& x, const Tensor& U, int64_t pt, int64_t pl, const Tensor& y, const T* bias,
                   WinogradScratch& scratch) {
  const int64_t K = x.size(3), OH = y.size(1), OW = y.size(2), N = y.size(3);
  const WinogradBlocks blocks(x.size(0), OH, OW);
  const int64_t tiles = blocks.count;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const T* M = scratch.M.const_data_ptr<T>();
  constexpr int64_t kBlock = kWinogradChannelBlock;

  winograd_input<scalar_t>(x, pt, pl, OH, OW, scratch.V.mutable_data_ptr<T>());

  // M[e] = V[e] @ U[e], threaded by BLAS (outside any parallel region).
  Tensor products = scratch.M.narrow(0, 0, 16 * tiles * N).view({16, tiles, N});
  at::bmm_out(products, scratch.V.narrow(0, 0, 16 * tiles * K).view({16, tiles, K}), U);

  // y = A^T m A + bias: along the rows of each 4x4 grid, then along its columns.
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<T> rows(8 * kBlock);
    std::vector<scalar_t> discard(2 * kBlock);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = blocks.sample(t), y0 = blocks.row(t), x0 = blocks.col(t);
      for (int64_t c0 = 0; c0 < N; c0 += kBlock) {
        const int64_t n = std::min(kBlock, N - c0);
        for (int64_t r = 0; r < 4; ++r) {
          const T* m[4];
          T* out[2];
          for (int64_t s = 0; s < 4; ++s) m[s] = M + ((r * 4 + s) * tiles + t) * N + c0;
          for (int64_t j = 0; j < 2; ++j) out[j] = rows.data() + (r * 2 + j) * kBlock;
          winograd_at(m, out, n, static_cast<const T*>(nullptr));
        }
        for (int64_t j = 0; j < 2; ++j) {
          const T* m[4];
          scalar_t* out[2];
          for (int64_t r = 0; r < 4; ++r) m[r] = rows.data() + (r * 2 + j) * kBlock;
          for (int64_t i = 0; i < 2; ++i) {
            const int64_t oy = y0 + i, ox = x0 + j;
            out[i] = oy < OH && ox < OW ? yp + ((b * OH + oy) * OW + ox) * N + c0 : discard.data() + i * kBlock;
          }
          winograd_at(m, out, n, bias ? bias + c0 : nullptr);
        }
      }
    }
  });
}

// dW of winograd_conv, by the transposition of its formula: with dY's 2x2 blocks taken to 4x4 grids,
//   Yt = A dY A^T,   P[e] (N x K) = sum_t Yt[e][t]^T V[e][t],   dW[n][k] = G^T P[n][k] G,
// where A = (A^T)^T: Yt along one axis is (y0, y0 + y1, y0 - y1, -y1).
// winograd_grad_sums adds the chunk (x, dy) (NHWC-contiguous; dY 0 outside OH, OW) into P (16, N, K)
// (or sets it, for the first chunk); winograd_grad_weight then writes dW (N, K, 3, 3), any layout.
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void winograd_grad_sums(const Tensor& x, const Tensor& dy, int64_t pt, int64_t pl, Tensor& P, bool accumulate,
                        WinogradScratch& scratch) {
  const int64_t K = x.size(3), OH = dy.size(1), OW = dy.size(2), N = dy.size(3);
  const WinogradBlocks blocks(x.size(0), OH, OW);
  const int64_t tiles = blocks.count;
  const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
  T* Yt = scratch.M.mutable_data_ptr<T>();
  constexpr int64_t kBlock = kWinogradChannelBlock;

  winograd_input<scalar_t>(x, pt, pl, OH, OW, scratch.V.mutable_data_ptr<T>());

  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    std::vector<T> rows(8 * kBlock);
    std::vector<scalar_t> zeros(kBlock, scalar_t(0));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = blocks.sample(t), y0 = blocks.row(t), x0 = blocks.col(t);
      for (int64_t c0 = 0; c0 < N; c0 += kBlock) {
        const int64_t n = std::min(kBlock, N - c0);
        for (int64_t i = 0; i < 2; ++i) {  // rows[i][s] = A (dY[i][0], dY[i][1]), s = 0..3
          const scalar_t* y[2];
          for (int64_t j = 0; j < 2; ++j) {
            const int64_t oy = y0 + i, ox = x0 + j;
            y[j] = oy < OH && ox < OW ? dyp + ((b * OH + oy) * OW + ox) * N + c0 : zeros.data();
          }
          T* r = rows.data() + i * 4 * kBlock;
          for (int64_t c = 0; c < n; ++c) {
            const T y0c = T(y[0][c]), y1c = T(y[1][c]);
            r[c] = y0c;
            r[kBlock + c] = y0c + y1c;
            r[2 * kBlock + c] = y0c - y1c;
            r[3 * kBlock + c] = -y1c;
          }
        }
        for (int64_t s = 0; s < 4; ++s) {  // Yt[(r, s)] = A (rows[0][s], rows[1][s]), r = 0..3
          const T* a = rows.data() + s * kBlock;
          const T* c1 = rows.data() + (4 + s) * kBlock;
          T* out[4];
          for (int64_t r = 0; r < 4; ++r) out[r] = Yt + ((r * 4 + s) * tiles + t) * N + c0;
          for (int64_t c = 0; c < n; ++c) {
            out[0][c] = a[c];
            out[1][c] = a[c] + c1[c];
            out[2][c] = a[c] - c1[c];
            out[3][c] = -c1[c];
          }
        }
      }
    }
  });

  // P[e] (+)= Yt[e]^T @ V[e], threaded by BLAS.
  const Tensor yt = scratch.M.narrow(0, 0, 16 * tiles * N).view({16, tiles, N}).transpose(1, 2);
  const Tensor v = scratch.V.narrow(0, 0, 16 * tiles * K).view({16, tiles, K});
  accumulate ? P.baddbmm_(yt, v) : at::bmm_out(P, yt, v);
}

template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void winograd_grad_weight(const Tensor& P, Tensor& dw) {
  static constexpr double Gt[3][4] = {{1, 0.5, 0.5, 0}, {0, 0.5, -0.5, 0}, {0, 0.5, 0.5, 1}};
  const int64_t N = P.size(1), K = P.size(2);
  const T* p = P.const_data_ptr<T>();
  auto w = dw.accessor<scalar_t, 4>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        double t[3][4];  // t = G^T P
        for (int64_t a = 0; a < 3; ++a)
          for (int64_t j = 0; j < 4; ++j) {
            double sum = 0;
            for (int64_t i = 0; i < 4; ++i) sum += Gt[a][i] * double(p[((i * 4 + j) * N + n) * K + k]);
            t[a][j] = sum;
          }
        for (int64_t a = 0; a < 3; ++a)  // dW = t G
          for (int64_t b = 0; b < 3; ++b)
            w[n][k][a][b] = scalar_t(t[a][0] * Gt[b][0] + t[a][1] * Gt[b][1] + t[a][2] * Gt[b][2] + t[a][3] * Gt[b][3]);
      }
    }
  });
}

}  // namespace manual_ops
