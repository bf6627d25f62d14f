// Group normalisation over (N, C, *) with the backward written by hand. Derivation:
// docs/derivations.md, "group_norm".
//
// The C channels of a sample fall into G groups of C/G consecutive channels; each (sample, group)
// is normalised over its M = (C/G) * L values (L = prod(spatial)), and each channel gets its own
// gamma and beta. That is batch_norm's training-mode normalisation with the group's values as the
// batch: the statistics are batch_norm's per-channel sums over a (1, N*G, M) view of the
// contiguous input, and the affine passes are batch_norm's per-channel affine pass over a
// (1, N*C, L) view, one row of coefficients per (sample, channel) (channel_passes.h). A
// channels-last input is read as a contiguous copy, and the results are returned in its layout.
//
// Dtypes as batch_norm's: weight and bias have the input's dtype, or float32 for a bfloat16/float16
// input; the saved mean and rstd, of size (N, G), have that parameter dtype.
#include "autograd_kernel.h"
#include "channel_passes.h"
#include "common.h"

#include <cmath>
#include <tuple>
#include <vector>

namespace manual_ops {
namespace {

// `t` (contiguous) in the layout torch gives group_norm's results: the input's suggested memory format,
// strides and all (a copy only for a channels-last input).
Tensor in_layout_of(const Tensor& t, const Tensor& input) {
  if (memory_format_of(input) != at::MemoryFormat::ChannelsLast) return t;
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast)).copy_(t);
}

struct Groups {
  int64_t N, C, G, L;
  int64_t per_group() const { return C / G * L; }  // M, the values of one (sample, group)
  Geometry stats() const { return {1, N * G, per_group(), false}; }
  Geometry rows() const { return {1, N * C, L, false}; }
};

void check_group_norm(const char* op, const Tensor& input, int64_t num_groups, const std::optional<Tensor>& weight,
                      const std::optional<Tensor>& bias) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of size (N, C, *) with at least 2 dimensions, but got input of size ",
              input.sizes());
  check_floating(op, "input", input);
  TORCH_CHECK(num_groups > 0, op, ": expected num_groups to be positive, but got num_groups=", num_groups);
  TORCH_CHECK(input.size(1) % num_groups == 0,
              "Expected number of channels in input to be divisible by num_groups, but got input of shape ",
              input.sizes(), " and num_groups=", num_groups);
  const at::ScalarType ptype = param_type(input, {weight, bias});
  for (const auto& [name, t] : {std::pair<const char*, const std::optional<Tensor>&>{"weight", weight}, {"bias", bias}}) {
    if (!has(t)) continue;
    TORCH_CHECK(t->dim() == 1 && t->numel() == input.size(1), "Expected ", name,
                " to be a vector of size equal to the number of channels in input, but got ", name, " of shape ",
                t->sizes(), " and input of shape ", input.sizes());
    check_param_dtype(op, name, *t, input, ptype);
  }
}

Groups groups_of(const Tensor& input, int64_t num_groups) {
  return {input.size(0), input.size(1), num_groups, c10::multiply_integers(input.sizes().slice(2))};
}

// The per-(sample, group) values of a saved (N, G) statistic, as acc_t.
template <typename acc_t>
std::vector<acc_t> per_group(const Tensor& t, const Groups& g) {
  return per_channel<acc_t>(t.reshape({g.N * g.G}), g.N * g.G, 0);
}

// Forward, per (sample n, group j) over its M values:
//   mu = (1/M) sum x,  var = (1/M) sum (x - mu)^2  (one pass of shifted sums, in acc_t),
//   rstd = 1/sqrt(var + eps),  y = gamma[c] * rstd * (x - mu) + beta[c]  (one pass),
// c the channel of the value. Returns (y, mu, rstd), mu and rstd of size (N, G).
std::tuple<Tensor, Tensor, Tensor> group_norm_forward(const Tensor& input, int64_t num_groups,
                                                      const std::optional<Tensor>& weight,
                                                      const std::optional<Tensor>& bias, double eps) {
  const char* op = "group_norm";
  check_group_norm(op, input, num_groups, weight, bias);
  at::AutoDispatchBelowADInplaceOrView guard;
  const Groups g = groups_of(input, num_groups);
  const Tensor x = input.contiguous();
  const at::ScalarType ptype = param_type(input, {weight, bias});
  Tensor out = at::empty(x.sizes(), x.options());  // contiguous (empty_like would keep an empty input's strides)
  Tensor save_mean, save_rstd;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "group_norm_forward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t NG = g.N * g.G, M = g.per_group(), Cg = g.C / g.G;
    std::vector<acc_t> mean(NG, 0), rstd(NG, 0), K(NG, 0), S1(NG, 0), S2(NG, 0);
    if (NG > 0 && M > 0) shifted_moments(g.stats(), xp, K, S1, S2);
    for (int64_t r = 0; r < NG; ++r) {
      const acc_t m1 = S1[r] / acc_t(M), v = S2[r] / acc_t(M) - m1 * m1;
      mean[r] = K[r] + m1;
      rstd[r] = acc_t(1) / std::sqrt((v < 0 ? acc_t(0) : v) + acc_t(eps));  // v just below 0 from rounding
    }
    save_mean = as_tensor(mean, input, ptype).view({g.N, g.G});
    save_rstd = as_tensor(rstd, input, ptype).view({g.N, g.G});
    const std::vector<acc_t> gamma = per_channel<acc_t>(weight, g.C, 1), beta = per_channel<acc_t>(bias, g.C, 0);
    std::vector<opmath_t> scale(g.N * g.C), mu(g.N * g.C), shift(g.N * g.C);
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t c = 0; c < g.C; ++c) {
        const int64_t r = n * g.G + c / Cg, i = n * g.C + c;
        scale[i] = opmath_t(gamma[c] * rstd[r]), mu[i] = opmath_t(mean[r]), shift[i] = opmath_t(beta[c]);
      }
    }
    if (x.numel() > 0) {
      per_channel_affine<scalar_t>(g.rows(), nullptr, xp, {}, scale, mu, shift, out.mutable_data_ptr<scalar_t>());
    }
  });
  return {in_layout_of(out, input), save_mean, save_rstd};
}

// Backward, with xhat = (x - mu) * rstd, delta = dL/dy and, per (sample n, channel c) over its L
// values, S1 = sum delta and S2 = sum delta * (x - mu) (one pass of sums):
//   dbeta[c] = sum_n S1,  dgamma[c] = sum_n rstd * S2,
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = gamma[c] * delta,
// the means over the group's M values: mean(g) = sum_{c in group} gamma[c] S1 / M and
// mean(g * xhat) = rstd * sum_{c in group} gamma[c] S2 / M. dx is applied as
// a * delta + b * (x - mu) + k per (sample, channel), one pass after the sums.
std::tuple<Tensor, Tensor, Tensor> group_norm_backward(const Tensor& grad_output, const Tensor& input,
                                                       int64_t num_groups, const Tensor& save_mean,
                                                       const Tensor& save_rstd, const std::optional<Tensor>& weight,
                                                       std::array<bool, 3> output_mask) {
  const char* op = "group_norm_backward";
  check_group_norm(op, input, num_groups, weight, std::nullopt);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": expected grad_output of size ", input.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  const Groups g = groups_of(input, num_groups);
  const at::ScalarType ptype = param_type(input, {weight, save_mean, save_rstd});
  check_saved_stats(op, save_mean, save_rstd, g.N * g.G, "(sample, group)", ptype);
  at::AutoDispatchBelowADInplaceOrView guard;
  const Tensor x = input.contiguous();
  const Tensor dy = grad_output.contiguous();
  Tensor grad_input = output_mask[0] ? at::empty(x.sizes(), x.options()) : Tensor();
  Tensor grad_weight, grad_bias;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "group_norm_backward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const int64_t NC = g.N * g.C, Cg = g.C / g.G;
    const acc_t M = acc_t(g.per_group());
    const std::vector<acc_t> mean = per_group<acc_t>(save_mean, g), rstd = per_group<acc_t>(save_rstd, g);
    const std::vector<acc_t> gamma = per_channel<acc_t>(weight, g.C, 1);
    std::vector<acc_t> row_mean(NC);
    for (int64_t i = 0; i < NC; ++i) row_mean[i] = mean[i / g.C * g.G + i % g.C / Cg];
    std::vector<acc_t> S1(NC, 0), S2(NC, 0);  // per (sample, channel): sum delta, sum delta * (x - mu)
    if (x.numel() > 0) grad_sums(g.rows(), dyp, xp, row_mean, S1, S2);
    std::vector<acc_t> dgamma(g.C, 0), dbeta(g.C, 0);
    for (int64_t i = 0; i < (x.numel() > 0 ? NC : 0); ++i) {  // no values: empty sums, whatever the (NaN) rstd
      dbeta[i % g.C] += S1[i];
      dgamma[i % g.C] += rstd[i / g.C * g.G + i % g.C / Cg] * S2[i];
    }
    if (output_mask[1]) grad_weight = as_tensor(dgamma, input, ptype);
    if (output_mask[2]) grad_bias = as_tensor(dbeta, input, ptype);
    if (!output_mask[0] || x.numel() == 0) return;
    std::vector<acc_t> A1(g.N * g.G, 0), A2(g.N * g.G, 0);  // per group: sum g, sum g * (x - mu)
    for (int64_t i = 0; i < NC; ++i) {
      const int64_t r = i / g.C * g.G + i % g.C / Cg;
      A1[r] += gamma[i % g.C] * S1[i], A2[r] += gamma[i % g.C] * S2[i];
    }
    std::vector<opmath_t> a(NC), b(NC), mu(NC), k(NC);
    for (int64_t i = 0; i < NC; ++i) {
      const int64_t r = i / g.C * g.G + i % g.C / Cg;
      const acc_t s = rstd[r];
      a[i] = opmath_t(gamma[i % g.C] * s);
      b[i] = opmath_t(-s * s * s * A2[r] / M);
      mu[i] = opmath_t(mean[r]);
      k[i] = opmath_t(-s * A1[r] / M);
    }
    per_channel_affine<scalar_t>(g.rows(), dyp, xp, a, b, mu, k, grad_input.mutable_data_ptr<scalar_t>());
  });
  if (grad_input.defined()) grad_input = in_layout_of(grad_input, input);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("group_norm_forward", &group_norm_forward);
  m.impl("group_norm_backward", &group_norm_backward);
}

}  // namespace manual_ops
