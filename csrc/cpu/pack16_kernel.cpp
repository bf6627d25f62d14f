// Packing loops of 16-bit GEMM operands (cpu/pack16_kernel.h), compiled once per CPU capability
// (cpu_capability.h). At AVX512 they are at::vec's AMX packing helpers (pack_vnni2, and
// transpose_mxn's 32 x 32 blocks of 16-bit values); at the other levels, at::vec's portable
// transpose_mxn and a plain interleaving loop. Nothing is converted: the values are bits.
#include "cpu/pack16_kernel.h"

#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/vec_half.h>

#include <algorithm>

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using c10::BFloat16;

void vnni_pack_kernel(const BFloat16* src, int64_t ld_src, int64_t K, int64_t N, BFloat16* dst) {
#if defined(CPU_CAPABILITY_AVX512)
  at::vec::pack_vnni2(src, dst, ld_src, K, N);
#else
  for (int64_t p = 0; p < K; p += 2) {
    const BFloat16* r0 = src + p * ld_src;
    const BFloat16* r1 = p + 1 < K ? r0 + ld_src : nullptr;
    BFloat16* out = dst + p * N;
    for (int64_t n = 0; n < N; ++n) out[2 * n] = r0[n], out[2 * n + 1] = r1 != nullptr ? r1[n] : BFloat16(0.f);
  }
#endif
}

// In blocks of 32 x 32, the largest that at::vec's AVX-512 transpose of 16-bit values takes.
void transpose16_kernel(const BFloat16* src, int64_t ld_src, int64_t rows, int64_t cols, BFloat16* dst,
                        int64_t ld_dst) {
  constexpr int64_t kBlock = 32;
  for (int64_t i = 0; i < rows; i += kBlock)
    for (int64_t j = 0; j < cols; j += kBlock)
      at::vec::transpose_mxn<BFloat16>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                       static_cast<int>(std::min(kBlock, rows - i)),
                                       static_cast<int>(std::min(kBlock, cols - j)));
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(vnni_pack_stub, CPU_CAPABILITY::vnni_pack_kernel);
MANUAL_OPS_REGISTER_KERNEL(transpose16_stub, CPU_CAPABILITY::transpose16_kernel);

}  // namespace manual_ops
