// C = A @ B (+ bias) (+ C) by packed panels and a register-tile micro-kernel (the classical blocking
// of Goto and van de Geijn). B is packed once into panels of NR columns (converted to float32).
// Each thread takes blocks of MC rows of C; for each block of NC columns it sums over depth
// blocks of KC: it packs the block's A into panels of MR rows, and the micro-kernel
// (cpu/gemm_kernel.cpp, per CPU capability) multiplies one MR x KC panel of A by one KC x NR panel
// of B into an MR x NR tile held in vector registers,
//   acc[i, j] += sum_{p < KC} A[i, p] * B[p, j]   for MR rows i and NR columns j,
// added into the block's float32 result. The finished block gets the bias (and the old C) and
// is rounded once into C.
#include "gemm.h"
#include "cpu/gemm_kernel.h"
#include "cpu/pack16_kernel.h"

#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(vnni_pack_stub);
MANUAL_OPS_DEFINE_KERNEL(transpose16_stub);
MANUAL_OPS_DEFINE_KERNEL(gemm_micro_kernel_stub);
template <typename T>
KernelStub<gemm_pack_rows_fn<T>> GemmPackStub<T>::pack_rows{};
template <typename TC>
KernelStub<gemm_epilogue_row_fn<TC>> GemmEpilogueStub<TC>::epilogue_row{};
template struct GemmPackStub<c10::BFloat16>;
template struct GemmPackStub<c10::Half>;
template struct GemmEpilogueStub<float>;
template struct GemmEpilogueStub<c10::BFloat16>;
template struct GemmEpilogueStub<c10::Half>;

namespace {

// A Matrix's data as T: element (i, j) at data[rows.offset(i) + cols.offset(j)].
template <typename T>
struct View {
  T* data;
  Dim rows, cols;
  View t() const { return {data, cols, rows}; }
};

constexpr int64_t MR = kGemmMR;  // rows of a micro-tile
constexpr int64_t NR = kGemmNR;  // columns of a micro-tile
constexpr int64_t KC = 256;   // depth of a block: an A panel and a B panel, (MR + NR) * KC * 4 = 22 KB, stay in L1
constexpr int64_t MC = 96;    // rows of a packed A block: MC * KC * 4 = 96 KB, in L2
constexpr int64_t NC = 1024;  // columns of a block: its float32 result is MC * NC * 4 = 384 KB per thread

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Packs rows [r0, r0 + rows) and depths [p0, p0 + kc) of S into panels of W rows, each panel
// depth-major: out[panel * W * kc + p * W + w] = S[r0 + panel * W + w, p0 + p], zero past `rows`.
// Used for A's rows (W = MR) and, through B^T, for B's columns (W = NR). Converts T to float32.
// The depth offsets are tabulated once per call, so a split dimension costs no division per value.
// A's panels whose rows have adjacent depths go through the vectorised GemmPackStub.
template <int64_t W, typename T>
void pack_panels(const View<const T>& S, int64_t r0, int64_t rows, int64_t p0, int64_t kc, float* out) {
  int64_t depth[KC];
  for (int64_t p = 0; p < kc; ++p) depth[p] = S.cols.offset(p0 + p);
  // A's panels where each row's depths are adjacent (an im2col matrix, an NHWC gradient): vectorised.
  const bool adjacent_depths = W == MR && S.cols.is_plain() && S.cols.stride == 1;
  for (int64_t r = 0; r < rows; r += W, out += W * kc) {
    const int64_t w_valid = std::min(W, rows - r);
    if (S.rows.is_plain() && S.rows.stride == 1 && w_valid == W) {  // a panel's W values of one depth are adjacent
      const T* src = S.data + S.rows.offset(r0 + r);
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t w = 0; w < W; ++w) out[p * W + w] = static_cast<float>(src[depth[p] + w]);
      continue;
    }
    if (adjacent_depths && w_valid == W) {
      const T* panel_rows[MR];
      for (int64_t w = 0; w < MR; ++w) panel_rows[w] = S.data + S.rows.offset(r0 + r + w) + depth[0];
      GemmPackStub<T>::pack_rows(panel_rows, kc, out);
      continue;
    }
    for (int64_t w = 0; w < W; ++w) {
      if (w < w_valid) {
        const T* src = S.data + S.rows.offset(r0 + r + w);
        for (int64_t p = 0; p < kc; ++p) out[p * W + w] = static_cast<float>(src[depth[p]]);
      } else {
        for (int64_t p = 0; p < kc; ++p) out[p * W + w] = 0.f;
      }
    }
  }
}

// The epilogue of a float32 block acc (mc x nc, row stride ld) of C, at row ic and column jc: plus
// bias (one value per column of C, or per row when `bias_per_row`; or nullptr) and the old C when
// `accumulate`, rounded once into C. col_offset: scratch for nc offsets.
template <typename TC>
void epilogue(const View<TC>& C, const float* acc, int64_t ld, int64_t ic, int64_t mc, int64_t jc, int64_t nc,
              const float* bias, bool bias_per_row, bool accumulate, int64_t* col_offset) {
  const bool unit_cols = C.cols.is_plain() && C.cols.stride == 1;
  for (int64_t j = 0; j < nc; ++j) col_offset[j] = C.cols.offset(jc + j);
  for (int64_t i = 0; i < mc; ++i) {
    TC* c = C.data + C.rows.offset(ic + i);
    const float* a = acc + i * ld;
    const float row_bias = bias != nullptr && bias_per_row ? bias[ic + i] : 0.f;
    const float* col_bias = bias != nullptr && !bias_per_row ? bias + jc : nullptr;
    if (unit_cols) {
      GemmEpilogueStub<TC>::epilogue_row(c + jc, a, nc, row_bias, col_bias, accumulate);
      continue;
    }
    for (int64_t j = 0; j < nc; ++j) {
      float v = a[j] + row_bias;
      if (col_bias != nullptr) v += col_bias[j];
      if (accumulate) v += static_cast<float>(c[col_offset[j]]);
      c[col_offset[j]] = static_cast<TC>(v);
    }
  }
}

// C = A @ B + bias, or C += A @ B + bias when `accumulate`, for float32 `bias` (one value per column
// of C, or nullptr). Each C[i, j] is a float32 fused-multiply-add chain over k, rounded once into TC.
template <typename TA, typename TC>
void gemm(const View<const TA>& A_in, const View<const TA>& B_in, const View<TC>& C_in, bool accumulate,
          const float* bias) {
  // The threads split C's rows: for a C wider than tall, C^T = B^T @ A^T has more rows to split
  // (and the bias, one value per column of C, is one per row of C^T).
  const bool transpose = C_in.rows.size < C_in.cols.size;
  const View<const TA> A = transpose ? B_in.t() : A_in, B = transpose ? A_in.t() : B_in;
  const View<TC> C = transpose ? C_in.t() : C_in;
  const int64_t M = C.rows.size, N = C.cols.size, K = A.cols.size;
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = bias (or C += bias)
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        TC& out = C.data[C.rows.offset(i) + C.cols.offset(j)];
        const float b = bias == nullptr ? 0.f : bias[transpose ? i : j];
        out = static_cast<TC>((accumulate ? static_cast<float>(out) : 0.f) + b);
      }
    }
    return;
  }
  const int64_t threads = at::get_num_threads();
  // At least two blocks of rows per thread when M allows, for balance.
  const int64_t mc_max = std::clamp(round_up((M + 2 * threads - 1) / (2 * threads), MR), MR, MC);
  const int64_t n_padded = round_up(N, NR), nc_max = std::min(n_padded, NC), kc_max = std::min(K, KC);
  // B is packed once, by all threads, before the row blocks share it: the depth block starting
  // at pc holds its panels of NR columns from b_pack + pc * n_padded, panel j at + j * kc.
  const Tensor b_packed = at::empty({n_padded * K}, at::kFloat);  // every value is written
  float* const b_pack = b_packed.mutable_data_ptr<float>();
  const int64_t panels = n_padded / NR, depth_blocks = (K + KC - 1) / KC;
  at::parallel_for(0, depth_blocks * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pc = task / panels * KC, j = task % panels * NR, kc = std::min(KC, K - pc);
      pack_panels<NR>(B.t(), j, std::min(NR, N - j), pc, kc, b_pack + pc * n_padded + j * kc);
    }
  });
  // A float32 C of unit column stride (and no bias) is updated in place by the micro-kernel: no
  // float32 block and no epilogue pass over C (an edge tile goes through a small tile buffer).
  float* c_float = nullptr;
  if constexpr (std::is_same_v<TC, float>) {
    if (bias == nullptr && C.rows.is_plain() && C.cols.is_plain() && C.cols.stride == 1) c_float = C.data;
  }
  const bool in_place = c_float != nullptr;
  at::parallel_for(0, (M + mc_max - 1) / mc_max, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a_pack(mc_max * kc_max), acc(in_place ? 0 : mc_max * nc_max);
    std::vector<int64_t> col_offset(nc_max);
    alignas(32) float tile[MR * NR];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t ic = block * mc_max, mc = std::min(mc_max, M - ic);
      for (int64_t jc = 0; jc < N; jc += NC) {
        const int64_t nc = std::min(NC, N - jc);
        for (int64_t pc = 0; pc < K; pc += KC) {
          const int64_t kc = std::min(KC, K - pc);
          pack_panels<MR>(A, ic, mc, pc, kc, a_pack.data());
          const float* b_block = b_pack + pc * n_padded + jc * kc;
          for (int64_t jr = 0; jr < nc; jr += NR) {
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const float* a = a_pack.data() + ir * kc;
              if (!in_place) {
                gemm_micro_kernel_stub(kc, a, b_block + jr * kc, acc.data() + ir * nc_max + jr, nc_max, pc > 0);
                continue;
              }
              const bool add = accumulate || pc > 0;
              float* c = c_float + (ic + ir) * C.rows.stride + jc + jr;
              const int64_t m = std::min(MR, mc - ir), n = std::min(NR, nc - jr);
              if (m == MR && n == NR) {
                gemm_micro_kernel_stub(kc, a, b_block + jr * kc, c, C.rows.stride, add);
                continue;
              }
              gemm_micro_kernel_stub(kc, a, b_block + jr * kc, tile, NR, false);
              for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n; ++j) {
                  float& out = c[i * C.rows.stride + j];
                  out = (add ? out : 0.f) + tile[i * NR + j];
                }
            }
          }
        }
        if (in_place) continue;
        epilogue(C, acc.data(), nc_max, ic, mc, jc, nc, bias, transpose, accumulate, col_offset.data());
      }
    }
  });
}

// The same product on oneDNN's batch-reduce GEMM micro-kernel, at::native::cpublas::brgemm (AMX
// tiles, or AVX512-BF16 / AVX512-FP16 dot products, whichever oneDNN finds on the CPU):
//   acc (mb x nb) (+)= A block (mb x kc, row-major) @ B panel (kc x nb, VNNI),
// float32 sums of products of the operands' dtype, over depth blocks of kBrDepth. Both operands are
// packed once, by all threads, converting nothing: B into panels in VNNI order, two depths of a
// column adjacent, panel[(p / 2) * 2 nb + 2 n + p % 2] = B[p, n], the depth padded to even with a
// zero (vnni_pack_stub where B's rows are plain); A row-major (transpose16_stub where A^T is
// plain, as dW's dY^T is), unless it is so already (packing a conv's (pixels x 576) im2col matrix
// cost as much as the micro-kernel). Each task sums one block of C in float32 and rounds it once
// into C (epilogue), or sums straight into a float32 C.
// Where oneDNN has no micro-kernel for the dtype (MANUAL_OPS_BF16_GEMM=onednn on such a CPU, for
// the tests), the same packed blocks go through a plain loop (tile_product).
constexpr int64_t kBrRows = 128, kBrCols = 128, kBrDepth = 1024;  // kBrDepth even

template <typename T>
void tile_product(bool hardware, int64_t m, int64_t n, int64_t kc, const T* a, int64_t lda, const T* b, float* acc,
                  int64_t ld, bool add) {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
  if (hardware) return at::native::cpublas::brgemm(m, n, kc, lda, n, ld, add, a, b, acc, true);
#endif
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float sum = add ? acc[i * ld + j] : 0.f;
      for (int64_t p = 0; p < kc; ++p)
        sum += static_cast<float>(a[i * lda + p]) * static_cast<float>(b[p / 2 * 2 * n + 2 * j + p % 2]);
      acc[i * ld + j] = sum;
    }
}

// 16-bit values as the packing kernels' bits (cpu/pack16_kernel.h).
template <typename T>
const c10::BFloat16* bits(const T* p) {
  static_assert(sizeof(T) == 2, "16-bit values");
  return reinterpret_cast<const c10::BFloat16*>(p);
}
template <typename T>
c10::BFloat16* bits(T* p) {
  static_assert(sizeof(T) == 2, "16-bit values");
  return reinterpret_cast<c10::BFloat16*>(p);
}

template <typename TA, typename TC>
void gemm_brgemm(const View<const TA>& A, const View<const TA>& B, const View<TC>& C, bool accumulate,
                 const float* bias, bool hardware) {
  const int64_t M = C.rows.size, N = C.cols.size, K = A.cols.size, Kp = round_up(K, 2);
  if (M == 0 || N == 0) return;
  const int64_t threads = at::get_num_threads();
  // Tasks of (block of rows, panel of columns): row blocks of at most kBrRows, balanced; panels of
  // at most kBrCols columns, narrower where there are too few row blocks to give each thread two
  // tasks (dW's GEMMs: Cout rows, K = taps * C columns), and a multiple of the threads in number
  // where there is one row block.
  const int64_t row_blocks = (M + kBrRows - 1) / kBrRows;
  const int64_t mb_max = round_up((M + row_blocks - 1) / row_blocks, 16);
  int64_t panels = (N + kBrCols - 1) / kBrCols;
  if (row_blocks * panels < 2 * threads) panels = (2 * threads + row_blocks - 1) / row_blocks;
  if (row_blocks == 1) panels = round_up(panels, threads);
  const int64_t nb_max = std::min(round_up((N + panels - 1) / panels, 16), round_up(N, 16));
  panels = (N + nb_max - 1) / nb_max;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<TA>::value);

  // B, once, by all threads: panel j0 (columns j0 .. j0 + nb) at b_pack + j0 * Kp, in VNNI pairs.
  const Tensor b_packed = at::empty({Kp * N}, options);  // every value is written
  TA* const b_pack = b_packed.mutable_data_ptr<TA>();
  const bool b_rows_adjacent = B.rows.is_plain() && B.cols.is_plain() && B.cols.stride == 1;
  at::parallel_for(0, panels * (Kp / 2), 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> col(nb_max);
    int64_t filled = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j0 = task / (Kp / 2) * nb_max, nb = std::min(nb_max, N - j0), p = task % (Kp / 2) * 2;
      TA* out = b_pack + j0 * Kp + p * nb;
      const TA* r0 = B.data + B.rows.offset(p);
      if (b_rows_adjacent) {  // all the task's pairs of this panel at once
        const int64_t pairs = std::min(end - task, Kp / 2 - p / 2);
        vnni_pack_stub(bits(r0 + j0), B.rows.stride, std::min(2 * pairs, K - p), nb, bits(out));
        task += pairs - 1;
        continue;
      }
      if (filled != j0) {
        for (int64_t n = 0; n < nb; ++n) col[n] = B.cols.offset(j0 + n);
        filled = j0;
      }
      const TA* r1 = p + 1 < K ? B.data + B.rows.offset(p + 1) : nullptr;
      for (int64_t n = 0; n < nb; ++n) out[2 * n] = r0[col[n]], out[2 * n + 1] = r1 ? r1[col[n]] : TA(0);
    }
  });

  // A, once, row-major with an even depth, unless it is so already: row i at a_data + i * lda.
  const bool a_in_place = A.rows.is_plain() && A.cols.is_plain() && A.cols.stride == 1 && K == Kp;
  const Tensor a_packed = a_in_place ? Tensor() : at::empty({M * Kp}, options);
  const TA* const a_data = a_in_place ? A.data : a_packed.const_data_ptr<TA>();
  const int64_t lda = a_in_place ? A.rows.stride : Kp;
  if (!a_in_place) {
    TA* const a_pack = a_packed.mutable_data_ptr<TA>();
    at::parallel_for(0, row_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> depth;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t ic = block * mb_max, mb = std::min(mb_max, M - ic);
        TA* out = a_pack + ic * Kp;
        if (K < Kp)
          for (int64_t i = 0; i < mb; ++i) out[i * Kp + K] = TA(0);
        if (A.rows.is_plain() && A.rows.stride == 1 && A.cols.is_plain()) {  // A^T is plain (dW's dY^T)
          transpose16_stub(bits(A.data + A.rows.offset(ic)), A.cols.stride, K, mb, bits(out), Kp);
          continue;
        }
        if (depth.empty()) {
          depth.resize(K);
          for (int64_t q = 0; q < K; ++q) depth[q] = A.cols.offset(q);
        }
        for (int64_t i = 0; i < mb; ++i) {
          const TA* src = A.data + A.rows.offset(ic + i);
          for (int64_t q = 0; q < K; ++q) out[i * Kp + q] = src[depth[q]];
        }
      }
    });
  }

  // A float32 C of plain rows and adjacent columns, with no bias, is summed into in place (dX's
  // float32 column gradients, dW's float32 sum over tiles of samples): no block copy.
  const bool c_in_place =
      std::is_same_v<TC, float> && bias == nullptr && C.rows.is_plain() && C.cols.is_plain() && C.cols.stride == 1;
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> task_acc(c_in_place ? 0 : mb_max * nb_max);
    std::vector<int64_t> col_offset(nb_max);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ic = task / panels * mb_max, mb = std::min(mb_max, M - ic);
      const int64_t j0 = task % panels * nb_max, nb = std::min(nb_max, N - j0);
      float* const acc =
          c_in_place ? reinterpret_cast<float*>(C.data + C.rows.offset(ic) + C.cols.offset(j0)) : task_acc.data();
      const int64_t ld = c_in_place ? C.rows.stride : nb;
      if (Kp == 0 && !(c_in_place && accumulate))
        for (int64_t i = 0; i < mb; ++i) std::fill(acc + i * ld, acc + i * ld + nb, 0.f);
      for (int64_t pc = 0; pc < Kp; pc += kBrDepth) {
        tile_product(hardware, mb, nb, std::min(kBrDepth, Kp - pc), a_data + ic * lda + pc, lda,
                     b_pack + j0 * Kp + pc * nb, acc, ld, pc > 0 || (c_in_place && accumulate));
      }
      if (!c_in_place) epilogue(C, acc, nb, ic, mb, j0, nb, bias, false, accumulate, col_offset.data());
    }
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
    if (hardware) at::native::cpublas::brgemm_release();
#endif
  });
}

// A Matrix as a tensor view of its storage, for at::mm: 2-D where its dims are plain (the
// tensor it was made from, or its transpose, when it is one of those), else with a split dim of
// size s * split as two dims (s, split).
Tensor as_tensor(const Matrix& m) {
  if (m.offset == 0 && m.t.dim() == 2 && m.rows.is_plain() && m.cols.is_plain()) {
    const auto is = [&](int64_t r, int64_t c) {  // whether m is m.t with dims (r, c)
      return m.t.size(r) == m.rows.size && m.t.size(c) == m.cols.size && m.t.stride(r) == m.rows.stride &&
             m.t.stride(c) == m.cols.stride;
    };
    if (is(0, 1)) return m.t;
    if (is(1, 0)) return m.t.t();
  }
  std::vector<int64_t> sizes, strides;
  for (const Dim& d : {m.rows, m.cols}) {
    if (d.is_plain()) {
      sizes.push_back(d.size), strides.push_back(d.stride);
    } else {
      TORCH_CHECK(d.size % d.split == 0, "manual_ops matmul: a split dimension must be a multiple of its split");
      sizes.insert(sizes.end(), {d.size / d.split, d.split}), strides.insert(strides.end(), {d.outer, d.stride});
    }
  }
  return m.t.as_strided(sizes, strides, m.t.storage_offset() + m.offset);
}

// Whether oneDNN has a micro-kernel for dtype t on this CPU.
bool onednn_has_micro_kernel(at::ScalarType t) {
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)
  static const bool bf16 = at::native::cpublas::could_pack(at::kBFloat16);
  static const bool fp16 = at::native::cpublas::could_pack(at::kHalf);
  return t == at::kBFloat16 ? bf16 : t == at::kHalf && fp16;
#else
  return false;
#endif
}

// Whether oneDNN's matmul (at::mm) has dot-product hardware for dtype t on this CPU: its micro-kernel's
// (AMX), or AVX512-BF16 for bfloat16 / AVX512-FP16 for float16 alone, where brgemm cannot pack (could_pack
// needs AMX in torch 2.13) but at::mm still runs oneDNN's dot-product kernels: on a Zen 4 (AVX512-BF16, no
// AMX) a bfloat16 at::mm took a third to 0.4 of its float32 time, and about half of our GEMM's.
bool onednn_has_matmul(at::ScalarType t) {
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  static const bool fp16 = __builtin_cpu_supports("avx512fp16");
  return onednn_has_micro_kernel(t) || (t == at::kBFloat16 ? bf16 : t == at::kHalf && fp16);
}

enum class Requested { none, onednn, own };

// MANUAL_OPS_BF16_GEMM, read once: "onednn" or "own"; unset, or any other value (with a warning), none.
Requested requested_gemm() {
  static const Requested r = [] {
    const char* value = std::getenv("MANUAL_OPS_BF16_GEMM");
    if (value == nullptr) return Requested::none;
    if (std::strcmp(value, "onednn") == 0) return Requested::onednn;
    if (std::strcmp(value, "own") == 0) return Requested::own;
    TORCH_WARN_ONCE("manual_ops: ignoring invalid value for MANUAL_OPS_BF16_GEMM: ", value,
                    " (expected onednn or own)");
    return Requested::none;
  }();
  return r;
}

}  // namespace

// As requested by MANUAL_OPS_BF16_GEMM, else oneDNN wherever at::mm has dot-product hardware for the dtype
// (onednn_has_matmul: AMX, AVX512-BF16 for bfloat16, AVX512-FP16 for float16), our own GEMM elsewhere (at
// the avx2 level and above).
LowPrecisionGemm low_precision_gemm(at::ScalarType t) {
  const Requested requested = requested_gemm();
  TORCH_CHECK(is_reduced_floating(t), "manual_ops low_precision_gemm: expected bfloat16 or float16, but got ", t);
  if (requested == Requested::onednn || (requested == Requested::none && onednn_has_matmul(t))) {
    return LowPrecisionGemm::onednn;
  }
  return cpu_capability() != Capability::DEFAULT ? LowPrecisionGemm::own : LowPrecisionGemm::mm;
}

bool onednn_micro_kernel(at::ScalarType t) {
  return low_precision_gemm(t) == LowPrecisionGemm::onednn &&
         (onednn_has_micro_kernel(t) || requested_gemm() == Requested::onednn);
}

bool own_gemm(at::ScalarType t) {
  return is_reduced_floating(t) && low_precision_gemm(t) != LowPrecisionGemm::mm;
}

bool prefers_plain(at::ScalarType t) {
  return !own_gemm(t) || low_precision_gemm(t) == LowPrecisionGemm::onednn;
}

Matrix matrix(const Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "manual_ops matrix: expected a 2-D tensor, but got size ", t.sizes());
  return {t, 0, Dim::plain(t.size(0), t.stride(0)), Dim::plain(t.size(1), t.stride(1))};
}

void matmul(const Matrix& A, const Matrix& B, const Matrix& C, bool accumulate, const Tensor& bias) {
  const at::ScalarType t = A.t.scalar_type(), out_type = C.t.scalar_type();
  TORCH_CHECK(B.t.scalar_type() == t && (out_type == t || out_type == at::kFloat), "manual_ops matmul: unsupported dtypes ",
              t, " @ ", B.t.scalar_type(), " into ", out_type);
  TORCH_CHECK(A.cols.size == B.rows.size && A.rows.size == C.rows.size && B.cols.size == C.cols.size,
              "manual_ops matmul: mismatched sizes (", A.rows.size, " x ", A.cols.size, ") @ (", B.rows.size, " x ",
              B.cols.size, ") into (", C.rows.size, " x ", C.cols.size, ")");
  if (is_reduced_floating(t) && out_type == t && !accumulate && low_precision_gemm(t) == LowPrecisionGemm::onednn) {
    // One product into C of the operands' dtype, on plain matrices: oneDNN's matmul (AMX), float32
    // sums plus bias rounded once, measured 1.5-2.5x our blocking around its micro-kernel. The same
    // call on a CPU without the hardware (MANUAL_OPS_BF16_GEMM=onednn) is slow but as exact.
    const Tensor a = as_tensor(A), b = as_tensor(B);
    Tensor c = as_tensor(C);
    if (a.dim() == 2 && b.dim() == 2 && c.dim() == 2) {
      bias.defined() ? at::addmm_out(c, bias.to(t), a, b) : at::mm_out(c, a, b);
      return;
    }
  }
  if (!own_gemm(t)) {
    // at::mm in the opmath dtype (float32 for bfloat16/float16 operands), rounded once into C.
    const at::ScalarType ct = at::toOpMathType(t);
    const auto in_opmath = [&](const Tensor& t) { return t.scalar_type() == ct ? t : t.to(ct); };
    const auto operand = [&](const Matrix& m) {  // 2-D, in the opmath dtype (a copy only where needed)
      const Tensor t = as_tensor(m);
      return in_opmath(t.dim() == 2 ? t : t.reshape({m.rows.size, m.cols.size}));
    };
    const Tensor a = operand(A), b = operand(B);
    const Tensor bias_c = bias.defined() ? in_opmath(bias) : bias;
    Tensor c = as_tensor(C);
    if (c.dim() != 2 || out_type != ct) {  // a split dimension or a 16-bit C: the product is made apart
      const Tensor product = (bias_c.defined() ? at::addmm(bias_c, a, b) : at::mm(a, b)).view(c.sizes());
      accumulate ? c.add_(product) : c.copy_(product);
    } else if (accumulate) {
      c.addmm_(a, b);
      if (bias_c.defined()) c.add_(bias_c);
    } else {
      bias_c.defined() ? at::addmm_out(c, bias_c, a, b) : at::mm_out(c, a, b);
    }
    return;
  }
  const Tensor bias_values = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;  // an expanded bias has stride 0
  const float* bias_data = bias.defined() ? bias_values.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(t, "manual_ops_matmul", [&] {
    const View<const scalar_t> a{A.t.const_data_ptr<scalar_t>() + A.offset, A.rows, A.cols};
    const View<const scalar_t> b{B.t.const_data_ptr<scalar_t>() + B.offset, B.rows, B.cols};
    // the other products: on oneDNN's micro-kernel, or else (AVX512-BF16 without AMX) on our GEMM
    const bool hardware = onednn_has_micro_kernel(t), onednn = onednn_micro_kernel(t);
    const auto run = [&](auto* c_data) {
      using TC = std::remove_pointer_t<decltype(c_data)>;
      const View<TC> c{c_data + C.offset, C.rows, C.cols};
      onednn ? gemm_brgemm<scalar_t, TC>(a, b, c, accumulate, bias_data, hardware)
             : gemm<scalar_t, TC>(a, b, c, accumulate, bias_data);
    };
    out_type == at::kFloat ? run(C.t.mutable_data_ptr<float>()) : run(C.t.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace manual_ops
