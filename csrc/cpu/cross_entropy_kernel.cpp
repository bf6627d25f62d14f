// cross_entropy's float32 row primitives (cpu/cross_entropy_kernel.h), compiled once per CPU
// capability (cpu_capability.h) with at::vec: the row in vectors of Vectorized<float>::size()
// lanes, the last partial vector by count, and the lanes reduced at the end (reduce_all), so sums
// are in float32 lanes, as torch's log_softmax sums. exp is Vectorized<float>::exp: Sleef's expf
// (1 ulp) at AVX2 and AVX512, std::exp per lane at the portable level.
// Derivation: docs/derivations.md, "cross_entropy".
#include "cpu/cross_entropy_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

// acc = f(acc, lanes of x, lanes of w (1 when w is null)) over the row, a vector at a time; the last,
// partial vector updates only its first C mod size() lanes.
template <typename F>
Vec fold_row(const float* x, const float* w, int64_t C, Vec acc, const F& f) {
  int64_t c = 0;
  for (; c + Vec::size() <= C; c += Vec::size()) acc = f(acc, Vec::loadu(x + c), w ? Vec::loadu(w + c) : Vec(1.f));
  if (c < C) {
    const int64_t n = C - c;
    acc = Vec::set(acc, f(acc, Vec::loadu(x + c, n), w ? Vec::loadu(w + c, n) : Vec(1.f)), n);
  }
  return acc;
}

float row_max_kernel(const float* x, int64_t C) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const Vec m = fold_row(x, nullptr, C, Vec(lowest), [](Vec acc, Vec xv, Vec) { return at::vec::maximum(acc, xv); });
  return at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return at::vec::maximum(a, b); }, m);
}

float row_sum_exp_kernel(const float* x, int64_t C, float m) {
  const Vec mv(m);
  const Vec sum = fold_row(x, nullptr, C, Vec(0.f), [&](Vec acc, Vec xv, Vec) { return acc + (xv - mv).exp(); });
  return at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return a + b; }, sum);
}

float row_weighted_gap_kernel(const float* x, const float* w, int64_t C, float m) {
  const Vec mv(m), zero(0.f);
  const Vec sum = fold_row(x, w, C, zero, [&](Vec acc, Vec xv, Vec wv) {
    return acc + (w ? (wv * (mv - xv)) & (wv != zero) : mv - xv);  // w_c = 0: the term is 0, even if m - x_c is inf
  });
  return at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return a + b; }, sum);
}

void row_scaled_softmax_kernel(const float* x, int64_t C, float l, float a, const float* w, float b, float* out) {
  const Vec lv(l), av(a), bv(b);
  int64_t c = 0;
  for (; c + Vec::size() <= C; c += Vec::size()) {
    const Vec wv = w ? Vec::loadu(w + c) : Vec(1.f);
    at::vec::fmadd(av, (Vec::loadu(x + c) - lv).exp(), bv * wv).store(out + c);
  }
  if (c < C) {
    const int64_t n = C - c;
    const Vec wv = w ? Vec::loadu(w + c, n) : Vec(1.f);
    at::vec::fmadd(av, (Vec::loadu(x + c, n) - lv).exp(), bv * wv).store(out + c, n);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(row_max_stub, CPU_CAPABILITY::row_max_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_sum_exp_stub, CPU_CAPABILITY::row_sum_exp_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_weighted_gap_stub, CPU_CAPABILITY::row_weighted_gap_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_scaled_softmax_stub, CPU_CAPABILITY::row_scaled_softmax_kernel);

}  // namespace manual_ops
