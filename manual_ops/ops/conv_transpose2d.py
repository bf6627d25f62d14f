"""conv_transpose2d from conv2d's own ops: the transposed convolution is the adjoint of conv2d in its input.

With the weight read as a conv2d weight (C_in is its output channels), conv_transpose2d(x, W) is conv2d's grad_input
for grad_output x: ``manual_ops::conv2d_backward``'s dX pass (the full correlation of the zero-inserted, padded x
with the rotated, in/out-transposed kernels). It is bilinear in (x, W), and its backward is conv2d's forward and dW
pass again: grad_x = conv2d(grad_y, W), grad_W = conv2d's grad_weight with grad_y as the input and x as the output
gradient, grad_b = the sum of grad_y. Derivation: docs/derivations.md, "conv_transpose2d".
"""
import torch

from .._utils import KERNEL_DTYPES, _autocast_cast, applier, memory_format_of, pair
from ._bilinear import bilinear_sum
from ._vmap import fold, unfold
from .conv2d import Conv2dBackward, Conv2dFunction

_ops = torch.ops.manual_ops


def _geometry(input, weight, stride, padding, output_padding, dilation):
    """The output's (H, W), and the rows and columns of zeros to append to the input: conv2d's output size for an
    input of the transposed conv's output size is H + floor(output_padding / stride), more than H when the output
    padding reaches a stride (allowed below the dilation); the extra rows of conv2d's output gradient are zeros."""
    out, extra = [], []
    for i in range(2):
        k, n = weight.shape[2 + i], input.shape[2 + i]
        out.append((n - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k - 1) + output_padding[i] + 1)
        extra.append(output_padding[i] // stride[i])
    return tuple(out), tuple(extra)


def _padded(t, extra):
    return t if extra == (0, 0) else torch.nn.functional.pad(t, (0, extra[1], 0, extra[0]))


class ConvTranspose2dFunction(torch.autograd.Function):
    """conv_transpose2d on conv2d's ops (see the module docstring).

    ``apply(input, weight, bias, stride, padding, output_padding, dilation, groups)`` takes a 4-D input and
    2-tuples. The backward runs :class:`~manual_ops.ops.conv2d.Conv2dFunction` and
    :class:`~manual_ops.ops.conv2d.Conv2dBackward`, so it differentiates again; ``jvp`` is the bilinear rule.
    """

    @staticmethod
    def forward(input, weight, bias, stride, padding, output_padding, dilation, groups):
        (oh, ow), extra = _geometry(input, weight, stride, padding, output_padding, dilation)
        # conv2d's dX reads its input's size and layout only: an unwritten tensor of the output's size
        shape_of = torch.empty((input.shape[0], weight.shape[1] * groups, oh, ow), dtype=input.dtype,
                               memory_format=memory_format_of(input))
        output = _ops.conv2d_backward(_padded(input, extra), shape_of, weight, stride, padding * 2, dilation, groups,
                                      [True, False, False])[0]
        if bias is not None:
            output.add_(bias.view(1, -1, 1, 1))
        return output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, stride, padding, output_padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.options = (stride, padding, output_padding, dilation, groups)
        ctx.output_size = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, padding, output_padding, dilation, groups = ctx.options
        _, extra = _geometry(input, weight, stride, padding, output_padding, dilation)
        needs = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs[0]:
            grad_input = Conv2dFunction.apply(grad_output, weight, None, stride, padding * 2, dilation, groups)
            if extra != (0, 0):  # less the rows and columns of the zeros appended, laid out as the input
                grad_input = grad_input[:, :, :input.shape[2], :input.shape[3]].contiguous(
                    memory_format=memory_format_of(input))
        if needs[1]:
            grad_weight = Conv2dBackward.apply(_padded(input, extra), grad_output, weight, stride, padding * 2,
                                               dilation, groups, [False, True, False])[1]
        if needs[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_bias, *_):
        input, weight = ctx.saved_tensors
        return bilinear_sum(lambda x, w, b: _conv_transpose2d_apply(x, w, b, *ctx.options), input, weight, d_input,
                            d_weight, d_bias, ctx.output_size, 1)

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, stride, padding, output_padding, dilation, groups):
        x_bdim, w_bdim, b_bdim = in_dims[:3]
        B = info.batch_size
        options = (stride, padding, output_padding, dilation)
        if w_bdim is None and b_bdim is None:  # fold into N: the samples of all slices in one batch
            output = _conv_transpose2d_apply(fold(input, x_bdim, B, 0), weight, bias, *options, groups)
            return unfold(output, 0, B), 0
        # fold into groups: slice b's input channels and kernels are groups b*groups.. of one grouped call
        output = _conv_transpose2d_apply(fold(input, x_bdim, B, 1), fold(weight, w_bdim, B, 0),
                                         fold(bias, b_bdim, B, 0), *options, B * groups)
        return unfold(output, 1, B), 1


_conv_transpose2d_apply = applier(ConvTranspose2dFunction)


def _check(input, weight, bias, stride, output_padding, dilation, groups):
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise RuntimeError(f"conv_transpose2d: expected {name} to be float32, float64, bfloat16 or float16, but "
                               f"got {t.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"conv_transpose2d: expected input and {name} to have the same dtype, but got input of "
                               f"dtype {input.dtype} and {name} of dtype {t.dtype}")
    if input.dim() not in (3, 4):
        raise RuntimeError("Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input of size: "
                           f"{list(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(f"conv_transpose2d: expected a 4-D weight (in_channels, out_channels/groups, kH, kW), but "
                           f"got weight of size {list(weight.shape)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, but "
                           f"got weight of size [{list(weight.shape)}] instead")
    if input.shape[-3] != weight.shape[0]:
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight.shape)}, expected input"
                           f"{list(input.shape)} to have {weight.shape[0]} channels, but got {input.shape[-3]} "
                           "channels instead")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[1] * groups):
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
                           f"with {weight.shape[1] * groups} elements, but got bias of size {list(bias.shape)} instead")
    for i, name in enumerate(("height", "width")):
        if not (output_padding[i] < stride[i] or output_padding[i] < dilation[i]):
            raise RuntimeError(
                "output padding must be smaller than either stride or dilation, but got output_padding_height: "
                f"{output_padding[0]} output_padding_width: {output_padding[1]} stride_height: {stride[0]} "
                f"stride_width: {stride[1]} dilation_height: {dilation[0]} dilation_width: {dilation[1]}")


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    r"""Applies a 2-D transposed convolution, with backward passes from conv2d's hand-written kernels. Same as
    :func:`torch.nn.functional.conv_transpose2d`.

    Args:
        input: input tensor of shape :math:`(N, C_{in}, H, W)` or :math:`(C_{in}, H, W)`.
        weight: filters of shape :math:`(C_{in}, C_{out}/groups, kH, kW)`.
        bias: optional bias of shape :math:`(C_{out})`. Default: ``None``.
        stride: int or (sH, sW). Default: 1.
        padding: int or (pH, pW): ``dilation * (kernel_size - 1) - padding`` zeros pad each side of the input.
            Default: 0.
        output_padding: int or (oH, oW), added to one side of the output's size; smaller than the stride or the
            dilation. Default: 0.
        groups: number of blocked connections from input to output channels. Default: 1.
        dilation: int or (dH, dW). Default: 1.

    Shape:
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`, where
          :math:`H_{out} = (H - 1) sH - 2 pH + dH (kH - 1) + oH + 1`, likewise :math:`W_{out}`.
    """
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    output_padding, dilation = pair(output_padding, "output_padding"), pair(dilation, "dilation")
    _check(input, weight, bias, stride, output_padding, dilation, groups)
    device = input.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        # in autocast's lower-precision list, as conv2d: its casts, then the call below autocast
        input, weight, bias = _autocast_cast((input, weight, bias), device, "lower")
        with torch.autocast(device, enabled=False):
            return conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    args = (weight, bias, stride, padding, output_padding, dilation, groups)
    if input.dim() == 3:
        return _conv_transpose2d_apply(input.unsqueeze(0), *args).squeeze(0)
    return _conv_transpose2d_apply(input, *args)
