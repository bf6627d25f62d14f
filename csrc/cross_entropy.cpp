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
#include "common.h"

#include <ATen/AccumulateType.h>

#include <cmath>
#include <tuple>

namespace manual_ops {
namespace {

constexpr int64_t kGrain = 64;  // rows per task

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

// The weights q[r, :] of one row (see the top of the file) written into `q`; returns sum_c q[r, c].
template <typename scalar_t, typename acc_t>
acc_t row_weights(const Geometry& G, int64_t r, const scalar_t* t, const int64_t* y, const scalar_t* w,
                  int64_t ignore_index, acc_t eps, acc_t* q) {
  const int64_t n = r / G.S, s = r % G.S;
  acc_t total = 0;
  if (G.probabilities) {
    for (int64_t c = 0; c < G.C; ++c) {
      q[c] = (w ? acc_t(w[c]) : acc_t(1)) * ((1 - eps) * acc_t(t[(n * G.C + c) * G.S + s]) + eps / G.C);
      total += q[c];
    }
    return total;
  }
  const int64_t label = y[r];
  for (int64_t c = 0; c < G.C; ++c) {
    q[c] = label == ignore_index ? acc_t(0) : (w ? acc_t(w[c]) : acc_t(1)) * eps / G.C;
    total += q[c];
  }
  if (label != ignore_index) {
    const acc_t extra = (1 - eps) * (w ? acc_t(w[label]) : acc_t(1));
    q[label] += extra;
    total += extra;
  }
  return total;
}

struct Inputs {
  Tensor x, t, w;  // contiguous input, target and (possibly undefined) weight
};

Inputs contiguous_inputs(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight) {
  const bool has_weight = weight.has_value() && weight->defined();
  return {input.contiguous(), target.contiguous(), has_weight ? weight->contiguous() : Tensor()};
}

// D of the mean: sum_r w_{y_r} over non-ignored rows (class indices; as in torch's nll_loss)
// or the number of rows N * S (class probabilities).
double mean_denominator(const Geometry& G, const Inputs& in, int64_t ignore_index) {
  if (G.probabilities) return double(G.R());
  const Tensor counted = in.t != ignore_index;
  const Tensor w_y = in.w.defined() ? in.w.index_select(0, in.t.masked_select(counted)) : counted;
  return w_y.sum(at::kDouble).item<double>();
}

// Forward: lse_r = m_r + log sum_c exp(x[r, c] - m_r) with m_r = max_c x[r, c] (log-sum-exp,
// stable for any logits), loss_r as above, then
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
  Tensor row_loss = at::empty({G.R()}, input.options().dtype(at::kDouble));
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "cross_entropy_forward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.x.const_data_ptr<scalar_t>();
    const scalar_t* t = G.probabilities ? in.t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* y = G.probabilities ? nullptr : in.t.const_data_ptr<int64_t>();
    const scalar_t* w = in.w.defined() ? in.w.const_data_ptr<scalar_t>() : nullptr;
    const acc_t eps = std::max(label_smoothing, 0.0);
    double* lse_out = lse.mutable_data_ptr<double>();
    double* loss_out = row_loss.mutable_data_ptr<double>();
    at::parallel_for(0, G.R(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> q(G.C);
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + (r / G.S) * G.C * G.S + r % G.S;
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t c = 0; c < G.C; ++c) m = std::max<acc_t>(m, xr[c * G.S]);
        acc_t sum_exp = 0;
        // exp in the input's precision (as torch's log_softmax; float32 for bfloat16 and float16),
        // summed in acc_t.
        for (int64_t c = 0; c < G.C; ++c) sum_exp += std::exp(opmath_t(acc_t(xr[c * G.S]) - m));
        const acc_t l = m + std::log(sum_exp);
        row_weights<scalar_t, acc_t>(G, r, t, y, w, ignore_index, eps, q.data());
        acc_t loss = 0;
        for (int64_t c = 0; c < G.C; ++c) loss += q[c] == 0 ? acc_t(0) : q[c] * (l - acc_t(xr[c * G.S]));
        lse_out[r] = l;
        loss_out[r] = loss;
      }
    });
  });
  Tensor loss;
  if (red == Reduction::None) {
    loss = row_loss.view(G.row_size);
  } else {
    loss = row_loss.sum();
    if (red == Reduction::Mean) loss = loss / mean_denominator(G, in, ignore_index);
  }
  return {loss.to(input.scalar_type()), lse};
}

// Backward: with g_r = dL/dloss_r (grad_output[r], grad_output / D or grad_output) and
// p[r, c] = exp(x[r, c] - lse_r) = softmax,
//   dL/dx[r, c] = g_r * (Q_r * p[r, c] - q[r, c]),   Q_r = sum_c q[r, c]
// (p - y for a one-hot target), and for class probabilities
//   dL/dt[r, c] = g_r * (1 - eps) * w_c * (lse_r - x[r, c]).
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

  const double denominator = red == Reduction::Mean ? mean_denominator(G, in, ignore_index) : 1.0;
  const Tensor dy = grad_output.contiguous();
  Tensor grad_input = output_mask[0] ? at::empty_like(in.x) : Tensor();
  Tensor grad_target = output_mask[1] ? at::empty_like(in.x) : Tensor();
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "cross_entropy_backward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x = in.x.const_data_ptr<scalar_t>();
    const scalar_t* t = G.probabilities ? in.t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* y = G.probabilities ? nullptr : in.t.const_data_ptr<int64_t>();
    const scalar_t* w = in.w.defined() ? in.w.const_data_ptr<scalar_t>() : nullptr;
    const double* l = lse.contiguous().const_data_ptr<double>();
    const scalar_t* g = dy.const_data_ptr<scalar_t>();
    scalar_t* gx = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gt = output_mask[1] ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t eps = std::max(label_smoothing, 0.0);
    at::parallel_for(0, G.R(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> q(G.C);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = (r / G.S) * G.C * G.S + r % G.S;
        const bool ignored = !G.probabilities && y[r] == ignore_index;
        const acc_t Q = row_weights<scalar_t, acc_t>(G, r, t, y, w, ignore_index, eps, q.data());
        // An ignored row has no loss term, so zero gradient even when D = 0.
        const acc_t g_r = ignored ? acc_t(0) : acc_t(g[red == Reduction::None ? r : 0]) / denominator;
        for (int64_t c = 0; c < G.C; ++c) {
          const int64_t i = base + c * G.S;
          const acc_t log_p = acc_t(x[i]) - acc_t(l[r]);
          if (gx) gx[i] = ignored ? scalar_t(0) : scalar_t(g_r * (Q * std::exp(opmath_t(log_p)) - q[c]));
          if (gt) gt[i] = scalar_t(-g_r * (1 - eps) * (w ? acc_t(w[c]) : acc_t(1)) * log_p);
        }
      }
    });
  });
  return {grad_input, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
}

}  // namespace manual_ops
