"""conv2d: the autograd wiring around ``manual_ops::conv2d_forward`` / ``conv2d_backward``."""
import torch

from .._utils import applier, memory_format_of, pair, register_autograd
from ._bilinear import bilinear_backward_tangent, bilinear_double_backward, bilinear_sum
from ._tangents import output_meta, zeros_for_missing
from ._vmap import fold, out_dims_of, unfold

_ops = torch.ops.manual_ops


def _output_hw(input, weight, stride, padding, dilation):
    (kh, kw), (H, W) = weight.shape[2:], input.shape[2:]
    oh = (H + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (W + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _conv_memory_format(input, weight):
    """Mirrors ``conv_memory_format`` in csrc/common.h: channels-last when the input or the weight is."""
    channels_last = memory_format_of(input) == torch.channels_last or memory_format_of(weight) == torch.channels_last
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.register_fake("manual_ops::conv2d_forward")
def _conv2d_forward_fake(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "conv2d: expected 4-D input and weight")
    oh, ow = _output_hw(input, weight, stride, padding, dilation)
    fmt = _conv_memory_format(input, weight)
    out_channels = 0 if input.shape[1] == 0 else weight.shape[0]  # torch's rule, as ConvGeometry::out_channels
    return torch.empty((input.shape[0], out_channels, oh, ow), dtype=input.dtype, device=input.device,
                       memory_format=fmt)


@torch.library.register_fake("manual_ops::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    fmt = _conv_memory_format(input, weight)
    # as csrc/common.h's conv_grad_weight_format: a 1x1 kernel's gradient is laid out as the weight
    weight_fmt = memory_format_of(weight) if weight.shape[2:] == (1, 1) else fmt
    grad_input = torch.empty_like(input, memory_format=fmt) if output_mask[0] else None
    grad_weight = torch.empty_like(weight, memory_format=weight_fmt) if output_mask[1] else None
    grad_bias = grad_output.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


class Conv2dFunction(torch.autograd.Function):
    """conv2d whose backward is the hand-written ``manual_ops::conv2d_backward``.

    ``apply(input, weight, bias, stride, padding, dilation, groups)`` takes a 4-D input,
    2-tuples for stride and dilation, and a 4-tuple padding (top, left, bottom, right).
    The backward is itself differentiable (:class:`Conv2dBackward`), and ``jvp`` gives
    forward-mode AD: ``conv(dx, w) + conv(x, dw) + db``.
    """

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return _ops.conv2d_forward(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.output_size = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grad_input, grad_weight, grad_bias = Conv2dBackward.apply(grad_output, input, weight, *ctx.conv_args, mask)
        return grad_input, grad_weight, grad_bias, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_bias, *_):
        input, weight = ctx.saved_tensors
        # conv2d's own applier: under torch.func (jacfwd, hessian) the tangents are vmapped and differentiated
        return bilinear_sum(lambda x, w, b: _conv2d_apply(x, w, b, *ctx.conv_args), input, weight, d_input,
                            d_weight, d_bias, ctx.output_size, 1)

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
        x_bdim, w_bdim, b_bdim = in_dims[:3]
        B = info.batch_size
        if w_bdim is None and b_bdim is None:  # fold into N: the samples of all slices in one batch
            output = _conv2d_apply(fold(input, x_bdim, B, 0), weight, bias, stride, padding, dilation, groups)
            return unfold(output, 0, B), 0
        # fold into groups: slice b's channels are groups b*groups.. of one grouped convolution
        output = _conv2d_apply(fold(input, x_bdim, B, 1), fold(weight, w_bdim, B, 0), fold(bias, b_bdim, B, 0),
                               stride, padding, dilation, B * groups)
        return unfold(output, 1, B), 1


_conv2d_apply = applier(Conv2dFunction, _ops.conv2d_forward, autocast_to="lower")


class Conv2dBackward(torch.autograd.Function):
    """``manual_ops::conv2d_backward`` as a differentiable function of (grad_output, input, weight).

    ``apply(grad_output, input, weight, stride, padding, dilation, groups, output_mask)``. Its
    backward is the bilinear rule of :mod:`manual_ops.ops._bilinear`, made of conv2d's own
    forward and backward ops.
    """

    @staticmethod
    def forward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
        return _ops.conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, weight, stride, padding, dilation, groups, output_mask = inputs
        ctx.save_for_backward(grad_output, input, weight)
        ctx.save_for_forward(grad_output, input, weight)
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.output_mask = output_mask
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        grad_output, input, weight = ctx.saved_tensors
        args = ctx.conv_args
        grads = bilinear_double_backward(
            lambda x, w, b: Conv2dFunction.apply(x, w, b, *args),
            lambda gy, x, w, mask: Conv2dBackward.apply(gy, x, w, *args, mask),
            ctx.needs_input_grad, grad_output, input, weight, ggx, ggw, ggb, 1)
        return *grads, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, d_weight, *_):
        grad_output, input, weight = ctx.saved_tensors
        args = ctx.conv_args
        tangents = bilinear_backward_tangent(lambda gy, x, w, mask: Conv2dBackward.apply(gy, x, w, *args, mask),
                                             ctx.output_mask, grad_output, input, weight, d_grad_output, d_input,
                                             d_weight)
        return zeros_for_missing(tangents, ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, weight, stride, padding, dilation, groups, output_mask):
        gy_bdim, x_bdim, w_bdim = in_dims[:3]
        B = info.batch_size
        if w_bdim is None and list(output_mask) == [True, False, False]:  # fold into N: grad_input is per sample
            grad_input = Conv2dBackward.apply(fold(grad_output, gy_bdim, B, 0), fold(input, x_bdim, B, 0), weight,
                                              stride, padding, dilation, groups, output_mask)[0]
            return (unfold(grad_input, 0, B), None, None), (0, None, None)
        # fold into groups (as the forward's): the grouped conv's grad_weight and grad_bias are the slices' stacked
        grad_input, grad_weight, grad_bias = Conv2dBackward.apply(
            fold(grad_output, gy_bdim, B, 1), fold(input, x_bdim, B, 1), fold(weight, w_bdim, B, 0), stride, padding,
            dilation, B * groups, output_mask)
        grads = (unfold(grad_input, 1, B), unfold(grad_weight, 0, B), unfold(grad_bias, 0, B))
        return grads, out_dims_of(grads, (1, 0, 0))


register_autograd("manual_ops::conv2d_forward", Conv2dFunction)


def _padding(padding, weight, stride, dilation):
    """Normalises conv2d's padding to (top, left, bottom, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if stride != (1, 1):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        if weight.dim() != 4:
            raise RuntimeError(f"conv2d: expected a 4-D weight, but got weight of size {list(weight.shape)}")
        # Total padding d*(k-1); as in torch, an odd total puts the extra row/column at the end.
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = pair(padding, "padding")
    return (ph, pw, ph, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""Applies a 2-D convolution, with a hand-written backward. Same as :func:`torch.nn.functional.conv2d`.

    Args:
        input: input tensor of shape :math:`(N, C_{in}, H, W)` or :math:`(C_{in}, H, W)`.
        weight: filters of shape :math:`(C_{out}, C_{in}/groups, kH, kW)`.
        bias: optional bias of shape :math:`(C_{out})`. Default: ``None``.
        stride: int or (sH, sW). Default: 1.
        padding: int, (pH, pW), ``'valid'`` or ``'same'``. Default: 0.
        dilation: int or (dH, dW). Default: 1.
        groups: number of blocked connections from input to output channels. Default: 1.

    Shape:
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`, where
          :math:`H_{out} = \lfloor (H + 2 pH - dH (kH - 1) - 1) / sH \rfloor + 1`, likewise :math:`W_{out}`.
    """
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}"
        )
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = _padding(padding, weight, stride, dilation)
    if input.dim() == 3:
        return _conv2d_apply(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    return _conv2d_apply(input, weight, bias, stride, padding, dilation, groups)
