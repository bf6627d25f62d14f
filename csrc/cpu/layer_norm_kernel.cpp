// layer_norm.cpp's row loops (cpu/layer_norm_kernel.h), compiled once per CPU capability
// (cpu_capability.h) with at::vec, in vectors of opmath_t. Derivation: docs/derivations.md, "layer_norm".
#include "cpu/layer_norm_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>

#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using at::vec::fmadd;

template <typename V>
inline auto total(const V& a, const V& b) {
  return at::vec::vec_reduce_all<typename V::value_type>([](const V& p, const V& q) { return p + q; }, a + b);
}

// Forward, per row: the mean and the biased variance in two passes (two vector accumulators each, the
// tail in scalars), then y = (x - mean) * rstd * gamma + beta in one pass, rounded once. The mean is
// K + sum(x - K) / M with K the row's first value, so that a row far from 0 (|mean| >> sigma) sums values of
// the size of sigma, not of the mean, and keeps its digits (as batch_norm's shifted moments).
template <typename T, typename opmath_t = ln_opmath<T>>
void rows(const T* x, int64_t n_rows, int64_t M, opmath_t eps, const opmath_t* gamma, const opmath_t* beta, T* y,
          opmath_t* mean, opmath_t* rstd) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* xr = x + r * M;
    const opmath_t K = opmath_t(xr[0]);
    const Vec kv(K);
    Vec s0(0), s1(0);
    int64_t j = 0;
    for (; j + 2 * W <= M; j += 2 * W) s0 = s0 + (load_opmath(xr + j) - kv), s1 = s1 + (load_opmath(xr + j + W) - kv);
    for (; j + W <= M; j += W) s0 = s0 + (load_opmath(xr + j) - kv);
    opmath_t sum = total(s0, s1);
    for (; j < M; ++j) sum += opmath_t(xr[j]) - K;
    const opmath_t mu = K + sum / opmath_t(M);
    const Vec muv(mu);
    Vec q0(0), q1(0);
    j = 0;
    for (; j + 2 * W <= M; j += 2 * W) {
      const Vec d0 = load_opmath(xr + j) - muv, d1 = load_opmath(xr + j + W) - muv;
      q0 = fmadd(d0, d0, q0), q1 = fmadd(d1, d1, q1);
    }
    for (; j + W <= M; j += W) {
      const Vec d = load_opmath(xr + j) - muv;
      q0 = fmadd(d, d, q0);
    }
    opmath_t sq = total(q0, q1);
    for (; j < M; ++j) sq += (opmath_t(xr[j]) - mu) * (opmath_t(xr[j]) - mu);
    const opmath_t s = opmath_t(1) / std::sqrt(sq / opmath_t(M) + eps);
    mean[r] = mu, rstd[r] = s;
    const Vec sv(s);
    store_run(y + r * M, M, [&](int64_t i, int64_t count) {
      Vec v = (load_opmath(xr + i, count) - muv) * sv;
      if (gamma) v = v * Vec::loadu(gamma + i, count);
      if (beta) v = v + Vec::loadu(beta + i, count);
      return v;
    });
  }
}

// Backward, per row: one pass of the sums sum g, sum g * xhat (and the dgamma, dbeta accumulations), then
// dx in a second pass.
template <typename T, typename opmath_t = ln_opmath<T>>
void backward_rows(const T* dy, const T* x, int64_t n_rows, int64_t M, const opmath_t* mean, const opmath_t* rstd,
                   const opmath_t* gamma, T* dx, opmath_t* dgamma, opmath_t* dbeta) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t r = 0; r < n_rows; ++r) {
    const T *xr = x + r * M, *dyr = dy + r * M;
    const opmath_t mu = mean[r], s = rstd[r];
    const Vec muv(mu), sv(s);
    Vec a1(0), a2(0);
    int64_t j = 0;
    for (; j + W <= M; j += W) {
      const Vec d = load_opmath(dyr + j), xh = (load_opmath(xr + j) - muv) * sv;
      const Vec g = gamma ? d * Vec::loadu(gamma + j) : d;
      a1 = a1 + g, a2 = fmadd(g, xh, a2);
      if (dgamma) fmadd(d, xh, Vec::loadu(dgamma + j)).store(dgamma + j);
      if (dbeta) (Vec::loadu(dbeta + j) + d).store(dbeta + j);
    }
    opmath_t A1 = total(a1, Vec(0)), A2 = total(a2, Vec(0));
    for (; j < M; ++j) {
      const opmath_t d = opmath_t(dyr[j]), xh = (opmath_t(xr[j]) - mu) * s, g = gamma ? d * gamma[j] : d;
      A1 += g, A2 += g * xh;
      if (dgamma) dgamma[j] += d * xh;
      if (dbeta) dbeta[j] += d;
    }
    if (!dx) continue;
    if (M == 1) {  // y = beta whatever x is: dx = 0 exactly (the formula would give rounding noise times rstd)
      dx[r] = T(0);
      continue;
    }
    const Vec c1(A1 / opmath_t(M)), c2(A2 / opmath_t(M));
    store_run(dx + r * M, M, [&](int64_t i, int64_t count) {
      const Vec d = load_opmath(dyr + i, count), xh = (load_opmath(xr + i, count) - muv) * sv;
      const Vec g = gamma ? d * Vec::loadu(gamma + i, count) : d;
      return (g - c1 - xh * c2) * sv;
    });
  }
}

template <typename T>
bool register_kernels() {
  constexpr int level = static_cast<int>(Capability::CPU_CAPABILITY);
  LayerNormStubs<T>::rows.kernels[level] = &rows<T>;
  LayerNormStubs<T>::backward_rows.kernels[level] = &backward_rows<T>;
  return true;
}

const bool registered = register_kernels<float>() && register_kernels<double>() &&
                        register_kernels<c10::BFloat16>() && register_kernels<c10::Half>();

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace manual_ops
