// Softmax + cross-entropy fused, with the backward written by hand as p - y
// (generalised to class weights and label smoothing). Derivation:
// docs/derivations.md, "cross_entropy".
//
// The input is viewed as (N, C, S), S the product of any trailing dims: row
// r = (n, s) holds the logits x[n, :, s] at stride S. Each row's loss is
//   loss_r = sum_c q[r, c] * (lse_r - x[r, c]),   lse_r = log sum_c exp(x[r, c]),
// with target weights q (eps = label_smoothing, w = class weights or 1):
//   class indices:       q[r, c] = w_c * eps / C + (1 - eps) * w_{y_r} * [c == y_r]   (0 if y_r == ignore_index)
//   class probabilities: q[r, c] = w_c * ((1 - eps) * t[r, c] + eps / C)
#include "autograd_kernel.h"
#include "common.h"
#include "cpu_capability.h"
#include "cpu/cross_entropy_kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(row_max_stub);
MANUAL_OPS_DEFINE_KERNEL(row_sum_exp_stub);
MANUAL_OPS_DEFINE_KERNEL(row_weighted_gap_stub);
MANUAL_OPS_DEFINE_KERNEL(row_scaled_softmax_stub);
namespace {

enum class Reduction { None, Mean, Sum };

Reduction parse_reduction(const std::string& reduction) {
  if (reduction == "none") return Reduction::None;
  if (reduction == "mean") return Reduction::Mean;
  TORCH_CHECK_VALUE(reduction == "sum", reduction, " is not a valid value for reduction");
  return Reduction::Sum;
}

// Shapes, with the target checked against the input. Class-probability targets
// have the input's size (as in torch, that is what selects them).
struct Geometry {
  int64_t N, C, S;
  bool probabilities;
  std::vector<int64_t> row_size;  // (N, d1, ..., dk): the size of the per-row losses
  int64_t R() const { return N * S; }
};

Geometry check_cross_entropy(const char* op, const Tensor& input, const Tensor& target,
                             const std::optional<Tensor>& weight, double label_smoothing) {
  TORCH_CHECK(input.dim() >= 2, op, ": expected input of size (N, C) or (N, C, d1, ..., dk), but got input of size ",
              input.sizes());
  check_floating(op, "input", input);
  Geometry G{input.size(0), input.size(1), 1, input.sizes() == target.sizes(), {}};
  for (int64_t d = 2; d < input.dim(); ++d) G.S *= input.size(d);
  G.row_size = input.sizes().vec();
  G.row_size.erase(G.row_size.begin() + 1);
  if (G.probabilities) {
    TORCH_CHECK(at::isFloatingType(target.scalar_type()), op,
                ": expected a floating point target for class probabilities (target of the input's size ",
                input.sizes(), "), but got target of dtype ", target.scalar_type());
    check_same_dtype(op, "input", input, "target", target);
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong, op, ": expected target dtype to be Long for class indices, but got ",
                target.scalar_type());
    TORCH_CHECK_VALUE(target.dim() < 1 || target.size(0) == G.N, op, ": expected input batch_size (", G.N,
                      ") to match target batch_size (", target.dim() ? target.size(0) : 0, ")");
    TORCH_CHECK(target.sizes() == at::IntArrayRef(G.row_size), op, ": expected target of size ",
                at::IntArrayRef(G.row_size), " (class indices) or ", input.sizes(),
                " (class probabilities) for input of size ", input.sizes(), ", but got target of size ",
                target.sizes());
  }
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == G.C, op,
                ": expected weight to be 1-D with one value for each of the ", G.C,
                " classes, but got weight of size ", weight->sizes());
    check_same_dtype(op, "input", input, "weight", *weight);
  }
  TORCH_CHECK(label_smoothing <= 1.0, op, ": label_smoothing must be between 0.0 and 1.0. Got: ", label_smoothing);
  return G;
}

// Class-index targets must lie in [0, C) unless equal to ignore_index (checked
// before any work, so that bad input raises without side effects).
void check_indices(const char* op, const Tensor& target, int64_t C, int64_t ignore_index) {
  const int64_t* y = target.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < target.numel(); ++r) {
    TORCH_CHECK_INDEX(y[r] == ignore_index || (y[r] >= 0 && y[r] < C), op, ": Target ", y[r],
                      " is out of bounds for ", C, " classes");
  }
}

struct Inputs {
  Tensor x, t, w;  // contiguous input, target and (possibly undefined) weight
};

Inputs contiguous_inputs(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight) {
  const bool has_weight = weight.has_value() && weight->defined();
  return {input.contiguous(), target.contiguous(), has_weight ? weight->contiguous() : Tensor()};
}

// ---- Row primitives, on a contiguous row x[0..C) in the compute type T (float or double; bfloat16
// and float16 rows are converted to float first). Sums accumulate in T: float rows in float32 vector
// lanes, as torch's log_softmax does, by the kernels of cpu/cross_entropy_kernel.cpp; double rows by
// the loops below.

// max_c x_c
template <typename T>
T row_max(const T* x, int64_t C) {
  if constexpr (std::is_same_v<T, float>) {
    return row_max_stub(x, C);
  } else {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t c = 0; c < C; ++c) m = std::max(m, x[c]);
    return m;
  }
}

// sum_c exp(x_c - m)
template <typename T>
T row_sum_exp(const T* x, int64_t C, T m) {
  if constexpr (std::is_same_v<T, float>) {
    return row_sum_exp_stub(x, C, m);
  } else {
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(x[c] - m);
    return sum;
  }
}

// sum_c w_c (m - x_c) (w = 1 when null), terms of weight 0 left out: for m = max_c x_c every term
// is >= 0, so the smoothing term of the loss needs no subtraction of large sums.
template <typename T>
T row_weighted_gap(const T* x, const T* w, int64_t C, T m) {
  if constexpr (std::is_same_v<T, float>) {
    return row_weighted_gap_stub(x, w, C, m);
  } else {
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += w ? (w[c] == 0 ? T(0) : w[c] * (m - x[c])) : m - x[c];
    return sum;
  }
}

// out_c = a exp(x_c - l) + b w_c (w = 1 when null); out may be x.
template <typename T>
void row_scaled_softmax(const T* x, int64_t C, T l, T a, const T* w, T b, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    return row_scaled_softmax_stub(x, C, l, a, w, b, out);
  } else {
    for (int64_t c = 0; c < C; ++c) out[c] = a * std::exp(x[c] - l) + b * (w ? w[c] : T(1));
  }
}

// ---- Rows of the (N, C, S) input: row r = (n, s) is read in place when it is a contiguous row of
// T, else gathered (and converted) into a scratch row.
template <typename scalar_t, typename T>
struct Rows {
  const Geometry& G;
  const scalar_t* x;
  static constexpr bool kInPlace = std::is_same_v<scalar_t, T>;

  int64_t base(int64_t r) const { return (r / G.S) * G.C * G.S + r % G.S; }
  bool direct() const { return kInPlace && G.S == 1; }

  const T* row(int64_t r, T* scratch) const {
    if constexpr (kInPlace) {
      if (G.S == 1) return x + r * G.C;
    }
    const scalar_t* xr = x + base(r);
    for (int64_t c = 0; c < G.C; ++c) scratch[c] = T(xr[c * G.S]);
    return scratch;
  }

  // Where to write row r of an output like x: in place, or into the scratch row that store() copies.
  T* out_row(scalar_t* out, int64_t r, T* scratch) const {
    if constexpr (kInPlace) {
      if (G.S == 1) return out + r * G.C;
    }
    return scratch;
  }

  void store(scalar_t* out, int64_t r, const T* row) const {
    if (direct()) return;
    scalar_t* out_r = out + base(r);
    for (int64_t c = 0; c < G.C; ++c) out_r[c * G.S] = scalar_t(row[c]);
  }
};

// Rows per task: about 16K logits each.
int64_t grain_rows(int64_t C) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(C, 1)); }

// The class weights in T (undefined: no weights).
template <typename T>
Tensor weights_in(const Tensor& w) {
  return w.defined() ? w.to(c10::CppTypeToScalarType<T>::value).contiguous() : Tensor();
}

// D of the mean: sum_r w_{y_r} over non-ignored rows (class indices; as in torch's nll_loss)
// or the number of rows N * S (class probabilities).
template <typename T>
double mean_denominator(const Geometry& G, const int64_t* y, const T* w, int64_t ignore_index) {
  if (G.probabilities) return double(G.R());
  double D = 0;
  for (int64_t r = 0; r < G.R(); ++r) {
    if (y[r] != ignore_index) D += w ? double(w[y[r]]) : 1.0;
  }
  return D;
}

// Forward: lse_r = m_r + log sum_c exp(x[r, c] - m_r) with m_r = max_c x[r, c] (log-sum-exp,
// stable for any logits), loss_r as at the top of the file; for class indices, with W = sum_c w_c,
//   loss_r = (1 - eps) w_y (lse_r - x[r, y]) + eps / C * (sum_c w_c (m_r - x[r, c]) + W (lse_r - m_r))
// (no per-class weights q needed), then
//   none: loss_r;  sum: sum_r loss_r;  mean: sum_r loss_r / D.
// Returns the loss and lse (float64, one per row), which the backward reuses.
std::tuple<Tensor, Tensor> cross_entropy_forward(const Tensor& input, const Tensor& target,
                                                 const std::optional<Tensor>& weight, std::string_view reduction,
                                                 int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy";
  const Reduction red = parse_reduction(std::string(reduction));
  const Geometry G = check_cross_entropy(op, input, target, weight, label_smoothing);
  const Inputs in = contiguous_inputs(input, target, weight);
  if (!G.probabilities) check_indices(op, in.t, G.C, ignore_index);

  Tensor lse = at::empty(G.row_size, input.options().dtype(at::kDouble));
  Tensor loss = red == Reduction::None ? at::empty(G.row_size, input.options()) : Tensor();
  std::vector<double> row_loss(red == Reduction::None ? 0 : G.R());
  double D = 1.0;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "cross_entropy_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Rows<scalar_t, T> rows{G, in.x.const_data_ptr<scalar_t>()};
    const scalar_t* t = G.probabilities ? in.t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* y = G.probabilities ? nullptr : in.t.const_data_ptr<int64_t>();
    const Tensor w_t = weights_in<T>(in.w);
    const T* w = w_t.defined() ? w_t.const_data_ptr<T>() : nullptr;
    T W = G.C;
    if (w) W = std::accumulate(w, w + G.C, T(0));
    const T eps = std::max(label_smoothing, 0.0);
    double* lse_out = lse.mutable_data_ptr<double>();
    scalar_t* loss_none = loss.defined() ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, G.R(), grain_rows(G.C), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(rows.direct() ? 0 : G.C);
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = rows.row(r, scratch.data());
        const T m = row_max(xr, G.C);
        const T l = m + std::log(row_sum_exp(xr, G.C, m));
        T loss_r = 0;
        if (G.probabilities) {  // sum_c q_c (lse - x_c), terms with q_c = 0 left out
          const scalar_t* tr = t + rows.base(r);
          for (int64_t c = 0; c < G.C; ++c) {
            const T q = (w ? w[c] : T(1)) * ((1 - eps) * T(tr[c * G.S]) + eps / G.C);
            if (q != 0) loss_r += q * (l - xr[c]);
          }
        } else if (y[r] != ignore_index) {
          const T target_weight = (1 - eps) * (w ? w[y[r]] : T(1));
          if (target_weight != 0) loss_r += target_weight * (l - xr[y[r]]);
          if (eps > 0) loss_r += eps / G.C * (row_weighted_gap(xr, w, G.C, m) + W * (l - m));
        }
        lse_out[r] = l;
        if (loss_none) {
          loss_none[r] = scalar_t(loss_r);
        } else {
          row_loss[r] = loss_r;
        }
      }
    });
    if (red == Reduction::Mean) D = mean_denominator(G, y, w, ignore_index);
  });
  if (red != Reduction::None) {
    const double total = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
    loss = at::scalar_tensor(red == Reduction::Mean ? total / D : total, input.options());
  }
  return {loss, lse};
}

// Backward: with g_r = dL/dloss_r (grad_output[r], grad_output / D or grad_output) and
// p[r, c] = exp(x[r, c] - lse_r) = softmax,
//   dL/dx[r, c] = g_r * (Q_r * p[r, c] - q[r, c]),   Q_r = sum_c q[r, c]
// (p - y for a one-hot target), and for class probabilities
//   dL/dt[r, c] = g_r * (1 - eps) * w_c * (lse_r - x[r, c]).
// For class indices, q[r, c] = eps / C w_c + (1 - eps) w_y [c == y] and Q_r = eps / C W + (1 - eps) w_y:
// a scaled softmax plus a multiple of w, with one more term at c = y.
std::tuple<Tensor, Tensor> cross_entropy_backward(const Tensor& grad_output, const Tensor& input, const Tensor& target,
                                                  const std::optional<Tensor>& weight, const Tensor& lse,
                                                  std::string_view reduction, int64_t ignore_index,
                                                  double label_smoothing, std::array<bool, 2> output_mask) {
  const char* op = "cross_entropy_backward";
  const Reduction red = parse_reduction(std::string(reduction));
  const Geometry G = check_cross_entropy(op, input, target, weight, label_smoothing);
  TORCH_CHECK(lse.scalar_type() == at::kDouble && lse.sizes() == at::IntArrayRef(G.row_size), op,
              ": expected lse of size ", at::IntArrayRef(G.row_size), " and dtype Double, but got lse of size ",
              lse.sizes(), " and dtype ", lse.scalar_type());
  const std::vector<int64_t> loss_size = red == Reduction::None ? G.row_size : std::vector<int64_t>{};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(loss_size), op, ": expected grad_output of size ",
              at::IntArrayRef(loss_size), ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  TORCH_CHECK(!output_mask[1] || G.probabilities, op, ": class-index targets have no gradient");
  const Inputs in = contiguous_inputs(input, target, weight);
  if (!G.probabilities) check_indices(op, in.t, G.C, ignore_index);

  const Tensor dy = grad_output.contiguous();
  const Tensor lse_c = lse.contiguous();
  Tensor grad_input = output_mask[0] ? at::empty_like(in.x) : Tensor();
  Tensor grad_target = output_mask[1] ? at::empty_like(in.x) : Tensor();
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "cross_entropy_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Rows<scalar_t, T> rows{G, in.x.const_data_ptr<scalar_t>()};
    const scalar_t* t = G.probabilities ? in.t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* y = G.probabilities ? nullptr : in.t.const_data_ptr<int64_t>();
    const Tensor w_t = weights_in<T>(in.w);
    const T* w = w_t.defined() ? w_t.const_data_ptr<T>() : nullptr;
    T W = G.C;
    if (w) W = std::accumulate(w, w + G.C, T(0));
    const double D = red == Reduction::Mean ? mean_denominator(G, y, w, ignore_index) : 1.0;
    const double* lse_in = lse_c.const_data_ptr<double>();
    const scalar_t* g = dy.const_data_ptr<scalar_t>();
    scalar_t* gx = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gt = output_mask[1] ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const T eps = std::max(label_smoothing, 0.0);
    at::parallel_for(0, G.R(), grain_rows(G.C), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(rows.direct() ? 0 : G.C), out_scratch(rows.direct() || !gx ? 0 : G.C);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = rows.base(r);
        const T* xr = rows.row(r, scratch.data());
        const T l = lse_in[r];
        const bool ignored = !G.probabilities && y[r] == ignore_index;
        // An ignored row has no loss term, so zero gradient even when D = 0.
        const T g_r = ignored ? T(0) : T(double(g[red == Reduction::None ? r : 0]) / D);
        if (gt) {
          for (int64_t c = 0; c < G.C; ++c) {
            gt[base + c * G.S] = scalar_t(-g_r * (1 - eps) * (w ? w[c] : T(1)) * (xr[c] - l));
          }
        }
        if (!gx) continue;
        T* out = rows.out_row(gx, r, out_scratch.data());
        if (ignored) {
          std::fill(out, out + G.C, T(0));
        } else if (G.probabilities) {
          const scalar_t* tr = t + base;
          auto q = [&](int64_t c) { return (w ? w[c] : T(1)) * ((1 - eps) * T(tr[c * G.S]) + eps / G.C); };
          T Q = 0;
          for (int64_t c = 0; c < G.C; ++c) Q += q(c);
          row_scaled_softmax(xr, G.C, l, g_r * Q, w, T(0), out);
          for (int64_t c = 0; c < G.C; ++c) out[c] -= g_r * q(c);
        } else {
          const T target_weight = (1 - eps) * (w ? w[y[r]] : T(1));
          row_scaled_softmax(xr, G.C, l, g_r * (eps / G.C * W + target_weight), w, -g_r * eps / G.C, out);
          out[y[r]] -= g_r * target_weight;
        }
        rows.store(gx, r, out);
      }
    });
  });
  return {grad_input, grad_target};
}

using ForwardSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                              std::string_view, int64_t, double);
using BackwardSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                               const std::optional<Tensor>&, const Tensor&, std::string_view, int64_t,
                                               double, std::array<bool, 2>);

// The backward node of cross_entropy_forward: CrossEntropyFunction's derivatives
// (manual_ops/ops/cross_entropy.py), in C++, with next edges (input, target). The backward is
// cross_entropy_backward, differentiable through that op's autograd kernel (CrossEntropyBackward).
struct CrossEntropyBackwardNode final : public Node {
  SavedVariable input_, target_, weight_, lse_;
  std::string reduction_;
  int64_t ignore_index_ = 0;
  double label_smoothing_ = 0;

  std::string name() const override { return "CrossEntropyBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    target_.reset_data();
    weight_.reset_data();
    lse_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto op = operator_handle<BackwardSig>("manual_ops::cross_entropy_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    auto [grad_input, grad_target] = call_backward_op(
        op, grads[0], input_.unpack(), target_.unpack(), optional_of(weight_.unpack()), lse_.unpack(), reduction_,
        ignore_index_, label_smoothing_,
        std::array<bool, 2>{task_should_compute_output(0), task_should_compute_output(1)});
    return {grad_input, grad_target};
  }

#ifdef MANUAL_OPS_COMPILED_AUTOGRAD
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(input_, false);
    args.collect(target_, false);
    args.collect(weight_, false);
    args.collect(lse_, false);
    args.collect(reduction_);
    args.collect(ignore_index_);
    args.collect(label_smoothing_);
  }

  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    return apply_backward_op_compiled(*this, "manual_ops::cross_entropy_backward", grads, saved,
                                      {&input_, &target_, &weight_, &lse_},
                                      {reduction_, ignore_index_, label_smoothing_});
  }
#endif
};

// The autograd kernel of cross_entropy_forward. lse is not differentiable.
std::tuple<Tensor, Tensor> cross_entropy_forward_autograd(const Tensor& input, const Tensor& target,
                                                          const std::optional<Tensor>& weight,
                                                          std::string_view reduction, int64_t ignore_index,
                                                          double label_smoothing) {
  static const auto op = operator_handle<ForwardSig>("manual_ops::cross_entropy_forward");
  check_not_differentiable("cross_entropy_forward", "weight", weight);
  check_no_forward_grad("cross_entropy_forward", input, target);
  auto node = make_backward_node<CrossEntropyBackwardNode>(input, target);
  auto [loss, lse] = call_below_autograd(op, input, target, weight, reduction, ignore_index, label_smoothing);
  if (node) {
    torch::autograd::set_history(loss, node);
    node->input_ = SavedVariable(input, false);
    node->target_ = SavedVariable(target, false);
    node->weight_ = SavedVariable(weight.value_or(Tensor()), false);
    node->lse_ = SavedVariable(lse, false);
    node->reduction_ = reduction;
    node->ignore_index_ = ignore_index;
    node->label_smoothing_ = label_smoothing;
  }
  return {loss, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
}

TORCH_LIBRARY_IMPL(manual_ops, Autograd, m) { m.impl("cross_entropy_forward", &cross_entropy_forward_autograd); }

}  // namespace manual_ops
