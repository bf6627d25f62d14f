// The GEMMs of the convolution kernels: matmul() on Matrix views (any strides, and a dimension
// may be split in two: a conv weight seen in place as a (Cout, kh*kw*Cg) matrix in tap order).
//
// bfloat16 and float16 operands go to our own GEMMs (gemm.cpp), which pack the operands themselves
// (no float32 copy of them is made) and round the float32 result once into an output of the
// operands' dtype or float32. Where oneDNN has a micro-kernel for the dtype (AMX, AVX512-BF16,
// AVX512-FP16), plain 2-D products into the operands' dtype go to at::mm_out (oneDNN's matmul) and
// the others' packed blocks are multiplied by the micro-kernel (at::native::cpublas::brgemm:
// products of the operands' dtype, float32 sums; 4x our float32 GEMM's speed on a Sapphire Rapids);
// elsewhere they are converted to float32 as they are packed and multiplied with our micro-kernel
// (cpu/gemm_kernel.cpp, at the avx2 level and above). ATen's at::mm has no fast bfloat16/float16
// path on CPUs without native support for them (1024^2: 2.25 s against 12-25 ms in float32 on an AVX2 EPYC), and on those with it rounds a
// sum of tiles (several GEMMs into one float32 result) more than once. float32 and float64 go to
// at::mm (MKL), which is faster on our float32 shapes than our GEMM (measured: conv geometric mean
// 1.14-1.21 against 1.32 of the built-in's time), as do all dtypes on a CPU without AVX2 and FMA
// (on float32 copies).
#pragma once

#include "common.h"
#include "cpu_capability.h"

namespace manual_ops {

// One dimension of a matrix over a tensor's storage: index i lies at
// (i / split) * outer + (i % split) * stride elements from the tensor's data. A plain strided
// dimension has split = size (at least 1).
struct Dim {
  int64_t size, stride, split, outer;
  static Dim plain(int64_t size, int64_t stride) { return {size, stride, std::max<int64_t>(size, 1), 0}; }
  bool is_plain() const { return split >= size; }
  int64_t offset(int64_t i) const { return is_plain() ? i * stride : (i / split) * outer + (i % split) * stride; }
};

// A matrix over `t`'s data: element (i, j) lies offset + rows.offset(i) + cols.offset(j) elements
// from t's data pointer.
struct Matrix {
  Tensor t;
  int64_t offset;
  Dim rows, cols;
  Matrix transposed() const { return {t, offset, cols, rows}; }
  // Rows [start, start + length), of a plain row dimension.
  Matrix narrow_rows(int64_t start, int64_t length) const {
    TORCH_CHECK(rows.is_plain(), "manual_ops Matrix: narrow_rows of a split dimension");
    return {t, offset + start * rows.stride, Dim::plain(length, rows.stride), cols};
  }
};

// How matmul() multiplies bfloat16 / float16 operands (MANUAL_OPS_BF16_GEMM, gemm.cpp): on oneDNN (its
// matmul for plain products; the others on its micro-kernel with our packing and blocking where it has one,
// AMX, else on our GEMM), with our AVX2 GEMM, or by at::mm on float32 copies (no AVX2).
enum class LowPrecisionGemm { onednn, own, mm };
LowPrecisionGemm low_precision_gemm(at::ScalarType t);

// Whether matmul()'s bfloat16 / float16 products other than the plain ones (accumulating, into float32, split
// dimensions) run on oneDNN's micro-kernel with our blocking: where it has one (AMX), or where
// MANUAL_OPS_BF16_GEMM=onednn asks for it (on a CPU without it, its plain loop: for the tests).
bool onednn_micro_kernel(at::ScalarType t);

// Whether matmul() runs our GEMM for dtype t, which reads and writes any Matrix view (else at::mm).
bool own_gemm(at::ScalarType t);

// Whether matmul() is fastest for dtype t on plain matrices, so that a caller copies a small operand
// (a conv's weight) into plain strides first: at::mm, and oneDNN's matmul for 16-bit products.
bool prefers_plain(at::ScalarType t);

// A 2-D tensor (any strides) as a Matrix.
Matrix matrix(const Tensor& t);

// C = A @ B + bias, or C += A @ B + bias when `accumulate`: A and B of one dtype, C of theirs or
// float32, bias (one value per column of C, any floating dtype) or undefined. Arithmetic in the
// opmath dtype (float32 for bfloat16/float16, float64 for float64), rounded once
// into C. Threads: its own parallel region; call it outside one.
void matmul(const Matrix& A, const Matrix& B, const Matrix& C, bool accumulate, const Tensor& bias = Tensor());

}  // namespace manual_ops
