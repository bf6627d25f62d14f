// conv2d's NCHW <-> NHWC transposes (cpu/transpose_kernel.h), compiled once per CPU capability
// (cpu_capability.h), with register transposes: at AVX512 at::vec's transpose_mxn (16 x 16 float32,
// 32 x 32 16-bit blocks); at AVX2 its 8 x 8 float32 blocks, and for 16-bit values an intrinsic one
// (below). Shuffles move bits, so no value changes; float32 into bfloat16/float16 is rounded by
// at::vec::convert.
#include "cpu/transpose_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.h"
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

// The planes are walked in kBlock-square blocks, read row by row and written row by row, so that every
// cache line of either side is used whole at once (a column-wise walk of rows H*W*4 bytes apart would
// map them all to one cache set and miss on every element).
constexpr int64_t kBlock = 32;

#if defined(CPU_CAPABILITY_AVX2)
// The 8 x 8 transpose of the rows r[0..7]: r[q] becomes column q. Shuffles move bits, so 16-bit values
// zero-extended into the 32-bit lanes come out unchanged.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// The low 16 bits of the 32-bit lanes of v, in order, in the low 128 bits: packing gives, per 128-bit
// half, [v0..3 v0..3 | v4..7 v4..7]; the 64-bit blocks reordered 0, 2, 1, 3 put them in order.
inline __m128i low_halves(__m256i v) {
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0xD8));
}
#endif

// d[j * ld_d + i] = s[i * ld_s + j] for i < m, j < n (m, n <= kBlock).
void transpose_block(const float* s, int64_t ld_s, float* d, int64_t ld_d, int64_t m, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  at::vec::transpose_mxn<float>(s, ld_s, d, ld_d, static_cast<int>(m), static_cast<int>(n));
#else
  for (int64_t i = 0; i < m; i += 8)
    for (int64_t j = 0; j < n; j += 8) {
      if (i + 8 <= m && j + 8 <= n) {
        at::vec::transpose_mxn<float, 8, 8>(s + i * ld_s + j, ld_s, d + j * ld_d + i, ld_d);
      } else {
        at::vec::transpose_mxn<float>(s + i * ld_s + j, ld_s, d + j * ld_d + i, ld_d,
                                      static_cast<int>(std::min<int64_t>(8, m - i)),
                                      static_cast<int>(std::min<int64_t>(8, n - j)));
      }
    }
#endif
}

// float64: at::vec has no register transpose for it; one value at a time.
void transpose_block(const double* s, int64_t ld_s, double* d, int64_t ld_d, int64_t m, int64_t n) {
  at::vec::transpose_mxn<double>(s, ld_s, d, ld_d, static_cast<int>(m), static_cast<int>(n));
}

template <typename T>  // c10::BFloat16, c10::Half: 16 bits in .x
void transpose_block(const T* s, int64_t ld_s, T* d, int64_t ld_d, int64_t m, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  at::vec::transpose_mxn<c10::BFloat16>(reinterpret_cast<const c10::BFloat16*>(s), ld_s,
                                        reinterpret_cast<c10::BFloat16*>(d), ld_d, static_cast<int>(m),
                                        static_cast<int>(n));
#elif defined(CPU_CAPABILITY_AVX2)
  // Intrinsics: at::vec has no AVX2 transpose of 16-bit values, and widening them in scalar loops
  // for its float32 one took 18% of a bfloat16 1x1 conv's forward (perf, at the avx2 level). So
  // 8 x 8 blocks, zero-extended to 32-bit lanes, transposed in registers (transpose8) and packed
  // back (low_halves).
  for (int64_t i = 0; i < m; i += 8)
    for (int64_t j = 0; j < n; j += 8) {
      if (i + 8 > m || j + 8 > n) {
        for (int64_t r = i; r < std::min<int64_t>(i + 8, m); ++r)
          for (int64_t c = j; c < std::min<int64_t>(j + 8, n); ++c) d[c * ld_d + r] = s[r * ld_s + c];
        continue;
      }
      __m256 v[8];
      for (int64_t r = 0; r < 8; ++r)
        v[r] = _mm256_castsi256_ps(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + (i + r) * ld_s + j))));
      transpose8(v);
      for (int64_t c = 0; c < 8; ++c) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (j + c) * ld_d + i), low_halves(_mm256_castps_si256(v[c])));
      }
    }
#else
  at::vec::transpose_mxn<c10::BFloat16>(reinterpret_cast<const c10::BFloat16*>(s), ld_s,
                                        reinterpret_cast<c10::BFloat16*>(d), ld_d, static_cast<int>(m),
                                        static_cast<int>(n));
#endif
}

template <typename src_t, typename dst_t>
void transpose_planes(const src_t* src, dst_t* dst, int64_t nb, int64_t rows, int64_t cols) {
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock;
  at::parallel_for(0, nb * row_blocks, 1, [&](int64_t begin, int64_t end) {
    float turned[kBlock * kBlock];  // a float32 block, transposed, before its rounding
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / row_blocks, r0 = (t % row_blocks) * kBlock, nr = std::min(kBlock, rows - r0);
      const src_t* s = src + b * rows * cols + r0 * cols;
      dst_t* d = dst + b * rows * cols + r0;
      for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
        const int64_t nc = std::min(kBlock, cols - c0);
        if constexpr (std::is_same_v<src_t, dst_t>) {
          transpose_block(s + c0, cols, d + c0 * rows, rows, nr, nc);
        } else {
          transpose_block(s + c0, cols, turned, kBlock, nr, nc);
          for (int64_t c = 0; c < nc; ++c) at::vec::convert(turned + c * kBlock, d + (c0 + c) * rows, nr);
        }
      }
    }
  });
}

void transpose_planes_kernel(const at::Tensor& src, const at::Tensor& dst, int64_t nb, int64_t rows, int64_t cols) {
  MANUAL_OPS_DISPATCH_FLOATING(dst.scalar_type(), "transpose_planes", [&] {
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    if (src.scalar_type() == dst.scalar_type()) {
      transpose_planes(src.const_data_ptr<scalar_t>(), out, nb, rows, cols);
    } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
      transpose_planes(src.const_data_ptr<float>(), out, nb, rows, cols);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(transpose_planes_stub, CPU_CAPABILITY::transpose_planes_kernel);

}  // namespace manual_ops
