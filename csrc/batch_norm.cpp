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
#include "channel_passes.h"
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
template <typename T>
KernelStub<row_totals_fn<T>> BatchNormStubs<T>::row_totals{};
template struct BatchNormStubs<float>;
template struct BatchNormStubs<double>;
template struct BatchNormStubs<c10::BFloat16>;
template struct BatchNormStubs<c10::Half>;

namespace {

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

// The dtype of the saved mean and invstd (see the top of the file).
at::ScalarType stats_type(at::ScalarType ptype, bool training) { return training ? ptype : at::toOpMathType(ptype); }

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

#ifdef MANUAL_OPS_COMPILED_AUTOGRAD
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(input_, false);
    args.collect(weight_, false);
    args.collect(bias_, false);
    args.collect(save_mean_, false);
    args.collect(save_invstd_, false);
    args.collect(training_);
    args.collect(beta_floor_);
    args.collect(floor_scale_);
  }

  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    return apply_backward_op_compiled(*this, "manual_ops::batch_norm_backward", grads, saved,
                                      {&input_, &weight_, &bias_, &save_mean_, &save_invstd_},
                                      {training_, beta_floor_, floor_scale_});
  }
#endif
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
