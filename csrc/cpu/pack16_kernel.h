// The packing of 16-bit GEMM operands for oneDNN's batch-reduce micro-kernel (gemm.cpp's
// gemm_brgemm), one copy per CPU capability (cpu/pack16_kernel.cpp). Values move as bits, so
// bfloat16 and float16 share them (both as c10::BFloat16 pointers).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

// VNNI pairs: dst[(p / 2) * 2 N + 2 n + p % 2] = src[p * ld_src + n] for p < K, n < N, and 0 in the
// second of the last pair when K is odd.
using vnni_pack_fn = void(const c10::BFloat16* src, int64_t ld_src, int64_t K, int64_t N, c10::BFloat16* dst);
// The transpose: dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols.
using transpose16_fn = void(const c10::BFloat16* src, int64_t ld_src, int64_t rows, int64_t cols, c10::BFloat16* dst,
                            int64_t ld_dst);

MANUAL_OPS_DECLARE_KERNEL(vnni_pack_stub, vnni_pack_fn);
MANUAL_OPS_DECLARE_KERNEL(transpose16_stub, transpose16_fn);

}  // namespace manual_ops
