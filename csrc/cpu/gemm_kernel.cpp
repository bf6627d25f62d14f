// gemm.cpp's inner loops (cpu/gemm_kernel.h), compiled once per CPU capability (cpu_capability.h)
// with at::vec. The micro-kernel multiplies a packed MR x kc panel of A by a packed kc x NR panel
// of B into an MR x NR tile held in registers (the classical blocking of Goto and van de Geijn):
//   acc[i, j] += sum_{p < kc} A[i, p] * B[p, j].
#include "cpu/gemm_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using at::vec::fmadd;
using Vec = at::vec::Vectorized<float>;
constexpr int64_t MR = kGemmMR, NR = kGemmNR, W = Vec::size();
static_assert(MR == 6 && (NR == W || NR == 2 * W), "the micro-kernel's registers: 6 rows of 1 or 2 vectors");

// row[0 .. W) = v, or += when `accumulate`.
inline void store_row(float* row, const Vec& v, bool accumulate) {
  (accumulate ? v + Vec::loadu(row) : v).store(row);
}

// The accumulators are named variables: as an array, GCC spills them to the stack on every step.
void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict acc,
                  int64_t ld, bool accumulate) {
  if constexpr (NR == W) {  // AVX512: one vector per row, 6 accumulators
    Vec c0(0.f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    for (int64_t p = 0; p < kc; ++p, a += MR, b += NR) {
      const Vec b0 = Vec::loadu(b);
      c0 = fmadd(Vec(a[0]), b0, c0), c1 = fmadd(Vec(a[1]), b0, c1), c2 = fmadd(Vec(a[2]), b0, c2);
      c3 = fmadd(Vec(a[3]), b0, c3), c4 = fmadd(Vec(a[4]), b0, c4), c5 = fmadd(Vec(a[5]), b0, c5);
    }
    store_row(acc, c0, accumulate), store_row(acc + ld, c1, accumulate), store_row(acc + 2 * ld, c2, accumulate);
    store_row(acc + 3 * ld, c3, accumulate), store_row(acc + 4 * ld, c4, accumulate);
    store_row(acc + 5 * ld, c5, accumulate);
  } else {  // AVX2 and DEFAULT: two vectors per row, 12 accumulators
    Vec c00(0.f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    Vec c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t p = 0; p < kc; ++p, a += MR, b += NR) {
      const Vec b0 = Vec::loadu(b), b1 = Vec::loadu(b + W);
      Vec ai(a[0]);
      c00 = fmadd(ai, b0, c00), c01 = fmadd(ai, b1, c01);
      ai = Vec(a[1]), c10 = fmadd(ai, b0, c10), c11 = fmadd(ai, b1, c11);
      ai = Vec(a[2]), c20 = fmadd(ai, b0, c20), c21 = fmadd(ai, b1, c21);
      ai = Vec(a[3]), c30 = fmadd(ai, b0, c30), c31 = fmadd(ai, b1, c31);
      ai = Vec(a[4]), c40 = fmadd(ai, b0, c40), c41 = fmadd(ai, b1, c41);
      ai = Vec(a[5]), c50 = fmadd(ai, b0, c50), c51 = fmadd(ai, b1, c51);
    }
    const Vec lo[MR] = {c00, c10, c20, c30, c40, c50}, hi[MR] = {c01, c11, c21, c31, c41, c51};
    for (int64_t i = 0; i < MR; ++i) store_row(acc + i * ld, lo[i], accumulate), store_row(acc + i * ld + W, hi[i], accumulate);
  }
}

// W depths of the MR rows are widened into a float32 block (MR rows of W, the rest zero) and
// transposed in registers: at::vec's transpose_mxn, 16 x 16 (masked to MR rows) at AVX512, 8 x 8
// elsewhere, whose first MR lanes per depth are then stored.
template <typename T>
void pack_rows(const T* const* rows, int64_t kc, float* out) {
  alignas(64) float block[W * W] = {};  // rows MR.. stay zero; rows < MR are rewritten per step
  int64_t p = 0;
  for (; p + W <= kc; p += W) {
    for (int64_t w = 0; w < MR; ++w) load_opmath(rows[w] + p).store(block + w * W);
#if defined(CPU_CAPABILITY_AVX512)
    at::vec::transpose_mxn<float>(block, W, out + p * MR, MR, MR, W);
#else
    alignas(64) float turned[W * W];
    at::vec::transpose_mxn<float, W, W>(block, W, turned, W);
    for (int64_t q = 0; q < W; ++q) std::copy_n(turned + q * W, MR, out + (p + q) * MR);
#endif
  }
  for (; p < kc; ++p)
    for (int64_t w = 0; w < MR; ++w) out[p * MR + w] = static_cast<float>(rows[w][p]);
}

template <typename TC>
void epilogue_row(TC* c, const float* a, int64_t n, float row_bias, const float* col_bias, bool accumulate) {
  const Vec rb(row_bias);
  auto at = [&](int64_t j, int64_t count) {
    Vec v = Vec::loadu(a + j, count) + rb;
    if (col_bias != nullptr) v = v + Vec::loadu(col_bias + j, count);
    if (accumulate) v = v + load_opmath(c + j, count);
    return v;
  };
  store_run(c, n, at);
}

constexpr int level = static_cast<int>(Capability::CPU_CAPABILITY);

const bool registered = [] {
  gemm_micro_kernel_stub.kernels[level] = &micro_kernel;
  GemmPackStub<c10::BFloat16>::pack_rows.kernels[level] = &pack_rows<c10::BFloat16>;
  GemmPackStub<c10::Half>::pack_rows.kernels[level] = &pack_rows<c10::Half>;
  GemmEpilogueStub<float>::epilogue_row.kernels[level] = &epilogue_row<float>;
  GemmEpilogueStub<c10::BFloat16>::epilogue_row.kernels[level] = &epilogue_row<c10::BFloat16>;
  GemmEpilogueStub<c10::Half>::epilogue_row.kernels[level] = &epilogue_row<c10::Half>;
  return true;
}();

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace manual_ops
