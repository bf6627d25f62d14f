// The inner loops of gemm.cpp's own GEMM, one copy per CPU capability (cpu/gemm_kernel.cpp): the
// micro-kernel on packed float32 panels, the packing of A's rows, and the epilogue of a row of C.
#pragma once

#include <cstdint>

#include "cpu_capability.h"

namespace manual_ops {

constexpr int64_t kGemmMR = 6;   // rows of a micro-tile
constexpr int64_t kGemmNR = 16;  // columns of a micro-tile: 2 float32 vectors at AVX2, 1 at AVX512

// acc (MR x NR, row stride ld) = a (MR x kc panel, depth-major) @ b (kc x NR panel, depth-major), or
// acc += that product when `accumulate`: per value a float32 fused-multiply-add chain over kc.
using gemm_micro_kernel_fn = void(int64_t kc, const float* a, const float* b, float* acc, int64_t ld,
                                  bool accumulate);
// A panel of MR rows whose depths are adjacent (row w at rows[w], depth p at + p), as float32:
// out[p * MR + w] = rows[w][p] for p < kc.
template <typename T>
using gemm_pack_rows_fn = void(const T* const* rows, int64_t kc, float* out);
// One row of the epilogue where C's columns are adjacent: c[j] = a[j] + row_bias (+ col_bias[j])
// (+ c[j] when `accumulate`), rounded once into TC.
template <typename TC>
using gemm_epilogue_row_fn = void(TC* c, const float* a, int64_t n, float row_bias, const float* col_bias,
                                  bool accumulate);

MANUAL_OPS_DECLARE_KERNEL(gemm_micro_kernel_stub, gemm_micro_kernel_fn);

// The stubs of operand dtype T (bfloat16, float16) and of C's dtype TC (those and float32), defined
// and instantiated in gemm.cpp.
template <typename T>
struct GemmPackStub {
  static KernelStub<gemm_pack_rows_fn<T>> pack_rows;
};
template <typename TC>
struct GemmEpilogueStub {
  static KernelStub<gemm_epilogue_row_fn<TC>> epilogue_row;
};

}  // namespace manual_ops
