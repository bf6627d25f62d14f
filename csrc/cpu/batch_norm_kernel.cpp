// batch_norm.cpp's row loops (cpu/batch_norm_kernel.h), compiled once per CPU capability
// (cpu_capability.h) with at::vec, in vectors of opmath_t (16 float32 lanes at AVX512, 8 at AVX2).
// Derivation: docs/derivations.md, "batch_norm" (the sums) and its backward (the affine passes).
#include "cpu/batch_norm_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "cpu/vec_opmath.h"

namespace manual_ops {
namespace CPU_CAPABILITY {
namespace {

using at::vec::fmadd;

// One run of n values of one channel into its lanes l1, l2 (value i into lane i mod kLanes):
//   l1 += u - ku,  l2 += (u - ku) * (v - m).
// kLanes values a step, as kLanes / W vectors of W lanes (independent add chains), then whole
// vectors into the next lanes, then single values. u == v (the forward's moments, where also
// ku == m): v - m is d, and v is not read again.
template <typename T, typename opmath_t = opmath_of<T>>
inline void run_sums(const T* u, const T* v, int64_t n, opmath_t ku, opmath_t m, opmath_t* l1, opmath_t* l2) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size(), V = kLanes / W;
  static_assert(kLanes % W == 0, "whole vectors of lanes");
  const bool same = u == v;
  const Vec kv(ku), mv(m);
  Vec a1[V], a2[V];
  for (int64_t k = 0; k < V; ++k) a1[k] = Vec::loadu(l1 + k * W), a2[k] = Vec::loadu(l2 + k * W);
  auto add = [&](int64_t i, int64_t k) {
    const Vec d = load_opmath(u + i) - kv;
    a1[k] = a1[k] + d;
    a2[k] = fmadd(d, same ? d : load_opmath(v + i) - mv, a2[k]);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < V; ++k) add(i + k * W, k);
  for (int64_t k = 0; i + W <= n; i += W, ++k) add(i, k);
  for (int64_t k = 0; k < V; ++k) a1[k].store(l1 + k * W), a2[k].store(l2 + k * W);
  for (int64_t j = i % kLanes; i < n; ++i, ++j) {
    const opmath_t d = opmath_t(u[i]) - ku;
    l1[j] += d, l2[j] += d * (opmath_t(v[i]) - m);
  }
}

template <typename T, typename opmath_t = opmath_of<T>>
void rows_sums(const T* u, const T* v, int64_t rows, int64_t L, int64_t c, int64_t C, const opmath_t* ku,
               const opmath_t* m, opmath_t* l1, opmath_t* l2) {
  for (int64_t r = 0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1)
    run_sums(u + r * L, v + r * L, L, ku[c], m[c], l1 + c * kLanes, l2 + c * kLanes);
}

// The kLanes lanes of V vectors added pairwise, as lane_total in channel_passes.h: lane j += lane j + w for
// w = kLanes / 2, ..., 1; the steps across whole vectors as vector adds, the rest within the first vector.
template <typename Vec, int64_t V>
inline typename Vec::value_type pairwise_total(Vec (&a)[V]) {
  for (int64_t w = V / 2; w > 0; w /= 2)
    for (int64_t k = 0; k < w; ++k) a[k] = a[k] + a[k + w];
  typename Vec::value_type lanes[Vec::size()];
  a[0].store(lanes);
  for (int64_t w = Vec::size() / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) lanes[j] += lanes[j + w];
  return lanes[0];
}

template <typename T, typename opmath_t = opmath_of<T>>
void row_totals(const T* u, const T* v, int64_t rows, int64_t n, int64_t stride, const opmath_t* ku,
                const opmath_t* m, opmath_t* s1, opmath_t* s2) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size(), V = kLanes / W;
  const bool same = u == v;
  for (int64_t r = 0; r < rows; ++r) {
    const T *ur = u + r * stride, *vr = v + r * stride;
    const Vec kv(ku[r]), mv(m[r]);
    Vec a1[V], a2[V];
    for (int64_t k = 0; k < V; ++k) a1[k] = Vec(0), a2[k] = Vec(0);
    auto add = [&](int64_t i, int64_t k) {
      const Vec d = load_opmath(ur + i) - kv;
      a1[k] = a1[k] + d;
      a2[k] = fmadd(d, same ? d : load_opmath(vr + i) - mv, a2[k]);
    };
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t k = 0; k < V; ++k) add(i + k * W, k);
    for (int64_t k = 0; i + W <= n; i += W, ++k) add(i, k);
    if (i < n) {  // the tail into the next lanes, as run_sums does, then the totals
      opmath_t t1[kLanes], t2[kLanes];
      for (int64_t k = 0; k < V; ++k) a1[k].store(t1 + k * W), a2[k].store(t2 + k * W);
      for (int64_t j = i % kLanes; i < n; ++i, ++j) {
        const opmath_t d = opmath_t(ur[i]) - ku[r];
        t1[j] += d, t2[j] += d * (opmath_t(vr[i]) - m[r]);
      }
      for (int64_t k = 0; k < V; ++k) a1[k] = Vec::loadu(t1 + k * W), a2[k] = Vec::loadu(t2 + k * W);
    }
    s1[r] = pairwise_total(a1), s2[r] = pairwise_total(a2);
  }
}

template <typename T, typename opmath_t = opmath_of<T>>
void nlc_rows_sums(const T* u, const T* v, int64_t rows, int64_t C, const opmath_t* ku, const opmath_t* m,
                   opmath_t* a1, opmath_t* a2) {
  using Vec = OpVec<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t r = 0; r < rows; ++r, u += C, v += C) {
    int64_t c = 0;
    for (; c + W <= C; c += W) {
      const Vec d = load_opmath(u + c) - Vec::loadu(ku + c);
      (Vec::loadu(a1 + c) + d).store(a1 + c);
      fmadd(d, load_opmath(v + c) - Vec::loadu(m + c), Vec::loadu(a2 + c)).store(a2 + c);
    }
    for (; c < C; ++c) {
      const opmath_t d = opmath_t(u[c]) - ku[c];
      a1[c] += d, a2[c] += d * (opmath_t(v[c]) - m[c]);
    }
  }
}

// out[j] = A * u[j] + B * (v[j] - Mu) + K over one run of n values, with the coefficients of one
// channel (per_lane false) or of channel j (per_lane true: an NLC row); u or v may be null (that
// term is dropped), stored by store_run.
template <bool per_lane, typename T, typename opmath_t = opmath_of<T>>
inline void affine_run(const T* u, const T* v, int64_t n, const opmath_t* A, const opmath_t* B, const opmath_t* Mu,
                       const opmath_t* K, T* out) {
  using Vec = OpVec<T>;
  const Vec a(*A), b(*B), mu(*Mu), k(*K);
  auto at = [&](int64_t j, int64_t count) {
    const auto coef = [&](const Vec& one, const opmath_t* all) { return per_lane ? Vec::loadu(all + j, count) : one; };
    Vec y = coef(k, K);
    if (v) y = fmadd(coef(b, B), load_opmath(v + j, count) - coef(mu, Mu), y);
    if (u) y = fmadd(coef(a, A), load_opmath(u + j, count), y);
    return y;
  };
  store_run(out, n, at);
}

template <typename T, typename opmath_t = opmath_of<T>>
void affine_rows(const T* u, const T* v, int64_t rows, int64_t L, int64_t c, int64_t C, const opmath_t* A,
                 const opmath_t* B, const opmath_t* Mu, const opmath_t* K, T* out) {
  for (int64_t r = 0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1) {
    affine_run<false>(u ? u + r * L : nullptr, v ? v + r * L : nullptr, L, A + c, B + c, Mu + c, K + c,
                      out + r * L);
  }
}

template <typename T, typename opmath_t = opmath_of<T>>
void affine_nlc_rows(const T* u, const T* v, int64_t rows, int64_t C, const opmath_t* A, const opmath_t* B,
                     const opmath_t* Mu, const opmath_t* K, T* out) {
  for (int64_t r = 0; r < rows; ++r)
    affine_run<true>(u ? u + r * C : nullptr, v ? v + r * C : nullptr, C, A, B, Mu, K, out + r * C);
}

template <typename T>
bool register_kernels() {
  constexpr int level = static_cast<int>(Capability::CPU_CAPABILITY);
  BatchNormStubs<T>::rows_sums.kernels[level] = &rows_sums<T>;
  BatchNormStubs<T>::nlc_rows_sums.kernels[level] = &nlc_rows_sums<T>;
  BatchNormStubs<T>::affine_rows.kernels[level] = &affine_rows<T>;
  BatchNormStubs<T>::affine_nlc_rows.kernels[level] = &affine_nlc_rows<T>;
  BatchNormStubs<T>::row_totals.kernels[level] = &row_totals<T>;
  return true;
}

const bool registered = register_kernels<float>() && register_kernels<double>() &&
                        register_kernels<c10::BFloat16>() && register_kernels<c10::Half>();

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace manual_ops
