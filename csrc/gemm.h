// Our own GEMM for the convolution kernels, for float32, bfloat16 and float16 operands.
//
// It packs its operands into float32 panels itself, so a bfloat16 or float16 operand is converted
// as it is packed (no float32 copy of it is made), multiplies in float32 with an AVX2/FMA
// micro-kernel, and rounds the float32 result once into an output of the operands' dtype or
// float32. It needs AVX2 and FMA (use_avx2()); matmul() falls back to at::mm otherwise.
#pragma once

#include "common.h"
#include "cpu_capability.h"

namespace manual_ops {

// C = A @ B + bias, or C += A @ B + bias when `accumulate`, for 2-D tensors of any strides: A and B
// of one dtype, C of theirs or float32, bias float32 (one value per column of C) or undefined.
// Float32 arithmetic, rounded once into C. Threads: its own parallel region; call it outside one.
// Our GEMM for float32, bfloat16 and float16 where the CPU has AVX2 and FMA, else at::mm (on
// copies in C's dtype).
void matmul(const Tensor& A, const Tensor& B, Tensor& C, bool accumulate, const Tensor& bias = Tensor());

}  // namespace manual_ops
