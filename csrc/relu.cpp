// ReLU and its in-place form, with the backward written by hand.
// Derivation: docs/derivations.md, "relu".
#include "common.h"
#include "cpu_capability.h"
#include "vec_avx2.h"

#include <immintrin.h>

namespace manual_ops {
namespace {

constexpr int64_t kGrain = 1 << 15;

// A dense copy of `t` (itself when already dense). Dense tensors of equal strides
// can be walked as flat arrays of numel() elements from data_ptr().
Tensor dense(const Tensor& t) { return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t); }

// The AVX2 versions of the float32 loops below (8 lanes; see cpu_capability.h): x < 0 and y <= 0
// are ordered compares (false for NaN), and and-not with that mask keeps the other operand.
MANUAL_OPS_AVX2 void relu_avx2(const float* in, float* out, int64_t begin, int64_t end) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    _mm256_storeu_ps(out + i, _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ), v));
  }
  for (; i < end; ++i) out[i] = in[i] < 0.0f ? 0.0f : in[i];
}

MANUAL_OPS_AVX2 void relu_backward_avx2(const float* y, const float* g, float* gi, int64_t begin,
                                                            int64_t end) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 mask = _mm256_cmp_ps(_mm256_loadu_ps(y + i), zero, _CMP_LE_OQ);
    _mm256_storeu_ps(gi + i, _mm256_andnot_ps(mask, _mm256_loadu_ps(g + i)));
  }
  for (; i < end; ++i) gi[i] = y[i] <= 0.0f ? 0.0f : g[i];
}

// bfloat16 and float16, 16 values a step: the ordered compare kCmp of each value (as float32) with 0,
// as 16-bit masks (the 32-bit masks packed with signed saturation, which keeps all-ones and zero,
// in order as in vec_avx2.h's pack16); and-not with the mask keeps the other operand's bits as they are.
template <int kCmp, typename T>
MANUAL_OPS_AVX2 inline __m256i compare16(const T* p) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lo = _mm256_castps_si256(_mm256_cmp_ps(load8(p), zero, kCmp));
  const __m256i hi = _mm256_castps_si256(_mm256_cmp_ps(load8(p + 8), zero, kCmp));
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
}

template <typename T>
MANUAL_OPS_AVX2 void relu_avx2(const T* in, T* out, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_andnot_si256(compare16<_CMP_LT_OQ>(in + i), v));
  }
  for (; i < end; ++i) out[i] = in[i] < T(0) ? T(0) : in[i];
}

template <typename T>
MANUAL_OPS_AVX2 void relu_backward_avx2(const T* y, const T* g, T* gi, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m256i gv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(gi + i), _mm256_andnot_si256(compare16<_CMP_LE_OQ>(y + i), gv));
  }
  for (; i < end; ++i) gi[i] = y[i] <= T(0) ? T(0) : g[i];
}

// Runs the AVX2 loop where there is one (has_avx2_path, use_avx2()); false: the caller runs its own.
template <typename T>
bool relu_vectorised(const T* in, T* out, int64_t begin, int64_t end) {
  if constexpr (has_avx2_path<T>) {
    if (use_avx2()) relu_avx2(in, out, begin, end);
    return use_avx2();
  }
  return false;
}

template <typename T>
bool relu_backward_vectorised(const T* y, const T* g, T* gi, int64_t begin, int64_t end) {
  if constexpr (has_avx2_path<T>) {
    if (use_avx2()) relu_backward_avx2(y, g, gi, begin, end);
    return use_avx2();
  }
  return false;
}

// y[i] = max(x[i], 0), written `x < 0 ? 0 : x` so that NaN and -0.0 pass through as in torch.
void relu_kernel(const Tensor& x, Tensor& y) {
  MANUAL_OPS_DISPATCH_FLOATING(x.scalar_type(), "relu", [&] {
    const scalar_t* in_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (relu_vectorised(in_ptr, out_ptr, begin, end)) return;
      // Local copies of the pointers, so that the stores cannot alias them and the loop vectorizes
      // (in == out for relu_, so no __restrict__ here).
      const scalar_t* in = in_ptr;
      scalar_t* out = out_ptr;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t v = in[i];
        out[i] = v < scalar_t(0) ? scalar_t(0) : v;
      }
    });
  });
}

Tensor relu_forward(const Tensor& input) {
  check_floating("relu", "input", input);
  const Tensor x = dense(input);
  Tensor out = at::empty_like(x);
  relu_kernel(x, out);
  return out;
}

void relu_inplace(Tensor& self) {
  check_floating("relu_", "self", self);
  if (self.is_non_overlapping_and_dense()) {
    relu_kernel(self, self);
  } else {
    Tensor tmp = dense(self);
    relu_kernel(tmp, tmp);
    self.copy_(tmp);
  }
}

// Backward from the saved output y = relu(x): dx[i] = dy[i] * 1[y[i] > 0]
// (y > 0 exactly where x > 0, so the output can stand in for an overwritten input;
// like torch, a NaN output passes the gradient through).
Tensor relu_backward(const Tensor& grad_output, const Tensor& result) {
  const char* op = "relu_backward";
  check_floating(op, "result", result);
  check_same_dtype(op, "result", result, "grad_output", grad_output);
  TORCH_CHECK(grad_output.sizes() == result.sizes(), op, ": expected grad_output of size ", result.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  const Tensor y = dense(result);
  const Tensor dy = grad_output.strides() == y.strides() ? grad_output : at::empty_like(y).copy_(grad_output);
  Tensor dx = at::empty_like(y);
  MANUAL_OPS_DISPATCH_FLOATING(y.scalar_type(), "relu_backward", [&] {
    const scalar_t* out_ptr = y.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = dy.const_data_ptr<scalar_t>();
    scalar_t* gi_ptr = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (relu_backward_vectorised(out_ptr, g_ptr, gi_ptr, begin, end)) return;
      // Unaliased locals and unconditional loads: a branch-free select the compiler vectorizes.
      const scalar_t* __restrict__ out = out_ptr;
      const scalar_t* __restrict__ g = g_ptr;
      scalar_t* __restrict__ gi = gi_ptr;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t y_i = out[i], g_i = g[i];
        gi[i] = y_i <= scalar_t(0) ? scalar_t(0) : g_i;
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("relu_forward", &relu_forward);
  m.impl("relu_", &relu_inplace);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace manual_ops
