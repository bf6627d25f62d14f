// cross_entropy's float32 row primitives (cpu/cross_entropy_kernel.h), compiled once per CPU
// capability (cpu_capability.h) with at::vec: the row in vectors of Vectorized<float>::size()
// lanes, the last partial vector by count, and the lanes reduced at the end (reduce_all), so sums
// are in float32 lanes, as torch's log_softmax sums. Derivation: docs/derivations.md, "cross_entropy".
#include "cpu/cross_entropy_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/cpu/vec/vec_convert.h>

#include <limits>

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

// exp of each lane (not Vectorized::exp: Sleef's expf made a (256, 1000) cross_entropy 1.06 of the
// built-in's time at the avx2 level, against 0.76-0.87 with this one):
//   exp(x) = 2^n exp(r),   n = round(x / ln2),   r = x - n ln2  in [-ln2/2, ln2/2],
// - r in two steps (Cody-Waite): ln2 = L_hi + L_lo with L_hi = 0.693359375 (9 significant bits, so
//   n L_hi is exact for |n| < 2^15) and L_lo = -2.12194440e-4, r = (x - n L_hi) - n L_lo;
// - exp(r) ~ 1 + r + r^2 P(r), P of degree 5 with the minimax coefficients of the Cephes library's
//   expf (about 1 ulp over the interval);
// - 2^n put into the exponent bits as 2^n1 2^n2 with n1 = floor(n / 2), n2 = n - n1, so that both
//   factors are normal floats for every n below and the product rounds once into the subnormals.
// x is first clamped to [-104, 89]: exp(-104) is below half the smallest subnormal (2^-150), so
// very negative inputs and -inf give 0; exp(89) overflows, so large inputs and +inf give inf. The
// clamp keeps NaN (at::vec's maximum and minimum propagate it), and NaN stays NaN.
Vec exp_lanes(Vec x) {
  x = at::vec::minimum(Vec(89.f), at::vec::maximum(Vec(-104.f), x));
  const Vec n = (x * Vec(1.44269504088896341f)).round();  // to nearest, ties to even
  Vec r = at::vec::fmadd(n, Vec(-0.693359375f), x);
  r = at::vec::fmadd(n, Vec(2.12194440e-4f), r);
  Vec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + Vec(1.f));
  using Int = at::vec::Vectorized<int32_t>;
  const Int ni = at::vec::convert<int32_t>(n);  // n is integral: the truncation is exact
  const Int n1 = ni >> Int(1), n2 = ni - n1;
  const Vec scale1 = at::vec::cast<float>((n1 + Int(127)) << Int(23));
  const Vec scale2 = at::vec::cast<float>((n2 + Int(127)) << Int(23));
  return p * scale1 * scale2;
}

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
  const Vec sum = fold_row(x, nullptr, C, Vec(0.f), [&](Vec acc, Vec xv, Vec) { return acc + exp_lanes(xv - mv); });
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
    at::vec::fmadd(av, exp_lanes(Vec::loadu(x + c) - lv), bv * wv).store(out + c);
  }
  if (c < C) {
    const int64_t n = C - c;
    const Vec wv = w ? Vec::loadu(w + c, n) : Vec(1.f);
    at::vec::fmadd(av, exp_lanes(Vec::loadu(x + c, n) - lv), bv * wv).store(out + c, n);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

MANUAL_OPS_REGISTER_KERNEL(row_max_stub, CPU_CAPABILITY::row_max_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_sum_exp_stub, CPU_CAPABILITY::row_sum_exp_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_weighted_gap_stub, CPU_CAPABILITY::row_weighted_gap_kernel);
MANUAL_OPS_REGISTER_KERNEL(row_scaled_softmax_stub, CPU_CAPABILITY::row_scaled_softmax_kernel);

}  // namespace manual_ops
