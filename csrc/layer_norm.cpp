// Layer normalisation over the trailing normalized_shape dims, with the backward written by hand.
// Derivation: docs/derivations.md, "layer_norm".
//
// The input is read as R contiguous rows of M = prod(normalized_shape) values; each row is normalised
// over its values, and value m of every row gets gamma[m] and beta[m]. That is group_norm with one
// group per row and the row's values as its channels (the same formulas); the rows are many and short
// here, so the kernels (cpu/layer_norm_kernel.h) work a row at a time, statistics included, instead of
// group_norm's per-channel passes. The results are contiguous, as torch's.
//
// Dtypes as batch_norm's: weight and bias have the input's dtype, or float32 for a bfloat16/float16
// input; the saved mean and rstd, of size (*leading, 1, ..., 1), have that parameter dtype.
#include "channel_passes.h"
#include "common.h"
#include "cpu/layer_norm_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <tuple>
#include <vector>

namespace manual_ops {

template <typename T>
KernelStub<layer_norm_rows_fn<T>> LayerNormStubs<T>::rows{};
template <typename T>
KernelStub<layer_norm_backward_rows_fn<T>> LayerNormStubs<T>::backward_rows{};
template struct LayerNormStubs<float>;
template struct LayerNormStubs<double>;
template struct LayerNormStubs<c10::BFloat16>;
template struct LayerNormStubs<c10::Half>;

namespace {

struct Rows {
  int64_t R, M;  // rows, values per row
};

void check_layer_norm(const char* op, const Tensor& input, at::IntArrayRef normalized_shape,
                      const std::optional<Tensor>& weight, const std::optional<Tensor>& bias) {
  TORCH_CHECK(!normalized_shape.empty(),
              "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, but "
              "got normalized_shape = ", normalized_shape);
  check_floating(op, "input", input);
  const int64_t D = static_cast<int64_t>(normalized_shape.size());
  if (input.dim() < D || input.sizes().slice(input.dim() - D) != normalized_shape) {
    std::ostringstream expected;
    expected << "[*";
    for (int64_t n : normalized_shape) expected << ", " << n;
    expected << "]";
    TORCH_CHECK(false, "Given normalized_shape=", normalized_shape, ", expected input with shape ", expected.str(),
                ", but got input of size", input.sizes());
  }
  const at::ScalarType ptype = param_type(input, {weight, bias});
  for (const auto& [name, t] : {std::pair<const char*, const std::optional<Tensor>&>{"weight", weight}, {"bias", bias}}) {
    if (!has(t)) continue;
    TORCH_CHECK(t->sizes() == normalized_shape, "Expected ", name, " to be of same shape as normalized_shape, but got ",
                name, " of shape ", t->sizes(), " and normalized_shape = ", normalized_shape);
    check_param_dtype(op, name, *t, input, ptype);
  }
}

// A per-value tensor (weight, bias) as the 1-D tensor of its M values, or none.
std::optional<Tensor> flat(const std::optional<Tensor>& t) {
  return has(t) ? std::optional<Tensor>(t->reshape(-1)) : std::nullopt;
}

Rows rows_of(const Tensor& input, at::IntArrayRef normalized_shape) {
  const int64_t lead = input.dim() - static_cast<int64_t>(normalized_shape.size());
  return {c10::multiply_integers(input.sizes().slice(0, lead)), c10::multiply_integers(normalized_shape)};
}

// The size of the saved statistics: the input's leading sizes, then a 1 per normalised dim (torch's).
std::vector<int64_t> stats_size(const Tensor& input, at::IntArrayRef normalized_shape) {
  std::vector<int64_t> size = input.sizes().vec();
  std::fill(size.end() - static_cast<int64_t>(normalized_shape.size()), size.end(), 1);
  return size;
}

// Blocks of whole rows, one per at::internal::GRAIN_SIZE values and at most kBlocks, so that the
// partition, and the order in which the per-block sums of dgamma and dbeta are added, depend on the
// sizes only, not on the thread count.
struct Blocks {
  int64_t count, per_block;
  explicit Blocks(const Rows& g) {
    constexpr int64_t kBlocks = 16;
    count = std::min(g.R, std::clamp<int64_t>(g.R * g.M / at::internal::GRAIN_SIZE, 1, kBlocks));
    per_block = count == 0 ? 0 : (g.R + count - 1) / count;
  }
};

// Forward: per row, mu = mean(x), var = mean((x - mu)^2), rstd = 1/sqrt(var + eps) (in opmath_t, two
// passes), y = (x - mu) * rstd * gamma + beta. Returns (y, mu, rstd).
std::tuple<Tensor, Tensor, Tensor> layer_norm_forward(const Tensor& input, at::IntArrayRef normalized_shape,
                                                      const std::optional<Tensor>& weight,
                                                      const std::optional<Tensor>& bias, double eps) {
  const char* op = "layer_norm";
  check_layer_norm(op, input, normalized_shape, weight, bias);
  at::AutoDispatchBelowADInplaceOrView guard;
  const Rows g = rows_of(input, normalized_shape);
  const Tensor x = input.contiguous();
  const at::ScalarType ptype = param_type(input, {weight, bias});
  Tensor out = at::empty(x.sizes(), x.options());  // contiguous (empty_like would keep an empty input's strides)
  Tensor save_mean, save_rstd;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "layer_norm_forward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<opmath_t> mean(g.R, std::numeric_limits<opmath_t>::quiet_NaN()), rstd(mean);  // M = 0: no values
    const std::vector<opmath_t> gamma = per_channel<opmath_t>(flat(weight), g.M, 1);
    const std::vector<opmath_t> beta = per_channel<opmath_t>(flat(bias), g.M, 0);
    if (g.M > 0) {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* yp = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.R, std::max<int64_t>(1, at::internal::GRAIN_SIZE / g.M), [&](int64_t r0, int64_t r1) {
        LayerNormStubs<scalar_t>::rows(xp + r0 * g.M, r1 - r0, g.M, opmath_t(eps), has(weight) ? gamma.data() : nullptr,
                                       has(bias) ? beta.data() : nullptr, yp + r0 * g.M, mean.data() + r0,
                                       rstd.data() + r0);
      });
    }
    save_mean = as_tensor(mean, input, ptype).view(stats_size(input, normalized_shape));
    save_rstd = as_tensor(rstd, input, ptype).view(stats_size(input, normalized_shape));
  });
  return {out, save_mean, save_rstd};
}

// Backward, per row with xhat = (x - mu) * rstd and g = gamma * delta:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
// and over the rows dgamma = sum delta * xhat, dbeta = sum delta (per value m). The rows are split into
// Blocks; each sums dgamma and dbeta in opmath_t over kChunk rows at a time, added into its acc_t sums,
// and the blocks' sums are added in block order.
std::tuple<Tensor, Tensor, Tensor> layer_norm_backward(const Tensor& grad_output, const Tensor& input,
                                                       at::IntArrayRef normalized_shape, const Tensor& save_mean,
                                                       const Tensor& save_rstd, const std::optional<Tensor>& weight,
                                                       std::array<bool, 3> output_mask) {
  const char* op = "layer_norm_backward";
  check_layer_norm(op, input, normalized_shape, weight, std::nullopt);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": expected grad_output of size ", input.sizes(),
              ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  const Rows g = rows_of(input, normalized_shape);
  const at::ScalarType ptype = param_type(input, {weight, save_mean, save_rstd});
  check_saved_stats(op, save_mean, save_rstd, g.R, "row", ptype);
  at::AutoDispatchBelowADInplaceOrView guard;
  const Tensor x = input.contiguous();
  const Tensor dy = grad_output.contiguous();
  Tensor grad_input = output_mask[0] ? at::empty(x.sizes(), x.options()) : Tensor();
  Tensor grad_weight, grad_bias;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "layer_norm_backward", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    using opmath_t = at::opmath_type<scalar_t>;
    const std::vector<opmath_t> mean = per_channel<opmath_t>(save_mean.reshape(-1), g.R, 0);
    const std::vector<opmath_t> rstd = per_channel<opmath_t>(save_rstd.reshape(-1), g.R, 0);
    const std::vector<opmath_t> gamma = per_channel<opmath_t>(flat(weight), g.M, 1);
    const Blocks blocks(g);
    const bool sums = output_mask[1] || output_mask[2];
    std::vector<acc_t> dgammas(sums ? blocks.count * g.M : 0, 0), dbetas(dgammas.size(), 0);
    if (g.M > 0) {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
      scalar_t* dxp = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
        std::vector<opmath_t> dgamma(sums ? g.M : 0), dbeta(dgamma.size());
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r_end = std::min(g.R, (b + 1) * blocks.per_block);
          for (int64_t r = b * blocks.per_block; r < r_end; r += kChunk) {
            const int64_t n = std::min(kChunk, r_end - r);
            std::fill(dgamma.begin(), dgamma.end(), opmath_t(0)), std::fill(dbeta.begin(), dbeta.end(), opmath_t(0));
            LayerNormStubs<scalar_t>::backward_rows(dyp + r * g.M, xp + r * g.M, n, g.M, mean.data() + r,
                                                    rstd.data() + r, has(weight) ? gamma.data() : nullptr,
                                                    dxp ? dxp + r * g.M : nullptr,
                                                    output_mask[1] ? dgamma.data() : nullptr,
                                                    output_mask[2] ? dbeta.data() : nullptr);
            for (int64_t m = 0; m < (sums ? g.M : 0); ++m) {
              dgammas[b * g.M + m] += dgamma[m], dbetas[b * g.M + m] += dbeta[m];
            }
          }
        }
      });
    }
    std::vector<acc_t> dgamma(g.M, 0), dbeta(g.M, 0);
    for (int64_t b = 0; b < (sums ? blocks.count : 0); ++b) {
      for (int64_t m = 0; m < g.M; ++m) dgamma[m] += dgammas[b * g.M + m], dbeta[m] += dbetas[b * g.M + m];
    }
    if (output_mask[1]) grad_weight = as_tensor(dgamma, input, ptype).view(normalized_shape);
    if (output_mask[2]) grad_bias = as_tensor(dbeta, input, ptype).view(normalized_shape);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward);
  m.impl("layer_norm_backward", &layer_norm_backward);
}

}  // namespace manual_ops
