// 2-D convolution (cross-correlation, as in torch) by im2col + GEMM, with the
// backward written by hand. Derivation: docs/derivations.md, "conv2d".
//
// bfloat16 and float16 tensors are computed in float32 by our GEMM (gemm.h), which converts its
// operands to float32 as it packs them and rounds its float32 results once: the input, the
// column matrix and the output gradient stay in their own dtype, and only the sums that span
// several GEMMs (grad_weight over tiles of samples, grad_input over the taps in col2im) are
// float32 buffers, rounded once at the end.
#include "common.h"
#include "cpu_capability.h"
#include "gemm.h"
#include "cpu/im2col_kernel.h"
#include "cpu/transpose_kernel.h"
#include "im2col.h"
#include "winograd.h"

#include <c10/core/InferenceMode.h>

#include <tuple>
#include <type_traits>

namespace manual_ops {

MANUAL_OPS_DEFINE_KERNEL(im2col_stub);
MANUAL_OPS_DEFINE_KERNEL(col2im_stub);
MANUAL_OPS_DEFINE_KERNEL(transpose_planes_stub);

namespace {

// A tile's scratch (its column matrix and the NHWC staging of its input, output gradient
// and input gradient) is bounded to about these many bytes, except that a tile always has at
// least kMinTileRows output pixels (or one sample), so that its GEMMs keep both cores busy.
// The backward's budget is the smaller: a training step's peak memory is reached there, when
// grad_weight and grad_input exist too.
constexpr int64_t kForwardBudgetBytes = 8 << 20;
constexpr int64_t kBackwardBudgetBytes = 4 << 20;
constexpr int64_t kMinTileRows = 256;

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
  // torch's rule for empty inputs: a zero batch or zero channels, nothing else.
  TORCH_CHECK(input.numel() > 0 || G.N == 0 || G.C == 0,
              "Only zero batch or zero channel inputs are supported, but got input shape: ", input.sizes());
  G.OH = (padded_h - ext_h) / G.sh + 1;
  G.OW = (padded_w - ext_w) / G.sw + 1;
  return G;
}

// The dtype of sums that span several GEMMs: float32 for bfloat16 and float16 tensors, else their own.
at::ScalarType sum_type(const Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// Samples per tile: within `budget` bytes of scratch, but at least kMinTileRows rows.
int64_t tile_samples(const ConvGeometry& G, const Tensor& t, int64_t budget) {
  const int64_t scratch = G.L() * G.K() + 2 * G.C * G.H * G.W + G.Cout * G.L();  // elements per sample
  const int64_t per_sample = std::max<int64_t>(1, scratch * c10::elementSize(sum_type(t)));
  const int64_t samples = std::max(budget / per_sample, (kMinTileRows + G.L() - 1) / G.L());
  return std::max<int64_t>(1, std::min<int64_t>(G.N, samples));
}

// The (N, H, W, C) view of a channels-last (N, C, H, W) tensor: NHWC-contiguous for an NHWC tile.
Tensor nhwc_view(const Tensor& t) { return t.permute({0, 2, 3, 1}); }

// An (N*H*W, C) row-major view of an NHWC-contiguous tensor (never a copy).
Tensor rows_view(const Tensor& nhwc) {
  return nhwc_view(nhwc).view({-1, nhwc.size(1)});
}

// dst.copy_(src) for 4-D tensors of one dtype, or src of dst's sum_type (a float32 tile into a
// bfloat16/float16 tensor), by transpose_planes when one is NCHW- and the other NHWC-contiguous
// (ATen's strided copy reads one side at a stride of H*W or C).
void copy_layout(Tensor& dst, const Tensor& src) {
  const bool to_nhwc = src.is_contiguous() && dst.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool to_nchw = src.is_contiguous(at::MemoryFormat::ChannelsLast) && dst.is_contiguous();
  const bool same_type = src.scalar_type() == dst.scalar_type();
  if (!(same_type || src.scalar_type() == sum_type(dst)) || !(to_nhwc || to_nchw)) {
    dst.copy_(src);
    return;
  }
  const int64_t C = src.size(1), P = src.size(2) * src.size(3), rows = to_nhwc ? C : P, cols = to_nhwc ? P : C;
  transpose_planes_stub(src, dst, src.size(0), rows, cols);
}

// Tensors of any layout seen one tile of samples at a time in NHWC and in `dtype`: the tile
// itself when it is channels-last contiguous and of that dtype, else a staging buffer of `tile`
// samples, allocated on first use (the copies into and out of it convert layout and dtype at
// once). Only tile-sized copies are made, so no whole NHWC or float32 copy of a tensor exists.
struct NhwcTiles {
  Tensor t;
  int64_t tile;
  at::ScalarType dtype;
  Tensor staging;

  bool direct(int64_t b0, int64_t nb) const {
    return t.scalar_type() == dtype && t.narrow(0, b0, nb).is_contiguous(at::MemoryFormat::ChannelsLast);
  }
  Tensor buffer(int64_t b0, int64_t nb) {
    if (direct(b0, nb)) return t.narrow(0, b0, nb);
    if (!staging.defined()) {
      staging = at::empty({tile, t.size(1), t.size(2), t.size(3)},
                          t.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
    }
    return staging.narrow(0, 0, nb);
  }
  // Samples [b0, b0 + nb) of t, to read.
  Tensor read(int64_t b0, int64_t nb) {
    Tensor buf = buffer(b0, nb);
    if (!direct(b0, nb)) copy_layout(buf, t.narrow(0, b0, nb));
    return buf;
  }
  // After writing `buf` (from buffer()), stores it into samples [b0, b0 + nb) of t.
  void write(int64_t b0, int64_t nb, const Tensor& buf) {
    if (direct(b0, nb)) return;
    Tensor dst = t.narrow(0, b0, nb);
    copy_layout(dst, buf);
  }
};

// The (nb * OH * OW, Cg) matrix of a pointwise conv's input pixels in the nb samples of the NHWC
// `tile` (of the input or of its gradient), group g, in place: row (b, oh, ow) at pixel
// (b, oh * sh, ow * sw), that is (b * OH + oh) * sh * W * C + ow * sw * C (as H = OH * sh).
Matrix pixel_rows(const Tensor& tile, const ConvGeometry& G, int64_t nb, int64_t g) {
  const Dim rows{nb * G.L(), G.sw * G.C, G.OW, G.sh * G.W * G.C};
  return {tile, g * G.Cg(), G.sh == 1 && G.sw == 1 ? Dim::plain(rows.size, G.C) : rows, Dim::plain(G.Cg(), 1)};
}

// Whether the column matrix (and dX) are views of the NHWC tiles (pixel_rows) rather than im2col
// (col2im) buffers: pointwise convs, the strided ones only for our GEMM (own_gemm), which reads
// and writes any view in place; at::mm would copy a strided view itself, slower than im2col.
bool view_columns(const ConvGeometry& G, at::ScalarType t) {
  return G.pointwise() && ((G.sh == 1 && G.sw == 1) || own_gemm(t));
}

// The column matrix of the nb samples of x_tile (NHWC), group g: a view of x_tile
// (view_columns), else im2col into `buffer`.
Matrix columns(const Tensor& x_tile, const ConvGeometry& G, int64_t nb, int64_t g, Tensor& buffer) {
  if (view_columns(G, x_tile.scalar_type())) return pixel_rows(x_tile, G, nb, g);
  im2col_stub(x_tile, G, nb, g, buffer);
  return matrix(buffer.narrow(0, 0, nb * G.L()));
}

// W[co, (i, j, c)]: a weight (or grad_weight) as a (Cout, K) matrix in the column matrix's tap
// order, in place: column k = t * Cg + c, for tap t = i * kw + j, lies at t * s_t + c * stride(1),
// where the taps are equally spaced, s_t apart (stride(2) = kw * stride(3), as in a contiguous
// and a channels-last weight, or one of kh, kw is 1); a weight of other strides is copied first.
// Where matmul() prefers plain strides (at::mm, oneDNN's matmul), a weight that is not channels-last
// is copied into tap order once per call, for reading (`copy_for_mm`).
Matrix weight_taps(const Tensor& weight, const ConvGeometry& G, bool copy_for_mm = false) {
  if (copy_for_mm && prefers_plain(weight.scalar_type())) {
    const Tensor taps = nhwc_view(weight);  // (Cout, kh, kw, Cg)
    return matrix((taps.is_contiguous() ? taps : at::empty(taps.sizes(), weight.options()).copy_(taps))
                      .view({G.Cout, G.K()}));
  }
  const bool even_taps = G.kh == 1 || G.kw == 1 || weight.stride(2) == G.kw * weight.stride(3);
  const Tensor w = even_taps ? weight : at::empty(weight.sizes(), weight.options()).copy_(weight);
  const int64_t tap_stride = G.kw == 1 ? w.stride(2) : w.stride(3);
  const Dim taps = G.Cg() == 1 ? Dim::plain(G.K(), tap_stride) : Dim{G.K(), w.stride(1), G.Cg(), tap_stride};
  return {w, 0, Dim::plain(G.Cout, w.stride(0)), taps};
}

// Samples per tile of Winograd's src (n, K, h, w) and dst (n, N, oh, ow): its scratch (V, M and
// the NHWC staging of both) within the backward's budget (in the forward too: a larger one measured
// slower, V and M falling out of cache); in the forward, at least kMinTileRows 2x2 output blocks
// per GEMM (fewer measured up to 10% slower at 4x4 and 8x8 images), but not in the backward, where
// that scratch would be on top of a training step's peak memory.
int64_t winograd_samples(const Tensor& src, const Tensor& dst, bool backward) {
  const int64_t K = src.size(1), N = dst.size(1), oh = dst.size(2), ow = dst.size(3);
  const int64_t tiles = WinogradBlocks(1, oh, ow).count;
  const int64_t per_sample = 16 * tiles * (K + N) * int64_t(c10::elementSize(sum_type(src))) +
                             (K * src.size(2) * src.size(3) + N * oh * ow) * src.element_size();
  const int64_t min_samples = backward ? 1 : (kMinTileRows + tiles - 1) / tiles;
  return std::clamp<int64_t>(std::max(kBackwardBudgetBytes / per_sample, min_samples), 1, src.size(0));
}

// The stride-1 3x3 correlation of src (n, K, h, w) padded by pt on top and pl on the left, with
// the kernels of `weight` (flipped: rotated and in/out-transposed, see winograd_weights), plus
// bias, into dst (n, N, oh, ow): Winograd F(2x2, 3x3) (winograd.h) over tiles of samples in NHWC
// (winograd_samples). The forward (src = x, dst = y) and dX (src = dY padded by 2 - p, dst = dX) of
// the convs that use_winograd selects.
void winograd_tiles(const Tensor& src, const Tensor& dst, const Tensor& weight, bool flipped, int64_t pt, int64_t pl,
                    const Tensor& bias, bool backward) {
  const int64_t n = src.size(0), K = src.size(1), N = dst.size(1), oh = dst.size(2), ow = dst.size(3);
  const int64_t B = winograd_samples(src, dst, backward);
  NhwcTiles s{src, B, src.scalar_type()}, d{dst, B, src.scalar_type()};
  MANUAL_OPS_DISPATCH_FLOATING(src.scalar_type(), "winograd_conv", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tensor U = winograd_weights<scalar_t>(weight, flipped);
    WinogradScratch scratch(B, oh, ow, K, N, src.options());
    for (int64_t b0 = 0; b0 < n; b0 += B) {
      const int64_t nb = std::min(B, n - b0);
      const Tensor d_tile = d.buffer(b0, nb);
      winograd_conv<scalar_t>(nhwc_view(s.read(b0, nb)), U, pt, pl, nhwc_view(d_tile),
                              bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr, scratch);
      d.write(b0, nb, d_tile);
    }
  });
}

// dW of the convs that use_winograd selects, in the weight's layout: Winograd's sums P over tiles of
// samples in NHWC (winograd_samples), then dW from P (winograd_grad_weight), allocated once the
// tiles' scratch is freed (this is at a training step's peak memory).
Tensor winograd_grad_weight_tiles(const Tensor& input, const Tensor& grad_output, const Tensor& weight,
                                  const ConvGeometry& G) {
  const int64_t B = winograd_samples(input, grad_output, true);
  Tensor dw;
  MANUAL_OPS_DISPATCH_FLOATING(input.scalar_type(), "winograd_grad_weight", [&] {
    Tensor P = at::empty({16, G.Cout, G.C},
                         input.options().dtype(sum_type(input)).memory_format(at::MemoryFormat::Contiguous));
    {
      NhwcTiles x{input, B, input.scalar_type()}, dy{grad_output, B, input.scalar_type()};
      WinogradScratch scratch(B, G.OH, G.OW, G.C, G.Cout, input.options());
      for (int64_t b0 = 0; b0 < G.N; b0 += B) {
        const int64_t nb = std::min(B, G.N - b0);
        winograd_grad_sums<scalar_t>(nhwc_view(x.read(b0, nb)), nhwc_view(dy.read(b0, nb)), G.pt, G.pl, P, b0 > 0,
                                     scratch);
      }
    }
    dw = at::empty(weight.sizes(), weight.options().memory_format(conv_grad_weight_format(input, weight)));
    winograd_grad_weight<scalar_t>(P, dw);
  });
  return dw;
}

// Y (`out`, allocated in any layout) by im2col's GEMMs over tiles of samples within `budget` bytes
// of scratch, plus `b` (of the sum dtype, or undefined); see conv2d_forward.
void im2col_forward(const Tensor& input, const Tensor& weight, const Tensor& b, const ConvGeometry& G, int64_t budget,
                    const Tensor& out) {
  const bool has_bias = b.defined();
  const Matrix w_taps = weight_taps(weight, G, true);
  const int64_t B = tile_samples(G, input, budget);
  NhwcTiles x{input, B, input.scalar_type()}, y{out, B, input.scalar_type()};
  const bool views = view_columns(G, input.scalar_type());
  Tensor buffer = views ? Tensor() : at::empty({B * G.L(), G.K()}, input.options());
  for (int64_t b0 = 0; b0 < G.N; b0 += B) {
    const int64_t nb = std::min(B, G.N - b0);
    const Tensor x_tile = x.read(b0, nb);
    const Tensor y_tile = y.buffer(b0, nb);
    const Tensor y_rows = rows_view(y_tile);
    for (int64_t g = 0; g < G.groups; ++g) {
      const Matrix cols = columns(x_tile, G, nb, g, buffer);
      Tensor y_g = y_rows.narrow(1, g * G.Coutg(), G.Coutg());
      const Matrix w_t = w_taps.narrow_rows(g * G.Coutg(), G.Coutg()).transposed();
      matmul(cols, w_t, matrix(y_g), false, has_bias ? b.narrow(0, g * G.Coutg(), G.Coutg()) : Tensor());
    }
    y.write(b0, nb, y_tile);
  }
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

  Tensor out = at::empty({G.N, G.out_channels(), G.OH, G.OW},
                         input.options().memory_format(conv_memory_format(input, weight)));
  if (out.numel() == 0) return out;
  const Tensor b = has_bias ? bias->to(sum_type(input)) : Tensor();
  if (use_winograd(G, input.scalar_type())) {
    winograd_tiles(input, out, weight, false, G.pt, G.pl, b, false);
    return out;
  }
  im2col_forward(input, weight, b, G, kForwardBudgetBytes, out);
  return out;
}

// dX by im2col's GEMMs and col2im over tiles of samples, into grad_input (allocated, of the
// input's size and layout); see conv2d_backward.
void im2col_grad_input(const Tensor& grad_output, const Tensor& weight, const ConvGeometry& G,
                       const Tensor& grad_input) {
  const int64_t B = tile_samples(G, grad_input, kBackwardBudgetBytes);
  const Matrix w_taps = weight_taps(weight, G, true);
  // dX in float32 tiles for low precision where col2im sums taps; with view_columns, each dX value
  // is one GEMM result, rounded once straight into the input's dtype.
  const bool views = view_columns(G, grad_input.scalar_type());
  NhwcTiles dy{grad_output, B, grad_input.scalar_type()};
  NhwcTiles dx{grad_input, B, views ? grad_input.scalar_type() : sum_type(grad_input)};
  Tensor dcols_buffer =
      views ? Tensor() : at::empty({B * G.L(), G.K()}, grad_input.options().dtype(sum_type(grad_input)));
  for (int64_t b0 = 0; b0 < G.N; b0 += B) {
    const int64_t nb = std::min(B, G.N - b0);
    const Tensor dy_rows = rows_view(dy.read(b0, nb));
    const Tensor dx_tile = dx.buffer(b0, nb);
    for (int64_t g = 0; g < G.groups; ++g) {
      const Tensor dy_g = dy_rows.narrow(1, g * G.Coutg(), G.Coutg());
      const Matrix w_g = w_taps.narrow_rows(g * G.Coutg(), G.Coutg());
      if (views) {  // a strided conv's dX is 0 between the pixels it reads
        if ((G.sh > 1 || G.sw > 1) && g == 0) dx_tile.zero_();
        matmul(matrix(dy_g), w_g, pixel_rows(dx_tile, G, nb, g), false);
      } else {
        Tensor dcols = dcols_buffer.narrow(0, 0, nb * G.L());
        matmul(matrix(dy_g), w_g, matrix(dcols), false);
        col2im_stub(dcols, G, nb, g, dx_tile);
      }
    }
    dx.write(b0, nb, dx_tile);
  }
}

// dW by im2col's GEMMs over tiles of samples, in the weight's layout; see conv2d_backward.
Tensor im2col_grad_weight(const Tensor& grad_output, const Tensor& input, const Tensor& weight, const ConvGeometry& G) {
  // dW is made in the weight's layout, through weight_taps. Over several tiles it is a sum of
  // GEMMs, kept in float32 for low precision and rounded at the end; but where the whole batch's
  // column matrix takes no more memory than that float32 sum would (small images, many
  // channels), the batch is one tile and its one GEMM rounds straight into dW's dtype.
  const bool one_tile = sum_type(input) != input.scalar_type() &&
                        G.N * G.L() * c10::elementSize(input.scalar_type()) <=
                            G.Cout * c10::elementSize(sum_type(input));
  const int64_t Bw = one_tile ? G.N : tile_samples(G, input, kBackwardBudgetBytes);
  const at::ScalarType dw_type = one_tile ? weight.scalar_type() : sum_type(weight);
  Tensor dw = at::empty({G.Cout, G.Cg(), G.kh, G.kw},
                        weight.options().dtype(dw_type).memory_format(conv_grad_weight_format(input, weight)));
  if (input.numel() == 0) dw.zero_();
  // at::mm and oneDNN's micro-kernel write only plain matrices in place: where dW's tap-order view
  // is not one (a weight that is not channels-last), the tiles' GEMMs add up in a plain (Cout, K)
  // buffer, copied into dW's layout once (not one product per tile, added into the view apart);
  // dW itself is then allocated after the GEMMs, once their scratch is freed.
  Matrix dw_target = weight_taps(dw, G);
  const bool plain_sum = !dw_target.cols.is_plain() && input.numel() > 0;
  const at::TensorOptions dw_options = dw.options();
  Tensor dw_sum;
  if (plain_sum) {
    dw_sum = at::empty({G.Cout, G.K()}, dw_options.memory_format(at::MemoryFormat::Contiguous));
    dw_target = matrix(dw_sum);
    dw.reset();
  }
  NhwcTiles x{input, Bw, input.scalar_type()}, dy{grad_output, Bw, input.scalar_type()};
  const bool views = view_columns(G, input.scalar_type());
  Tensor cols_buffer = views || input.numel() == 0 ? Tensor() : at::empty({Bw * G.L(), G.K()}, input.options());
  for (int64_t b0 = 0; b0 < G.N && input.numel() > 0; b0 += Bw) {
    const int64_t nb = std::min(Bw, G.N - b0);
    const Tensor dy_rows = rows_view(dy.read(b0, nb));
    const Tensor x_tile = x.read(b0, nb);
    for (int64_t g = 0; g < G.groups; ++g) {
      const Matrix cols = columns(x_tile, G, nb, g, cols_buffer);
      matmul(matrix(dy_rows.narrow(1, g * G.Coutg(), G.Coutg()).t()), cols,
             dw_target.narrow_rows(g * G.Coutg(), G.Coutg()), b0 > 0);
    }
  }
  cols_buffer.reset(), x.staging.reset(), dy.staging.reset();
  if (plain_sum) {
    dw = at::empty({G.Cout, G.Cg(), G.kh, G.kw}, dw_options.memory_format(conv_grad_weight_format(input, weight)));
    nhwc_view(dw).copy_(dw_sum.view({G.Cout, G.kh, G.kw, G.Cg()}));
    dw_sum.reset();
  }
  return dw.to(weight.scalar_type());
}

// Whether dX is made as the full correlation itself: the forward conv of dY, padded by (k - 1) d - p,
// with the rotated, in/out-transposed kernels (rotated_kernels). Each dX value is then one GEMM's
// float32 sum over all its (tap, output channel) terms, rounded once, with no float32 column
// gradients and col2im. Chosen for 16-bit dtypes on oneDNN's matmul (measured faster than col2im's
// float32 passes there), at stride 1 (a strided conv's dY would need zeros inserted), a padding of
// at most (k - 1) d on each side (more would crop dY), and kCorrelationMinChannels input channels
// per group (the GEMM's columns: a 3-channel stem's dX took twice col2im's time this way).
constexpr int64_t kCorrelationMinChannels = 16;

bool grad_input_by_correlation(const ConvGeometry& G, at::ScalarType t) {
  return is_reduced_floating(t) && low_precision_gemm(t) == LowPrecisionGemm::onednn && G.sh == 1 && G.sw == 1 &&
         G.Cg() >= kCorrelationMinChannels &&
         std::max(G.pt, G.pb) <= (G.kh - 1) * G.dh && std::max(G.pl, G.pr) <= (G.kw - 1) * G.dw;
}

// W'[g Cg + c, o, i, j] = W[g Coutg + o, c, kh - 1 - i, kw - 1 - j]: each group's kernels rotated by
// 180 degrees, with input and output channels exchanged, as a (C, Cout / groups, kh, kw) weight.
// A loop, not at::flip: flip's generic kernel took 9 ms of a ResNet-18 step on its 13 weights.
Tensor rotated_kernels(const Tensor& weight, const ConvGeometry& G) {
  Tensor rotated = at::empty({G.C, G.Coutg(), G.kh, G.kw}, weight.options());
  const int64_t taps = G.kh * G.kw;
  MANUAL_OPS_DISPATCH_FLOATING(weight.scalar_type(), "rotated_kernels", [&] {
    const auto w = weight.accessor<const scalar_t, 4>();
    scalar_t* out = rotated.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, G.C, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t g = c / G.Cg(), cg = c % G.Cg();
        for (int64_t o = 0; o < G.Coutg(); ++o)
          for (int64_t i = 0; i < G.kh; ++i)
            for (int64_t j = 0; j < G.kw; ++j)
              out[(c * G.Coutg() + o) * taps + i * G.kw + j] = w[g * G.Coutg() + o][cg][G.kh - 1 - i][G.kw - 1 - j];
      }
    });
  });
  return rotated;
}

// dX as the full correlation (grad_input_by_correlation): im2col_forward over dY, padded by
// (k - 1) d - p, with the rotated kernels, into grad_input (allocated, of the input's size and layout).
void correlation_grad_input(const Tensor& grad_output, const Tensor& weight, const ConvGeometry& G,
                            const Tensor& grad_input) {
  const int64_t ph = (G.kh - 1) * G.dh, pw = (G.kw - 1) * G.dw;
  const Tensor rotated = rotated_kernels(weight, G);
  const ConvGeometry correlation = conv_geometry("conv2d_backward", grad_output, rotated, {1, 1},
                                                 {ph - G.pt, pw - G.pl, ph - G.pb, pw - G.pr}, {G.dh, G.dw}, G.groups);
  im2col_forward(grad_output, rotated, Tensor(), correlation, kBackwardBudgetBytes, grad_input);
}

// Backward, from the chain rule through Y = cols @ W^T + b:
//   dW_g   = dY_g^T @ cols_g                       (correlation of the padded input with dY)
//   dcols  = dY_g @ W_g,  dX = col2im(dcols)       (= full correlation of zero-inserted, padded dY
//                                                     with the 180-degree-rotated, in/out-transposed W,
//                                                     computed as such where grad_input_by_correlation)
//   db[co] = sum over n, oh, ow of dY[n, co, oh, ow]
// dX and then dW are made in two passes over the tiles of samples, so that the scratch of one
// (dX's tap-order weight and float32 tiles) is freed before the other's (dW's sum, the column
// matrix) is allocated, and dW itself, where it is a copy of its sum, after the GEMMs' scratch is
// freed: a training step's peak memory is reached here.
std::tuple<Tensor, Tensor, Tensor> conv2d_backward(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                   IntArrayRef dilation, int64_t groups,
                                                   std::array<bool, 3> output_mask) {
  const char* op = "conv2d_backward";
  at::AutoDispatchBelowADInplaceOrView guard;
  const ConvGeometry G = conv_geometry(op, input, weight, stride, padding, dilation, groups);
  const std::array<int64_t, 4> out_size{G.N, G.out_channels(), G.OH, G.OW};
  TORCH_CHECK(grad_output.sizes() == IntArrayRef(out_size), op, ": expected grad_output of size ", IntArrayRef(out_size),
              ", but got grad_output of size ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);

  Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[2]) grad_bias = G.C == 0 ? at::zeros({G.Cout}, weight.options()) : grad_output.sum({0, 2, 3});
  const bool winograd = input.numel() > 0 && use_winograd(G, input.scalar_type());
  if (output_mask[0]) {
    grad_input = at::empty({G.N, G.C, G.H, G.W}, input.options().memory_format(conv_memory_format(input, weight)));
    if (winograd) {  // dX = the correlation of dY, padded by 2 - p, with the rotated, in/out-transposed kernels
      winograd_tiles(grad_output, grad_input, weight, true, 2 - G.pt, 2 - G.pl, Tensor(), true);
    } else if (input.numel() > 0 && grad_input_by_correlation(G, input.scalar_type())) {
      correlation_grad_input(grad_output, weight, G, grad_input);
    } else if (input.numel() > 0) {
      im2col_grad_input(grad_output, weight, G, grad_input);
    }
  }
  if (output_mask[1]) {
    grad_weight = winograd ? winograd_grad_weight_tiles(input, grad_output, weight, G)
                           : im2col_grad_weight(grad_output, input, weight, G);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

// Kept per thread between calls up to kBackwardBudgetBytes (grown, never shrunk), as oneDNN keeps its
// scratchpad: a small conv's scratch was otherwise fresh memory on every call (glibc hands the freed
// block back to the OS), and its page faults made a 16->16 3x3 conv at 8x8, batch 64, 1.7 times as slow
// (forward and backward, Sapphire Rapids). Larger scratch is allocated per call. Made outside any
// inference mode, so that a buffer first made inside one is an ordinary tensor afterwards.
Tensor thread_scratch(int64_t numel, at::TensorOptions options) {
  if (numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(options.dtype()))) > kBackwardBudgetBytes)
    return at::empty({numel}, options);
  thread_local Tensor buffer;
  if (!buffer.defined() || buffer.numel() < numel || buffer.dtype() != options.dtype()) {
    c10::InferenceMode outside(false);
    buffer = at::empty({numel}, options);
  }
  return buffer.narrow(0, 0, numel);
}

TORCH_LIBRARY_IMPL(manual_ops, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward);
  m.impl("conv2d_backward", &conv2d_backward);
}

}  // namespace manual_ops
