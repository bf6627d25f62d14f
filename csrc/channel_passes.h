// The per-channel passes of the normalisations (batch_norm.cpp, group_norm.cpp): the sums of a
// pass over an (N, C, *) input per channel, and the per-channel affine pass, over the row loops of
// cpu/batch_norm_kernel.h. A "channel" is whatever set of values shares statistics or coefficients:
// batch_norm's channels; group_norm's groups (a (1, N*G, values per group) view) for its statistics
// and its (sample, channel) rows (a (1, N*C, L) view) for its affine passes.
//
// Dtypes: scalar_t is the input's; arithmetic is in opmath_t (float32 for bfloat16 and float16)
// and the per-channel values in acc_t (float64 for float32, float32 for bfloat16 and float16).
#pragma once

#include "common.h"
#include "cpu/batch_norm_kernel.h"

#include <ATen/AccumulateType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace manual_ops {

inline constexpr int64_t kChunk = 256;  // values per lane-chunk summed in opmath_t before flushing to acc_t

struct Geometry {
  int64_t N, C, L;
  bool nlc;  // memory is (N*L, C) rather than (N, C, L)
  int64_t M() const { return N * L; }  // values per channel
};

inline Geometry geometry_of(const Tensor& input) {
  const int64_t L = c10::multiply_integers(input.sizes().slice(2));
  return {input.size(0), input.size(1), L, is_channels_last(input) || L == 1};
}

// The input in the layout the kernels read: channels-last stays channels-last.
inline Tensor dense(const Tensor& t, const Tensor& like) { return t.contiguous(memory_format_of(like)); }


inline bool has(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The parameter dtype: float32 when the input is bfloat16 or float16 and any of `params` given
// is float32 (then all must be), else the input's.
inline at::ScalarType param_type(const Tensor& input, std::initializer_list<std::optional<Tensor>> params) {
  if (is_reduced_floating(input.scalar_type())) {
    for (const auto& p : params)
      if (has(p) && p->scalar_type() == at::kFloat) return at::kFloat;
  }
  return input.scalar_type();
}


// A normalisation's weight or bias: of the parameter dtype ptype (param_type).
inline void check_param_dtype(const char* op, const char* name, const Tensor& t, const Tensor& input,
                              at::ScalarType ptype) {
  TORCH_CHECK(t.scalar_type() == ptype, op, ": expected ", name, " of dtype ", ptype, " for input of dtype ",
              input.scalar_type(), " (weight and bias have the input's dtype, or both float32 for a bfloat16 or ",
              "float16 input), but got ", name, " of dtype ", t.scalar_type());
}

// A normalisation's saved mean and rstd, given to its backward: `count` values each (one per `unit`), of the
// parameter dtype.
inline void check_saved_stats(const char* op, const Tensor& mean, const Tensor& rstd, int64_t count, const char* unit,
                              at::ScalarType ptype) {
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"save_mean", mean}, {"save_rstd", rstd}}) {
    TORCH_CHECK(t.numel() == count && t.scalar_type() == ptype, op, ": expected ", name, " of ", count,
                " elements (one per ", unit, ") and dtype ", ptype, ", but got one of size ", t.sizes(), " and dtype ",
                t.scalar_type());
  }
}

// Writes the C values v (any arithmetic type) into the 1-D floating tensor t, converting each to t's dtype.
// Read and written element by element, so the per-channel tensors cost no ATen conversions.
template <typename acc_t>
void store_per_channel(const std::vector<acc_t>& v, const Tensor& t) {
  MANUAL_OPS_DISPATCH_FLOATING(t.scalar_type(), "store_per_channel", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    const int64_t stride = t.stride(0);
    for (size_t c = 0; c < v.size(); ++c) p[c * stride] = static_cast<scalar_t>(v[c]);
  });
}

// A new 1-D tensor of dtype `dtype` holding the values v.
template <typename acc_t>
Tensor as_tensor(const std::vector<acc_t>& v, const Tensor& like, at::ScalarType dtype) {
  Tensor t = at::empty({static_cast<int64_t>(v.size())}, like.options().dtype(dtype));
  store_per_channel(v, t);
  return t;
}


// The C values of a per-channel tensor of any floating dtype, as acc_t (`missing` when absent).
template <typename acc_t>
std::vector<acc_t> per_channel(const std::optional<Tensor>& t, int64_t C, acc_t missing) {
  std::vector<acc_t> v(C, missing);
  if (has(t)) {
    MANUAL_OPS_DISPATCH_FLOATING(t->scalar_type(), "per_channel", [&] {
      const scalar_t* p = t->const_data_ptr<scalar_t>();
      const int64_t stride = t->stride(0);
      for (int64_t c = 0; c < C; ++c) v[c] = static_cast<acc_t>(p[c * stride]);
    });
  }
  return v;
}

// Sum of the kLanes partial sums, pairwise.
template <typename scalar_t>
inline scalar_t lane_total(scalar_t* a) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) a[j] += a[j + w];
  return a[0];
}

// The two sums of a pass over the input, per channel c over its values:
//   S1 = sum (u - ku[c]),  S2 = sum (u - ku[c]) * (v - m[c]).
// Forward (shifted moments): u = v = x and ku = m = the shift K; backward: u = delta, ku = 0,
// v = x and m = mu.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
struct SumTerms {
  const scalar_t* u;
  const scalar_t* v;
  std::vector<opmath_t> ku, m;
};

// The sums of channel_sums when each channel is one contiguous row (NCL with N = 1: group_norm's groups and
// (sample, channel) rows, a batch of one sample), in parallel over the channels: each row in chunks of kChunk
// values (row_totals: kLanes lanes, added pairwise), added to its acc_t sums chunk by chunk, as channel_sums adds
// a long row (and the same sums as its short-row path, whose lanes then hold one row each). The blocks of
// channel_sums would each keep and add up partial sums of every channel, which costs O(blocks * C) where C is
// large.
template <typename scalar_t, typename opmath_t, typename acc_t>
void row_sums(const Geometry& g, const SumTerms<scalar_t>& t, std::vector<acc_t>& S1, std::vector<acc_t>& S2) {
  const int64_t C = g.C, L = g.L;
  S1.assign(C, 0), S2.assign(C, 0);
  at::parallel_for(0, C, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, L)),
                   [&](int64_t c0, int64_t c1) {
    std::vector<opmath_t> t1(c1 - c0), t2(c1 - c0);
    for (int64_t l = 0; l < L; l += kChunk) {
      BatchNormStubs<scalar_t>::row_totals(t.u + c0 * L + l, t.v + c0 * L + l, c1 - c0, std::min(kChunk, L - l), L,
                                           &t.ku[c0], &t.m[c0], t1.data(), t2.data());
      for (int64_t c = c0; c < c1; ++c) S1[c] += t1[c - c0], S2[c] += t2[c - c0];
    }
  });
}

// Per-channel sums S1[c], S2[c] of SumTerms over the M values of each channel. Memory is read in
// order, as rows (NCL: N*C rows of L values, row r in channel r % C; NLC: M rows of C values)
// split into blocks of whole rows (one per at::internal::GRAIN_SIZE values, at most kBlocks: a
// small input is one block, with no parallel region), each with its own acc_t sums of all C
// channels; those are added in block order, so the result does not depend on the thread count. Within a
// block, values are summed in opmath_t partial sums (allocated per block) flushed to the acc_t
// sums every kChunk values per channel: NCL rows into kLanes lanes per channel (a long
// row in chunks of kChunk, short rows (L < kChunk) with the lanes kept across rows, so that a row
// costs no horizontal reduction; rows_sums), NLC rows into one partial sum per channel (nlc_rows_sums).
template <typename scalar_t, typename opmath_t, typename acc_t>
void channel_sums(const Geometry& g, const SumTerms<scalar_t>& t, std::vector<acc_t>& S1, std::vector<acc_t>& S2) {
  if (g.N == 1 && !g.nlc) return row_sums<scalar_t, opmath_t>(g, t, S1, S2);
  constexpr int64_t kBlocks = 16;
  const int64_t C = g.C, L = g.L, rows = g.nlc ? g.M() : g.N * C;
  const int64_t by_size = std::clamp<int64_t>(g.M() * C / at::internal::GRAIN_SIZE, 1, kBlocks);
  const int64_t blocks = std::min(rows, by_size), per_block = blocks == 0 ? 0 : (rows + blocks - 1) / blocks;
  const bool short_rows = !g.nlc && L < kChunk;
  // Rows per flush: kChunk values of each channel (short NCL rows), or kChunk rows (NLC).
  const int64_t flush_rows = g.nlc ? kChunk : short_rows ? std::max<int64_t>(1, kChunk / std::max<int64_t>(1, L)) * C : 1;
  const int64_t width = g.nlc ? 1 : kLanes;  // partial sums per channel
  std::vector<acc_t> P1(blocks * C, 0), P2(blocks * C, 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<opmath_t> a1(g.nlc || short_rows ? C * width : kLanes), a2(a1.size());
    for (int64_t b = b0; b < b1; ++b) {
      acc_t *s1 = P1.data() + b * C, *s2 = P2.data() + b * C;
      auto flush = [&] {
        for (int64_t c = 0; c < C; ++c) {
          s1[c] += width == 1 ? a1[c] : lane_total(a1.data() + c * kLanes);
          s2[c] += width == 1 ? a2[c] : lane_total(a2.data() + c * kLanes);
        }
        std::fill(a1.begin(), a1.end(), opmath_t(0)), std::fill(a2.begin(), a2.end(), opmath_t(0));
      };
      const int64_t r0 = b * per_block, r1 = std::min(rows, r0 + per_block);
      if (g.nlc) {
        for (int64_t q = r0; q < r1; q += flush_rows) {
          BatchNormStubs<scalar_t>::nlc_rows_sums(t.u + q * C, t.v + q * C, std::min(r1, q + flush_rows) - q, C, t.ku.data(), t.m.data(),
                        a1.data(), a2.data());
          flush();
        }
        continue;
      }
      if (!short_rows) {
        for (int64_t r = r0, c = r0 % C; r < r1; ++r, c = c + 1 == C ? 0 : c + 1) {
          for (int64_t l = 0; l < L; l += kChunk) {
            std::fill(a1.begin(), a1.end(), opmath_t(0)), std::fill(a2.begin(), a2.end(), opmath_t(0));
            BatchNormStubs<scalar_t>::rows_sums(t.u + r * L + l, t.v + r * L + l, 1, std::min(kChunk, L - l), 0, 1, &t.ku[c], &t.m[c],
                      a1.data(), a2.data());
            s1[c] += lane_total(a1.data()), s2[c] += lane_total(a2.data());
          }
        }
        continue;
      }
      for (int64_t q = r0; q < r1; q += flush_rows) {
        BatchNormStubs<scalar_t>::rows_sums(t.u + q * L, t.v + q * L, std::min(r1, q + flush_rows) - q, L, q % C, C, t.ku.data(), t.m.data(),
                  a1.data(), a2.data());
        flush();
      }
    }
  });
  S1.assign(C, 0), S2.assign(C, 0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < C; ++c) S1[c] += P1[b * C + c], S2[c] += P2[b * C + c];
}

// out = a[c] * u + b[c] * (v - m[c]) + k[c] elementwise in the layout of g, where u or v may
// be null (that term is dropped; an empty coefficient vector stands for zeros). Forward:
// y = scale * (x - mu) + beta' (v = x; subtracting mu first keeps the digits when |mu| >> sigma);
// backward: dx = a * delta + b * (x - mu) + k.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void per_channel_affine(const Geometry& g, const scalar_t* u, const scalar_t* v, const std::vector<opmath_t>& a,
                        const std::vector<opmath_t>& b, const std::vector<opmath_t>& m,
                        const std::vector<opmath_t>& k, scalar_t* out) {
  const int64_t C = g.C, L = g.L;
  const std::vector<opmath_t> zeros(a.empty() || b.empty() || m.empty() || k.empty() ? C : 0, opmath_t(0));
  const opmath_t *A = a.empty() ? zeros.data() : a.data(), *B = b.empty() ? zeros.data() : b.data();
  const opmath_t *Mu = m.empty() ? zeros.data() : m.data(), *K = k.empty() ? zeros.data() : k.data();
  if (!g.nlc) {
    at::parallel_for(0, g.N * C, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, L)),
                     [&](int64_t i0, int64_t i1) {
                       BatchNormStubs<scalar_t>::affine_rows(u ? u + i0 * L : nullptr, v ? v + i0 * L : nullptr, i1 - i0, L, i0 % C, C, A, B,
                                   Mu, K, out + i0 * L);
                     });
    return;
  }
  at::parallel_for(0, g.M(), std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, C)),
                   [&](int64_t r0, int64_t r1) {
                     BatchNormStubs<scalar_t>::affine_nlc_rows(u ? u + r0 * C : nullptr, v ? v + r0 * C : nullptr, r1 - r0, C, A, B, Mu, K,
                                     out + r0 * C);
                   });
}

// Per channel c over its M values: K[c] = the channel's first value, S1 = sum (x - K), S2 = sum (x - K)^2
// (shifted by K so that S2 - S1^2/M does not cancel when |mean| >> sigma). M must be positive.
template <typename scalar_t, typename acc_t>
void shifted_moments(const Geometry& g, const scalar_t* xp, std::vector<acc_t>& K, std::vector<acc_t>& S1,
                     std::vector<acc_t>& S2) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = g.C;
  K.assign(C, 0);
  std::vector<opmath_t> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = xp[g.nlc ? c : c * g.L], K[c] = shift[c];
  channel_sums<scalar_t, opmath_t>(g, SumTerms<scalar_t>{xp, xp, shift, shift}, S1, S2);
}

// Per channel: S1 = sum delta, S2 = sum delta * (x - mean[c]), the backward's sums.
template <typename scalar_t, typename acc_t>
void grad_sums(const Geometry& g, const scalar_t* dyp, const scalar_t* xp, const std::vector<acc_t>& mean,
               std::vector<acc_t>& S1, std::vector<acc_t>& S2) {
  using opmath_t = at::opmath_type<scalar_t>;
  channel_sums<scalar_t, opmath_t>(
      g, SumTerms<scalar_t>{dyp, xp, std::vector<opmath_t>(g.C, 0), std::vector<opmath_t>(mean.begin(), mean.end())},
      S1, S2);
}

}  // namespace manual_ops
