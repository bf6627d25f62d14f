// adaptive_avg_pool2d's window sums (cpu/pool_sum_kernel.h), compiled once per CPU capability
// (cpu_capability.h) with at::vec. Derivation: docs/derivations.md, "pooling".
#include "cpu/pool_sum_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

// sum p[i]: two vectors of partial sums a step (independent add chains), then one, reduced across
// lanes, then the last values one by one.
template <typename T, typename opmath_t = at::opmath_type<T>>
opmath_t chunk_sum(const T* p, int64_t n) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size();
  Vec a(0), b(0);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) a = a + load_opmath(p + i), b = b + load_opmath(p + i + W);
  if (i + W <= n) a = a + load_opmath(p + i), i += W;
  opmath_t total = at::vec::vec_reduce_all<opmath_t>([](const Vec& x, const Vec& y) { return x + y; }, a + b);
  for (; i < n; ++i) total += opmath_t(p[i]);
  return total;
}

// part[c] += src[c], a vector at a time, the last partial one by count.
template <typename T, typename opmath_t = at::opmath_type<T>>
void add_row(opmath_t* part, const T* src, int64_t C) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t c = 0; c < C; c += W) {
    const int64_t count = std::min(W, C - c);
    (Vec::loadu(part + c, count) + load_opmath(src + c, count)).store(part + c, count);
  }
}

template <typename T>
bool register_kernels() {
  constexpr int level = static_cast<int>(Capability::CPU_CAPABILITY);
  PoolSumStubs<T>::chunk_sum.kernels[level] = &chunk_sum<T>;
  PoolSumStubs<T>::add_row.kernels[level] = &add_row<T>;
  return true;
}

const bool registered = register_kernels<float>() && register_kernels<double>() &&
                        register_kernels<c10::BFloat16>() && register_kernels<c10::Half>();

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace manual_ops
