// Loads and stores between memory of a floating dtype T (float, double, bfloat16, float16) and
// at::vec vectors of its opmath type (float32 for bfloat16 and float16, else T itself), for the
// kernels of csrc/cpu/*.cpp. A 16-bit value widens exactly; float32 is rounded to nearest even into
// bfloat16 / float16 (at::vec's conversions, as c10::BFloat16's and c10::Half's).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace manual_ops {
namespace CPU_CAPABILITY {

template <typename T>
using OpVec = at::vec::Vectorized<at::opmath_type<T>>;

// The first `count` (at most OpVec<T>::size()) values of p; the other lanes are zero.
template <typename T>
inline OpVec<T> load_opmath(const T* p, int64_t count = OpVec<T>::size()) {
  if constexpr (at::is_reduced_floating_point_v<T>) {
    if (count == OpVec<T>::size()) {
      OpVec<T> out;
      at::vec::load_to_float(p, out);
      return out;
    }
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count)));
  } else {
    return OpVec<T>::loadu(p, count);
  }
}

// p[0 .. 2 * size) = (lo, hi): for 16-bit T one full vector of T, stored whole.
template <typename T>
inline void store_opmath2(T* p, const OpVec<T>& lo, const OpVec<T>& hi) {
  if constexpr (at::is_reduced_floating_point_v<T>) {
    at::vec::convert_from_float<T>(lo, hi).store(p);
  } else {
    lo.store(p), hi.store(p + OpVec<T>::size());
  }
}

// p[0 .. count) = the first `count` lanes of v.
template <typename T>
inline void store_opmath(T* p, const OpVec<T>& v, int64_t count = OpVec<T>::size()) {
  if constexpr (at::is_reduced_floating_point_v<T>) {
    at::vec::convert_from_float<T>(v, v).store(p, count);
  } else {
    v.store(p, count);
  }
}

// out[j] = value(j, count) over n values, `value` giving a vector of its first `count` lanes: two vectors
// a step (for a 16-bit T, one whole vector of T stored at once), then one at a time, the last by count.
template <typename T, typename F>
inline void store_run(T* out, int64_t n, const F& value) {
  constexpr int64_t W = OpVec<T>::size();
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) store_opmath2(out + j, value(j, W), value(j + W, W));
  for (; j < n; j += W) {
    const int64_t count = std::min(W, n - j);
    store_opmath(out + j, value(j, count), count);
  }
}

// out[i] = value(in[0][i], in[1][i], ...) over out.numel() elements of dense tensors of T with equal strides
// (out may be one of them), in parallel chunks, each value a vector of opmath lanes loaded from T (the last
// vector of a chunk by count): the loop of every elementwise kernel (activations, dropout).
template <typename T, typename F, typename... In>
void elementwise(const F& value, at::Tensor& out, const In&... in) {
  constexpr int64_t kGrain = 1 << 14;
  T* dst = out.mutable_data_ptr<T>();
  const auto src = std::make_tuple(in.template const_data_ptr<T>()...);
  at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
    store_run(dst + begin, end - begin, [&](int64_t j, int64_t count) {
      return std::apply([&](const auto*... p) { return value(load_opmath(p + begin + j, count)...); }, src);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace manual_ops
