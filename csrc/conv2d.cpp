// 2-D convolution (cross-correlation, as in torch) by im2col + GEMM, with the
// backward written by hand. Derivation: docs/derivations.md, "conv2d".
#include "common.h"
#include "im2col.h"

#include <tuple>

namespace manual_ops {
namespace {

// Column buffers are bounded to about this many bytes (but always hold one sample).
constexpr int64_t kColumnBudgetBytes = 8 << 20;

ConvGeometry conv_geometry(const char* op, const Tensor& input, const Tensor& weight, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, op, ": expected a 4-D input (N, C, H, W), but got input of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": expected a 4-D weight (out_channels, in_channels/groups, kH, kW), ",
              "but got weight of size ", weight.sizes());
  TORCH_CHECK(stride.size() == 2 && dilation.size() == 2 && padding.size() == 4, op,
              ": expected stride and dilation of 2 values and padding of 4, but got stride=", stride,
              ", padding=", padding, ", dilation=", dilation);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": non-positive stride is not supported, got stride=", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": non-positive dilation is not supported, got dilation=",
              dilation);
  for (int64_t p : padding) TORCH_CHECK(p >= 0, op, ": negative padding is not supported, got padding=", padding);
  TORCH_CHECK(groups > 0, op, ": non-positive groups is not supported, got groups=", groups);
  check_floating(op, "input", input);
  check_same_dtype(op, "input", input, "weight", weight);

  ConvGeometry G{};
  G.N = input.size(0), G.C = input.size(1), G.H = input.size(2), G.W = input.size(3);
  G.Cout = weight.size(0), G.kh = weight.size(2), G.kw = weight.size(3);
  G.sh = stride[0], G.sw = stride[1];
  G.pt = padding[0], G.pl = padding[1], G.pb = padding[2], G.pr = padding[3];
  G.dh = dilation[0], G.dw = dilation[1];
  G.groups = groups;

  TORCH_CHECK(G.Cout % groups == 0, op, ": given groups=", groups, ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size ", weight.sizes());
  TORCH_CHECK(G.C == weight.size(1) * groups, op, ": given groups=", groups, ", weight of size ", weight.sizes(),
              ", expected input", input.sizes(), " to have ", weight.size(1) * groups, " channels, but got ", G.C,
              " channels instead");
  const int64_t padded_h = G.H + G.pt + G.pb, padded_w = G.W + G.pl + G.pr;
  const int64_t ext_h = G.dh * (G.kh - 1) + 1, ext_w = G.dw * (G.kw - 1) + 1;
  TORCH_CHECK(padded_h >= ext_h && padded_w >= ext_w, op, ": calculated padded input size per channel: (",
              padded_h, " x ", padded_w, "). Kernel size (dilated): (", ext_h, " x ", ext_w,
              "). Kernel size can't be greater than actual input size");
  G.OH = (padded_h - ext_h) / G.sh + 1;
  G.OW = (padded_w - ext_w) / G.sw + 1;
  return G;
}

// Samples per tile, so that a tile's column matrix stays within the budget.
int64_t tile_samples(const ConvGeometry& G, const Tensor& t) {
  const int64_t per_sample = std::max<int64_t>(1, G.L() * G.K() * t.element_size());
  return std::max<int64_t>(1, std::min<int64_t>(G.N, kColumnBudgetBytes / per_sample));
}

// An (N*OH*OW, C) row-major view of an NHWC tensor.
Tensor rows_view(const Tensor& nhwc) {
  return nhwc.permute({0, 2, 3, 1}).reshape({-1, nhwc.size(1)});
}

// The column matrix of samples [b0, b0+nb), group g: the NHWC input itself for a
// pointwise conv, else im2col into `buffer`.
Tensor columns(const Tensor& x_rows, const Tensor& x, const ConvGeometry& G, int64_t b0, int64_t nb, int64_t g,
               Tensor& buffer) {
  if (G.pointwise()) return x_rows.narrow(0, b0 * G.L(), nb * G.L()).narrow(1, g * G.Cg(), G.Cg());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "im2col_nhwc", [&] {
    im2col_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), G, b0, nb, g, buffer.mutable_data_ptr<scalar_t>());
  });
  return buffer.narrow(0, 0, nb * G.L());
}

// Forward: Y[r, co] = sum_k cols[r, k] * W[co, k] + b[co], one GEMM per tile and group:
//   Y_g (rows x Cout_g) = cols_g (rows x K) @ W_g^T (K x Cout_g).
Tensor conv2d_forward(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                      IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "conv2d";
  at::AutoDispatchBelowADInplaceOrView guard;  // the ATen calls below are ours, not autograd's
  const ConvGeometry G = conv_geometry(op, input, weight, stride, padding, dilation, groups);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_same_dtype(op, "input", input, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == G.Cout, op, ": given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", G.Cout, " elements, but got bias of size ",
                bias->sizes(), " instead");
  }

  const Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor x_rows = rows_view(x);
  const Tensor w_rows = weight.permute({0, 2, 3, 1}).contiguous().view({G.Cout, G.K()});  // W[co, (i, j, c)]
  Tensor out = at::empty({G.N, G.Cout, G.OH, G.OW}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Tensor out_rows = rows_view(out);

  const int64_t B = tile_samples(G, input);
  Tensor buffer = G.pointwise() ? Tensor() : at::empty({B * G.L(), G.K()}, input.options());
  for (int64_t b0 = 0; b0 < G.N; b0 += B) {
    const int64_t nb = std::min(B, G.N - b0);
    for (int64_t g = 0; g < G.groups; ++g) {
      const Tensor cols = columns(x_rows, x, G, b0, nb, g, buffer);
      Tensor y = out_rows.narrow(0, b0 * G.L(), nb * G.L()).narrow(1, g * G.Coutg(), G.Coutg());
      const Tensor w_t = w_rows.narrow(0, g * G.Coutg(), G.Coutg()).t();
      if (has_bias) {
        at::addmm_out(y, bias->narrow(0, g * G.Coutg(), G.Coutg()), cols, w_t);
      } else {
        at::mm_out(y, cols, w_t);
      }
    }
  }
  const bool channels_last_out = is_channels_last(input) || is_channels_last(weight);
  return channels_last_out ? out : out.contiguous();
}

// Backward, from the chain rule through Y = cols @ W^T + b:
//   dW_g   = dY_g^T @ cols_g                       (correlation of the padded input with dY)
//   dcols  = dY_g @ W_g,  dX = col2im(dcols)       (= full correlation of zero-inserted, padded dY
//                                                     with the 180-degree-rotated, in/out-transposed W)
//   db[co] = sum over n, oh, ow of dY[n, co, oh, ow]
std::tuple<Tensor, Tensor, Tensor> conv2d_backward(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                   IntArrayRef dilation, int64_t groups,
                                                   std::array<bool, 3> output_mask) {
  const char* op = "conv2d_backward";
  at::AutoDispatchBelowADInplaceOrView guard;
  const ConvGeometry G = conv_geometry(op, input, weight, stride, padding, dilation, groups);
  const std::array<int64_t, 4> out_size{G.N, G.Cout, G.OH, G.OW};
  TORCH_CHECK(grad_output.sizes() == IntArrayRef(out_size), op, ": expected grad_output of size ", IntArrayRef(out_size),
              ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);

  const Tensor dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor dy_rows = rows_view(dy);
  Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[2]) grad_bias = dy_rows.sum(0);
  if (!output_mask[0] && !output_mask[1]) return {grad_input, grad_weight, grad_bias};

  const Tensor x = output_mask[1] ? input.contiguous(at::MemoryFormat::ChannelsLast) : Tensor();
  const Tensor x_rows = output_mask[1] ? rows_view(x) : Tensor();
  const Tensor w_rows = weight.permute({0, 2, 3, 1}).contiguous().view({G.Cout, G.K()});
  Tensor dw_rows = output_mask[1] ? at::zeros({G.Cout, G.K()}, weight.options()) : Tensor();
  Tensor dx = output_mask[0]
                  ? at::empty({G.N, G.C, G.H, G.W}, input.options().memory_format(at::MemoryFormat::ChannelsLast))
                  : Tensor();
  const Tensor dx_rows = output_mask[0] ? rows_view(dx) : Tensor();

  const int64_t B = tile_samples(G, input);
  Tensor buffer = G.pointwise() ? Tensor() : at::empty({B * G.L(), G.K()}, input.options());
  for (int64_t b0 = 0; b0 < G.N; b0 += B) {
    const int64_t nb = std::min(B, G.N - b0);
    for (int64_t g = 0; g < G.groups; ++g) {
      const Tensor dy_g = dy_rows.narrow(0, b0 * G.L(), nb * G.L()).narrow(1, g * G.Coutg(), G.Coutg());
      if (output_mask[1]) {
        const Tensor cols = columns(x_rows, x, G, b0, nb, g, buffer);
        dw_rows.narrow(0, g * G.Coutg(), G.Coutg()).addmm_(dy_g.t(), cols);
      }
      if (output_mask[0]) {
        const Tensor w_g = w_rows.narrow(0, g * G.Coutg(), G.Coutg());
        if (G.pointwise()) {
          Tensor dx_g = dx_rows.narrow(0, b0 * G.L(), nb * G.L()).narrow(1, g * G.Cg(), G.Cg());
          at::mm_out(dx_g, dy_g, w_g);
        } else {
          Tensor dcols = buffer.narrow(0, 0, nb * G.L());
          at::mm_out(dcols, dy_g, w_g);
          AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "col2im_nhwc", [&] {
            col2im_nhwc<scalar_t>(dcols.const_data_ptr<scalar_t>(), G, b0, nb, g, dx.mutable_data_ptr<scalar_t>());
          });
        }
      }
    }
  }
  if (output_mask[0]) grad_input = is_channels_last(input) ? dx : dx.contiguous();
  if (output_mask[1]) {
    grad_weight = dw_rows.view({G.Cout, G.kh, G.kw, G.Cg()}).permute({0, 3, 1, 2});
    if (!is_channels_last(weight)) grad_weight = grad_weight.contiguous();
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward);
  m.impl("conv2d_backward", &conv2d_backward);
}

}  // namespace manual_ops
