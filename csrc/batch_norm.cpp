// Batch normalisation over (N, C, *) with the backward written by hand, and the
// clamped-shift option beta' = max(beta, -k*s) (s = sigma or |gamma|) as a flag of the
// same kernels. Derivation: docs/derivations.md, "batch_norm" and "clamped-beta batch_norm".
//
// The input is read as contiguous NCL (N blocks of C rows of L = prod(spatial) values)
// or, for channels-last 4-D input and L == 1, as NLC (N*L rows of C values).
//
// Dtypes: scalar_t is the input's; arithmetic is in opmath_t (float32 for bfloat16 and float16)
// and the per-channel values in acc_t (float64 for float32, float32 for bfloat16 and float16).
// Weight, bias and running stats have the parameter dtype: the input's, or float32 for a
// bfloat16/float16 input with float32 parameters (as autocast gives, and as torch's CPU
// batch_norm accepts). The saved mean and invstd have it too in training (as torch's); in
// eval, where torch saves nothing and its backward recomputes invstd in float32 from the
// running stats, they are saved in float32 for bfloat16/float16 (stats_type below).
#include "autograd_kernel.h"
#include "common.h"
#include "cpu/batch_norm_kernel.h"
#include "cpu_capability.h"

#include <ATen/AccumulateType.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

namespace manual_ops {

template <typename T>
KernelStub<rows_sums_fn<T>> BatchNormStubs<T>::rows_sums{};
template <typename T>
KernelStub<nlc_rows_sums_fn<T>> BatchNormStubs<T>::nlc_rows_sums{};
template <typename T>
KernelStub<affine_rows_fn<T>> BatchNormStubs<T>::affine_rows{};
template <typename T>
KernelStub<affine_nlc_rows_fn<T>> BatchNormStubs<T>::affine_nlc_rows{};
template struct BatchNormStubs<float>;
template struct BatchNormStubs<double>;
template struct BatchNormStubs<c10::BFloat16>;
template struct BatchNormStubs<c10::Half>;

namespace {

constexpr int64_t kChunk = 256;  // values per lane-chunk summed in opmath_t before flushing to acc_t

struct Geometry {
  int64_t N, C, L;
  bool nlc;  // memory is (N*L, C) rather than (N, C, L)
  int64_t M() const { return N * L; }  // values per channel
};

Geometry geometry_of(const Tensor& input) {
  const int64_t L = c10::multiply_integers(input.sizes().slice(2));
  return {input.size(0), input.size(1), L, is_channels_last(input) || L == 1};
}

// The input in the layout the kernels read: channels-last stays channels-last.
Tensor dense(const Tensor& t, const Tensor& like) { return t.contiguous(memory_format_of(like)); }

enum class FloorScale { Sigma, Gamma };

struct Floor {  // the clamped-shift option; k < 0 means plain batch norm
  double k = -1;
  FloorScale scale = FloorScale::Sigma;
  bool on() const { return k >= 0; }
};

Floor floor_of(const char* op, std::optional<double> beta_floor, c10::string_view floor_scale) {
  TORCH_CHECK_VALUE(floor_scale == "sigma" || floor_scale == "gamma", op,
                    ": floor_scale must be 'sigma' or 'gamma', but got '", std::string(floor_scale), "'");
  if (!beta_floor.has_value()) return {};
  TORCH_CHECK_VALUE(*beta_floor >= 0, op, ": beta_floor must be non-negative, but got ", *beta_floor);
  return {*beta_floor, floor_scale == "sigma" ? FloorScale::Sigma : FloorScale::Gamma};
}

// The floor -k*s of the clamped shift, from the saved invstd (sigma = 1/invstd) or gamma.
// Forward and backward both call it on the same saved values, so they agree on which
// channels are clamped (beta < floor, strictly).
template <typename acc_t>
acc_t shift_floor(const Floor& f, acc_t invstd, acc_t gamma) {
  return -static_cast<acc_t>(f.k) * (f.scale == FloorScale::Sigma ? acc_t(1) / invstd : std::abs(gamma));
}

bool has(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The parameter dtype: float32 when the input is bfloat16 or float16 and any of `params` given
// is float32 (then all must be), else the input's.
at::ScalarType param_type(const Tensor& input, std::initializer_list<std::optional<Tensor>> params) {
  if (is_reduced_floating(input.scalar_type())) {
    for (const auto& p : params)
      if (has(p) && p->scalar_type() == at::kFloat) return at::kFloat;
  }
  return input.scalar_type();
}

// The dtype of the saved mean and invstd (see the top of the file).
at::ScalarType stats_type(at::ScalarType ptype, bool training) { return training ? ptype : at::toOpMathType(ptype); }

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

void check_per_channel(const char* op, const char* name, const std::optional<Tensor>& t, const Tensor& input,
                       at::ScalarType dtype) {
  if (!t.has_value() || !t->defined()) return;
  const int64_t C = input.size(1);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, op, ": ", name, " should contain ", C, " elements not ", t->numel(),
              ": expected a 1-D tensor of size [", C, "] (one value per channel of input of size ", input.sizes(),
              "), but got ", name, " of size ", t->sizes());
  TORCH_CHECK(t->scalar_type() == dtype, op, ": expected ", name, " of dtype ", dtype, " for input of dtype ",
              input.scalar_type(), " (weight, bias and running stats have the input's dtype, or all float32 for a ",
              "bfloat16 or float16 input), but got ", name, " of dtype ", t->scalar_type());
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

// The backward ops' input and grad_output: (N, C, *), floating, the same sizes and dtype.
void check_backward_inputs(const char* op, const Tensor& grad_output, const Tensor& input) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of size (N, C, *), but got input of size ", input.sizes());
  check_floating(op, "input", input);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": expected grad_output of size ", input.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
}

void check_forward(const char* op, const Tensor& input, const std::optional<Tensor>& weight,
                   const std::optional<Tensor>& bias, const std::optional<Tensor>& running_mean,
                   const std::optional<Tensor>& running_var, const std::optional<Tensor>& num_batches_tracked,
                   bool training, std::optional<double> momentum, double eps) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of size (N, C, *) with at least 2 dimensions, but got input of size ",
              input.sizes());
  check_floating(op, "input", input);
  if (training) {
    // torch's _verify_batch_size: N * prod(spatial) == 1, whatever C is.
    TORCH_CHECK_VALUE(geometry_of(input).M() != 1, "Expected more than 1 value per channel when training, got input size torch.Size(",
                      input.sizes(), ")");
    TORCH_CHECK_VALUE(eps > 0, "batch_norm eps must be positive during training, but got ", eps);
  } else {
    TORCH_CHECK_VALUE(eps >= 0, "batch_norm eps must be non-negative, but got ", eps);
    TORCH_CHECK(has(running_mean), "running_mean must be defined in evaluation mode");
    TORCH_CHECK(has(running_var), "running_var must be defined in evaluation mode");
  }
  const at::ScalarType ptype = param_type(input, {weight, bias, running_mean, running_var});
  check_per_channel(op, "running_mean", running_mean, input, ptype);
  check_per_channel(op, "running_var", running_var, input, ptype);
  check_per_channel(op, "weight", weight, input, ptype);
  check_per_channel(op, "bias", bias, input, ptype);
  TORCH_CHECK(has(running_mean) == has(running_var), op,
              ": running_mean and running_var must both be given or both be None");
  if (has(num_batches_tracked)) {
    TORCH_CHECK(num_batches_tracked->numel() == 1 && num_batches_tracked->scalar_type() == at::kLong, op,
                ": expected num_batches_tracked to be a one-element int64 tensor, but got one of size ",
                num_batches_tracked->sizes(), " and dtype ", num_batches_tracked->scalar_type());
  }
  TORCH_CHECK(momentum.has_value() || !training || !has(running_mean) || has(num_batches_tracked), op,
              ": momentum=None (a cumulative average) needs num_batches_tracked");
}

// Forward. Training: per channel c over its M values,
//   mu = (1/M) sum x,  var = (1/M) sum (x - mu)^2  (one pass of shifted sums, in acc_t),
//   invstd = 1/sqrt(var + eps),  y = gamma * (x - mu) * invstd + beta'  (one pass),
//   running_mean <- (1-m) running_mean + m mu,  running_var <- (1-m) running_var + m var M/(M-1),
// with m = momentum, or 1/(num_batches_tracked + 1) when momentum is None.
// Eval: mu, invstd from the running stats. beta' = beta, or max(beta, -k*s) when clamped.
// Returns (y, mu, invstd), mu and invstd in param_t; backward needs only these.
std::tuple<Tensor, Tensor, Tensor> batch_norm_forward(
    const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
    const std::optional<Tensor>& num_batches_tracked, bool training, std::optional<double> momentum, double eps,
    std::optional<double> beta_floor, c10::string_view floor_scale) {
  const char* op = "batch_norm";
  check_forward(op, input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps);
  const Floor floor = floor_of(op, beta_floor, floor_scale);

  at::AutoDispatchBelowADInplaceOrView guard;  // the ATen calls below are ours, not autograd's
  const Geometry g = geometry_of(input);
  const Tensor x = dense(input, input);
  const at::ScalarType ptype = param_type(input, {weight, bias, running_mean, running_var});
  const at::ScalarType stype = stats_type(ptype, training);
  Tensor out = at::empty_like(x);
  Tensor save_mean, save_invstd;
  const bool update = training && has(running_mean) && g.M() > 0;

  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "batch_norm_forward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t C = g.C, M = g.M();
    std::vector<acc_t> mean(C), var(C);
    if (training) {
      std::vector<acc_t> K(C, 0), S1(C, 0), S2(C, 0);
      if (M > 0) shifted_moments(g, xp, K, S1, S2);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t m1 = S1[c] / acc_t(M), v = S2[c] / acc_t(M) - m1 * m1;
        mean[c] = K[c] + m1;
        var[c] = v < 0 ? acc_t(0) : v;  // rounding can take it just below 0; NaN stays NaN
      }
    } else {
      mean = per_channel<acc_t>(running_mean, C, 0);
      var = per_channel<acc_t>(running_var, C, 0);
    }

    std::vector<acc_t> invstd(C);
    for (int64_t c = 0; c < C; ++c) invstd[c] = acc_t(1) / std::sqrt(var[c] + acc_t(eps));
    save_mean = as_tensor(mean, input, stype);
    save_invstd = as_tensor(invstd, input, stype);
    // The floor of the clamped shift from the saved (rounded) invstd, as the backward sees it.
    const std::vector<acc_t> saved_invstd = floor.on() ? per_channel<acc_t>(save_invstd, C, 0) : invstd;
    const std::vector<acc_t> gamma = per_channel<acc_t>(weight, C, 1);
    const std::vector<acc_t> beta = per_channel<acc_t>(bias, C, 0);
    std::vector<opmath_t> scale(C), shift(C), mean_v(C);
    for (int64_t c = 0; c < C; ++c) {
      mean_v[c] = opmath_t(mean[c]);
      acc_t b = beta[c];
      if (floor.on()) {
        const acc_t f = shift_floor<acc_t>(floor, saved_invstd[c], gamma[c]);
        if (b < f) b = f;
      }
      scale[c] = opmath_t(gamma[c] * invstd[c]);
      shift[c] = opmath_t(b);
    }
    per_channel_affine<scalar_t>(g, nullptr, xp, {}, scale, mean_v, shift, out.mutable_data_ptr<scalar_t>());

    if (update) {
      const acc_t m = momentum.has_value()
                          ? acc_t(*momentum)
                          : acc_t(1) / acc_t(num_batches_tracked->item<int64_t>() + 1);
      std::vector<acc_t> rm = per_channel<acc_t>(running_mean, C, 0), rv = per_channel<acc_t>(running_var, C, 0);
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = (1 - m) * rm[c] + m * mean[c];
        rv[c] = (1 - m) * rv[c] + m * var[c] * acc_t(M) / acc_t(M - 1);
      }
      store_per_channel(rm, *running_mean);
      store_per_channel(rv, *running_var);
    }
  });
  if (training && has(num_batches_tracked)) num_batches_tracked->add_(1);
  return {out, save_mean, save_invstd};
}

// Backward, with xhat = (x - mu) * invstd and delta = dL/dy, sums over the M values of a channel:
//   dbeta = sum delta,  dgamma = sum delta * xhat,
//   training: dx = gamma * invstd * (delta - sum delta / M - xhat * sum(delta * xhat) / M),
//   eval:     dx = gamma * invstd * delta.
// Clamped channels (beta < -k*s): dbeta = 0; s = sigma adds -k * xhat * sum delta / M to dx
// (training only: sigma is a batch statistic); s = |gamma| adds -k * sign(gamma) * sum delta to dgamma.
// dx is applied as a[c] * delta + b[c] * (x - mu) + k[c], one pass after one pass of sums.
std::tuple<Tensor, Tensor, Tensor> batch_norm_backward(const Tensor& grad_output, const Tensor& input,
                                                       const std::optional<Tensor>& weight,
                                                       const std::optional<Tensor>& bias, const Tensor& save_mean,
                                                       const Tensor& save_invstd, bool training,
                                                       std::optional<double> beta_floor, c10::string_view floor_scale,
                                                       std::array<bool, 3> output_mask) {
  const char* op = "batch_norm_backward";
  at::AutoDispatchBelowADInplaceOrView guard;
  check_backward_inputs(op, grad_output, input);
  const at::ScalarType ptype = training ? param_type(input, {weight, bias, save_mean, save_invstd})
                                        : param_type(input, {weight, bias});
  check_per_channel(op, "weight", weight, input, ptype);
  check_per_channel(op, "bias", bias, input, ptype);
  check_per_channel(op, "save_mean", save_mean, input, stats_type(ptype, training));
  check_per_channel(op, "save_invstd", save_invstd, input, stats_type(ptype, training));
  const Floor floor = floor_of(op, beta_floor, floor_scale);

  const Geometry g = geometry_of(input);
  const Tensor x = dense(input, input);
  const Tensor dy = dense(grad_output, input);
  Tensor grad_input = output_mask[0] ? at::empty_like(x) : Tensor();
  Tensor grad_weight, grad_bias;
  const bool need_sums = output_mask[1] || output_mask[2] || (output_mask[0] && training);

  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "batch_norm_backward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const int64_t C = g.C;
    const acc_t M = acc_t(g.M());
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const std::vector<acc_t> mean = per_channel<acc_t>(save_mean, C, 0);
    const std::vector<acc_t> invstd = per_channel<acc_t>(save_invstd, C, 0);
    const std::vector<acc_t> gamma = per_channel<acc_t>(weight, C, 1);
    const std::vector<acc_t> beta = per_channel<acc_t>(bias, C, 0);

    std::vector<acc_t> sum_dy(C, 0), sum_dy_xmu(C, 0);  // sum delta, sum delta * (x - mu)
    if (need_sums) grad_sums(g, dyp, xp, mean, sum_dy, sum_dy_xmu);

    std::vector<opmath_t> a(C), b(C), mu(C), k(C);
    std::vector<acc_t> dgammas(C), dbetas(C);
    for (int64_t c = 0; c < C; ++c) {
      const bool clamped = floor.on() && beta[c] < shift_floor<acc_t>(floor, invstd[c], gamma[c]);
      // No values (N = 0): the sums are empty, and so is dgamma, whatever the (NaN) invstd of no values.
      acc_t dgamma = g.M() == 0 ? acc_t(0) : invstd[c] * sum_dy_xmu[c], dbeta = sum_dy[c];
      acc_t ac = gamma[c] * invstd[c], bc = 0, kc = 0;
      if (training) {  // dx = ac*delta + bc*(x - mu) - ac*sum delta/M
        bc = -ac * invstd[c] * invstd[c] * sum_dy_xmu[c] / M;
        kc = -ac * sum_dy[c] / M;
      }
      if (clamped) {
        dbeta = 0;
        if (floor.scale == FloorScale::Gamma) {
          dgamma -= acc_t(floor.k) * acc_t((gamma[c] > 0) - (gamma[c] < 0)) * sum_dy[c];
        } else if (training) {
          bc -= acc_t(floor.k) * invstd[c] * sum_dy[c] / M;
        }
      }
      a[c] = opmath_t(ac), b[c] = opmath_t(bc), mu[c] = opmath_t(mean[c]), k[c] = opmath_t(kc);
      dgammas[c] = dgamma, dbetas[c] = dbeta;
    }
    if (output_mask[1]) grad_weight = as_tensor(dgammas, input, ptype);
    if (output_mask[2]) grad_bias = as_tensor(dbetas, input, ptype);
    if (output_mask[0]) {
      per_channel_affine<scalar_t>(g, dyp, training ? xp : nullptr, a, b, mu, k, grad_input.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

using ForwardSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const std::optional<Tensor>&, const std::optional<Tensor>&, const std::optional<Tensor>&,
    const std::optional<Tensor>&, const std::optional<Tensor>&, bool, std::optional<double>, double,
    std::optional<double>, c10::string_view);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                       const std::optional<Tensor>&, const Tensor&, const Tensor&,
                                                       bool, std::optional<double>, c10::string_view,
                                                       std::array<bool, 3>);

// The backward node of batch_norm_forward: BatchNormFunction's derivatives
// (manual_ops/ops/batch_norm.py), in C++, with next edges (input, weight, bias). The backward is
// batch_norm_backward, differentiable through that op's autograd kernel (BatchNormBackward).
struct BatchNormBackwardNode final : public Node {
  SavedVariable input_, weight_, bias_, save_mean_, save_invstd_;
  bool training_ = false;
  std::optional<double> beta_floor_;
  std::string floor_scale_;

  std::string name() const override { return "BatchNormBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    bias_.reset_data();
    save_mean_.reset_data();
    save_invstd_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto op = operator_handle<BackwardSig>("manual_ops::batch_norm_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    auto [grad_input, grad_weight, grad_bias] = call_backward_op(
        op, grads[0], input_.unpack(), optional_of(weight_.unpack()), optional_of(bias_.unpack()),
        save_mean_.unpack(), save_invstd_.unpack(), training_, beta_floor_, c10::string_view(floor_scale_),
        std::array<bool, 3>{task_should_compute_output(0), task_should_compute_output(1),
                            task_should_compute_output(2)});  // no weight or bias: no edge, so false
    return {grad_input, grad_weight, grad_bias};
  }
};

// The autograd kernel of batch_norm_forward. Only input, weight and bias get grads; the saved mean
// and invstd are not differentiable, and the running stats cannot require grad (as in torch).
std::tuple<Tensor, Tensor, Tensor> batch_norm_forward_autograd(
    const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
    const std::optional<Tensor>& num_batches_tracked, bool training, std::optional<double> momentum, double eps,
    std::optional<double> beta_floor, c10::string_view floor_scale) {
  static const auto op = operator_handle<ForwardSig>("manual_ops::batch_norm_forward");
  check_not_differentiable("batch_norm_forward", "running_mean", running_mean);
  check_not_differentiable("batch_norm_forward", "running_var", running_var);
  check_no_forward_grad("batch_norm_forward", input, weight, bias);
  auto node = make_backward_node<BatchNormBackwardNode>(input, weight, bias);
  auto [out, save_mean, save_invstd] = call_below_autograd(op, input, weight, bias, running_mean, running_var,
                                                            num_batches_tracked, training, momentum, eps, beta_floor,
                                                            floor_scale);
  if (node) {
    torch::autograd::set_history(out, node);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight.value_or(Tensor()), false);
    node->bias_ = SavedVariable(bias.value_or(Tensor()), false);
    node->save_mean_ = SavedVariable(save_mean, false);
    node->save_invstd_ = SavedVariable(save_invstd, false);
    node->training_ = training;
    node->beta_floor_ = beta_floor;
    node->floor_scale_ = std::string(floor_scale);
  }
  return {out, save_mean, save_invstd};
}

// ---------------------------------------------------------------------------------------------
// Synchronised batch norm (manual_ops/ops/sync_batch_norm.py): the local halves of the forward
// and backward; the collectives between them run in Python over torch.distributed, and the
// normalisation itself is batch_norm_forward in eval mode with the global statistics.

void check_sums(const char* op, const char* name, const Tensor& t, int64_t C) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == 2 && t.size(1) == C && t.scalar_type() == at::kDouble, op,
              ": expected ", name, " to be a float64 tensor of size [2, ", C, "], but got one of size ", t.sizes(),
              " and dtype ", t.scalar_type());
}

// Per-channel count-free statistics of the local input, over the M values of channel c:
//   mean = K + S1/M,  m2 = sum (x - mean)^2 = S2 - S1^2/M,
// from the shifted sums S1 = sum (x - K), S2 = sum (x - K)^2 with K = the channel's first value
// (so that S2 - S1^2/M does not cancel when |mean| >> sigma). Returns float64 [[mean], [m2]] of
// size (2, C); both are 0 when M = 0. Ranks combine (M, mean, m2) with Chan's formula.
Tensor batch_norm_stats(const Tensor& input) {
  const char* op = "batch_norm_stats";
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of size (N, C, *), but got input of size ", input.sizes());
  check_floating(op, "input", input);
  const Geometry g = geometry_of(input);
  const Tensor x = dense(input, input);
  Tensor stats = at::zeros({2, g.C}, input.options().dtype(at::kDouble));
  if (g.M() == 0) return stats;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "batch_norm_stats", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    std::vector<acc_t> K, S1, S2;
    shifted_moments(g, x.const_data_ptr<scalar_t>(), K, S1, S2);
    const acc_t M = acc_t(g.M());
    auto out = stats.accessor<double, 2>();
    for (int64_t c = 0; c < g.C; ++c) {
      const acc_t m2 = S2[c] - S1[c] * S1[c] / M;
      out[0][c] = double(K[c] + S1[c] / M);
      out[1][c] = m2 < 0 ? 0.0 : double(m2);  // rounding can take it just below 0; NaN stays NaN
    }
  });
  return stats;
}

// The backward's local sums over the M values of channel c, with xhat = (x - mu) * invstd:
//   [[sum delta], [sum delta * xhat]], float64 of size (2, C). Summed over ranks they are the
// global sums of synchronised batch norm's dx; on one rank they are also dbeta and dgamma.
Tensor batch_norm_backward_reduce(const Tensor& grad_output, const Tensor& input, const Tensor& mean,
                                  const Tensor& invstd) {
  const char* op = "batch_norm_backward_reduce";
  check_backward_inputs(op, grad_output, input);
  // The saved statistics of batch_norm_forward: the parameter dtype, or float32 (see the top of the file).
  check_per_channel(op, "mean", mean, input, mean.scalar_type());
  check_per_channel(op, "invstd", invstd, input, mean.scalar_type());
  const Geometry g = geometry_of(input);
  const Tensor x = dense(input, input);
  const Tensor dy = dense(grad_output, input);
  Tensor sums = at::zeros({2, g.C}, input.options().dtype(at::kDouble));
  if (g.M() == 0) return sums;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "batch_norm_backward_reduce", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    const int64_t C = g.C;
    const std::vector<acc_t> is = per_channel<acc_t>(invstd, C, 0);
    std::vector<acc_t> sum_dy, sum_dy_xmu;
    grad_sums(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), per_channel<acc_t>(mean, C, 0),
              sum_dy, sum_dy_xmu);
    auto out = sums.accessor<double, 2>();
    for (int64_t c = 0; c < C; ++c) out[0][c] = double(sum_dy[c]), out[1][c] = double(is[c] * sum_dy_xmu[c]);
  });
  return sums;
}

// Synchronised batch norm's backward from the sums of batch_norm_backward_reduce: the global
// ones (summed over ranks; M = count values per channel over all ranks) give dx, the local ones
// this rank's dgamma and dbeta (DDP averages those like every other parameter's gradient):
//   dx = gamma * invstd * (delta - G[sum delta] / M - xhat * G[sum delta * xhat] / M),
//   dgamma = sum delta * xhat,  dbeta = sum delta.
// Clamped channels (beta < -k*s) as in batch_norm_backward: dbeta = 0; s = sigma (the global
// sigma) adds -k * xhat * G[sum delta] / M to dx; s = |gamma| adds -k * sign(gamma) * sum delta
// to dgamma. dx is applied as a[c] * delta + b[c] * (x - mu) + k[c] in one pass.
std::tuple<Tensor, Tensor, Tensor> sync_batch_norm_backward(
    const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean, const Tensor& invstd, const Tensor& local_sums,
    const Tensor& global_sums, int64_t count, std::optional<double> beta_floor, c10::string_view floor_scale,
    std::array<bool, 3> output_mask) {
  const char* op = "sync_batch_norm_backward";
  check_backward_inputs(op, grad_output, input);
  const at::ScalarType ptype = param_type(input, {weight, bias});
  check_per_channel(op, "weight", weight, input, ptype);
  check_per_channel(op, "bias", bias, input, ptype);
  check_per_channel(op, "mean", mean, input, mean.scalar_type());
  check_per_channel(op, "invstd", invstd, input, mean.scalar_type());
  check_sums(op, "local_sums", local_sums, input.size(1));
  check_sums(op, "global_sums", global_sums, input.size(1));
  const Geometry g = geometry_of(input);
  TORCH_CHECK_VALUE(count >= g.M(), op, ": count (values per channel over all ranks) must be at least this rank's ",
                    g.M(), ", but got ", count);
  const Floor floor = floor_of(op, beta_floor, floor_scale);

  const Tensor x = dense(input, input);
  const Tensor dy = dense(grad_output, input);
  Tensor grad_input = output_mask[0] ? at::empty_like(x) : Tensor();
  Tensor grad_weight, grad_bias;

  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "sync_batch_norm_backward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const int64_t C = g.C;
    const acc_t M = acc_t(count > 0 ? count : 1);  // count = 0: no values, nothing to scale
    const std::vector<acc_t> mu = per_channel<acc_t>(mean, C, 0);
    const std::vector<acc_t> is = per_channel<acc_t>(invstd, C, 0);
    const std::vector<acc_t> gamma = per_channel<acc_t>(weight, C, 1);
    const std::vector<acc_t> beta = per_channel<acc_t>(bias, C, 0);
    const auto local = local_sums.accessor<double, 2>();
    const auto global = global_sums.accessor<double, 2>();
    std::vector<opmath_t> a(C), b(C), m(C), k(C);
    std::vector<acc_t> dgammas(C), dbetas(C);
    for (int64_t c = 0; c < C; ++c) {
      const bool clamped = floor.on() && beta[c] < shift_floor<acc_t>(floor, is[c], gamma[c]);
      const acc_t g_dy = acc_t(global[0][c]), g_dy_xhat = acc_t(global[1][c]);
      acc_t dgamma = acc_t(local[1][c]), dbeta = acc_t(local[0][c]);
      const acc_t ac = gamma[c] * is[c];
      acc_t bc = -ac * is[c] * g_dy_xhat / M;
      if (clamped) {
        dbeta = 0;
        if (floor.scale == FloorScale::Gamma) {
          dgamma -= acc_t(floor.k) * acc_t((gamma[c] > 0) - (gamma[c] < 0)) * acc_t(local[0][c]);
        } else {
          bc -= acc_t(floor.k) * is[c] * g_dy / M;
        }
      }
      a[c] = opmath_t(ac), b[c] = opmath_t(bc), m[c] = opmath_t(mu[c]), k[c] = opmath_t(-ac * g_dy / M);
      dgammas[c] = dgamma, dbetas[c] = dbeta;
    }
    if (output_mask[1]) grad_weight = as_tensor(dgammas, input, ptype);
    if (output_mask[2]) grad_bias = as_tensor(dbetas, input, ptype);
    if (output_mask[0]) {
      per_channel_affine<scalar_t>(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), a, b, m, k,
                                   grad_input.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("batch_norm_forward", &batch_norm_forward);
  m.impl("batch_norm_backward", &batch_norm_backward);
  m.impl("batch_norm_stats", &batch_norm_stats);
  m.impl("batch_norm_backward_reduce", &batch_norm_backward_reduce);
  m.impl("sync_batch_norm_backward", &sync_batch_norm_backward);
}

TORCH_LIBRARY_IMPL(manual_ops, Autograd, m) { m.impl("batch_norm_forward", &batch_norm_forward_autograd); }

}  // namespace manual_ops
