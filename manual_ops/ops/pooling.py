"""Pooling: the autograd wiring around ``manual_ops::{max,avg,adaptive_avg}_pool2d_{forward,backward}``."""
import torch

from .._utils import applier, below_autograd, fast_apply, memory_format_of, register_autograd
from ._vmap import fold, unfold

_ops = torch.ops.manual_ops
# The forward ops' autograd kernels are the Functions below (register_autograd), which call them past it.
_max_forward_op = below_autograd(_ops.max_pool2d_forward)
_avg_forward_op = below_autograd(_ops.avg_pool2d_forward)
_adaptive_forward_op = below_autograd(_ops.adaptive_avg_pool2d_forward)


def _pool_pair(value, name: str, op: str, omittable: bool = False) -> tuple[int, int]:
    """An int or 1-2 ints as a 2-tuple; torch's message otherwise (``omittable``: ``None``/``[]`` -> ``None``)."""
    if omittable and (value is None or (isinstance(value, (list, tuple)) and len(value) == 0)):
        return None
    values = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or not all(isinstance(v, int) for v in values):
        raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of ints, but got {value!r}")
    if len(values) not in (1, 2):
        if name == "dilation":
            raise RuntimeError(f"{op}: dilation must be either a single int, or a tuple of two ints")
        omitted = "omitted, " if omittable else ""
        raise RuntimeError(f"{op}: {name} must either be {omitted}a single int, or a tuple of two ints")
    return (values[0], values[-1])


def _output_size(size, k, s, p, d, ceil_mode):
    """torch's pooling output length; mirrors ``pool_output_size`` in csrc/pooling.h."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pooled_like(input, oh, ow, dtype=None):
    """An empty tensor of input's batch/channel sizes, spatial size (oh, ow), in input's layout."""
    return torch.empty((*input.shape[:-2], oh, ow), dtype=dtype or input.dtype, device=input.device,
                       memory_format=memory_format_of(input))


def _check_pool_fake(input, name):
    torch._check(input.dim() in (3, 4), lambda: f"{name}: expected a 3-D or 4-D input, but got {input.dim()}-D")


@torch.library.register_fake("manual_ops::max_pool2d_forward")
def _max_pool2d_forward_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    _check_pool_fake(input, "max_pool2d")
    oh, ow = (_output_size(input.shape[-2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
              for i in range(2))
    return _pooled_like(input, oh, ow), _pooled_like(input, oh, ow, torch.int64)


@torch.library.register_fake("manual_ops::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices):
    return torch.empty_like(input, memory_format=memory_format_of(input))


@torch.library.register_fake("manual_ops::avg_pool2d_forward")
def _avg_pool2d_forward_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _check_pool_fake(input, "avg_pool2d")
    oh, ow = (_output_size(input.shape[-2 + i], kernel_size[i], stride[i], padding[i], 1, ceil_mode)
              for i in range(2))
    return _pooled_like(input, oh, ow)


@torch.library.register_fake("manual_ops::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override):
    return torch.empty_like(input, memory_format=memory_format_of(input))


@torch.library.register_fake("manual_ops::adaptive_avg_pool2d_forward")
def _adaptive_avg_pool2d_forward_fake(input, output_size):
    _check_pool_fake(input, "adaptive_avg_pool2d")
    return _pooled_like(input, *output_size)


@torch.library.register_fake("manual_ops::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return torch.empty_like(input, memory_format=memory_format_of(input))


def _fold_planes(info, in_dims, *tensors):
    """The tensors' vmapped dimension folded into their first (N, or C of a 3-D input): pooling works
    plane by plane, so slice b's planes are just more planes."""
    return [fold(t, d, info.batch_size, 0) for t, d in zip(tensors, in_dims)]


def _gather_windows(values, indices):
    """``values[..., indices]`` per plane: the value at each window's saved argmax (0 where a
    window lies wholly in the padding, index -1). The adjoint of max_pool2d_backward. (``reshape``, not
    ``flatten``: gradcheck's batched-grad check runs it under the legacy vmap, which has no rule for flatten.)"""
    flat = indices.reshape(*indices.shape[:-2], -1)
    gathered = values.reshape(*values.shape[:-2], -1).gather(-1, flat.clamp(min=0)).masked_fill(flat < 0, 0)
    return gathered.view(indices.shape)


class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d returning ``(output, indices)``, whose backward is ``manual_ops::max_pool2d_backward``.

    ``apply(input, kernel_size, stride, padding, dilation, ceil_mode)`` takes a 3-D or 4-D input
    and 2-tuples; ``indices`` is not differentiable. The backward is differentiable
    (:class:`MaxPool2dBackward`); the forward-mode tangent is ``dx`` gathered at the argmax.
    """

    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        return _max_forward_op(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])
        ctx.save_for_forward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_output, grad_indices):
        input, indices = ctx.saved_tensors
        grad_input = _max_backward(grad_output, input, indices) if ctx.needs_input_grad[0] else None
        return grad_input, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, *_):
        (indices,) = ctx.saved_tensors
        return _gather_windows(d_input, indices), None

    @staticmethod
    def vmap(info, in_dims, input, kernel_size, stride, padding, dilation, ceil_mode):
        # fold into N (planes); the indices are positions within a plane, so they are unchanged
        output, indices = _max_pool2d_apply(*_fold_planes(info, in_dims, input), kernel_size, stride, padding,
                                            dilation, ceil_mode)
        return (unfold(output, 0, info.batch_size), unfold(indices, 0, info.batch_size)), (0, 0)


_max_pool2d_apply = applier(MaxPool2dFunction)


class MaxPool2dBackward(torch.autograd.Function):
    """``manual_ops::max_pool2d_backward`` as a differentiable function: ``apply(grad_output, input,
    indices)``. Linear in grad_output (a scatter-add to the argmax), so its grad w.r.t.
    grad_output gathers at the argmax; w.r.t. the input it is zero almost everywhere."""

    @staticmethod
    def forward(grad_output, input, indices):
        return _ops.max_pool2d_backward(grad_output, input, indices)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])
        ctx.save_for_forward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad_grad_input):
        (indices,) = ctx.saved_tensors
        return _gather_windows(grad_grad_input, indices), None, None

    @staticmethod
    def jvp(ctx, d_grad_output, *_):
        # linear in grad_output; the input's tangent contributes zero almost everywhere (as in backward)
        input, indices = ctx.saved_tensors
        return None if d_grad_output is None else _max_backward(d_grad_output, input, indices)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, indices):
        # fold into N (planes), as the forward's
        return unfold(_max_backward(*_fold_planes(info, in_dims, grad_output, input, indices)), 0, info.batch_size), 0


_max_backward = fast_apply(MaxPool2dBackward, _ops.max_pool2d_backward)
register_autograd("manual_ops::max_pool2d_forward", MaxPool2dFunction)


class AvgPool2dFunction(torch.autograd.Function):
    """avg_pool2d whose backward is ``manual_ops::avg_pool2d_backward``.

    ``apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)``.
    Linear, so the forward-mode tangent is the pooled ``dx``; the backward is differentiable
    (:class:`AvgPool2dBackward`).
    """

    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return _avg_forward_op(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                       divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.pool_args = inputs[1:]

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = (_avg_backward(grad_output, input, *ctx.pool_args) if ctx.needs_input_grad[0]
                      else None)
        return grad_input, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, *_):
        return _avg_pool2d_apply(d_input, *ctx.pool_args)  # differentiable, vmappable (jacfwd, hessian)

    @staticmethod
    def vmap(info, in_dims, input, *pool_args):
        # fold into N (planes)
        return unfold(_avg_pool2d_apply(*_fold_planes(info, in_dims, input), *pool_args), 0, info.batch_size), 0


_avg_pool2d_apply = applier(AvgPool2dFunction)


class AvgPool2dBackward(torch.autograd.Function):
    """``manual_ops::avg_pool2d_backward`` as a differentiable function: ``apply(grad_output, input,
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)``. It is the
    transpose of the (linear) average pooling, so its grad w.r.t. grad_output is average pooling
    with the same divisors; it does not depend on the input's values."""

    @staticmethod
    def forward(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return _ops.avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.pool_args = inputs[2:]
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_grad_input):
        return AvgPool2dFunction.apply(grad_grad_input, *ctx.pool_args), None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_grad_output, *_):
        # linear in grad_output, independent of the input's values
        return None if d_grad_output is None else _avg_backward(d_grad_output, *ctx.saved_tensors, *ctx.pool_args)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, *pool_args):
        # fold into N (planes), as the forward's
        grad_input = _avg_backward(*_fold_planes(info, in_dims, grad_output, input), *pool_args)
        return unfold(grad_input, 0, info.batch_size), 0

_avg_backward = fast_apply(AvgPool2dBackward, _ops.avg_pool2d_backward)
register_autograd("manual_ops::avg_pool2d_forward", AvgPool2dFunction)


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    """adaptive_avg_pool2d whose backward is ``manual_ops::adaptive_avg_pool2d_backward``.

    ``apply(input, output_size)`` with ``output_size`` a 2-tuple of ints. Linear, so the
    forward-mode tangent is the pooled ``dx``; the backward is differentiable
    (:class:`AdaptiveAvgPool2dBackward`).
    """

    @staticmethod
    def forward(input, output_size):
        return _adaptive_forward_op(input, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.output_size = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = _adaptive_backward(grad_output, input) if ctx.needs_input_grad[0] else None
        return grad_input, None

    @staticmethod
    def jvp(ctx, d_input, _):
        return _adaptive_avg_pool2d_apply(d_input, ctx.output_size)  # differentiable, vmappable (jacfwd, hessian)

    @staticmethod
    def vmap(info, in_dims, input, output_size):
        # fold into N (planes)
        output = _adaptive_avg_pool2d_apply(*_fold_planes(info, in_dims, input), output_size)
        return unfold(output, 0, info.batch_size), 0


_adaptive_avg_pool2d_apply = applier(AdaptiveAvgPool2dFunction)


class AdaptiveAvgPool2dBackward(torch.autograd.Function):
    """``manual_ops::adaptive_avg_pool2d_backward`` as a differentiable function: ``apply(grad_output,
    input)``. The transpose of adaptive average pooling, so its grad w.r.t. grad_output is
    adaptive average pooling to grad_output's size; it does not depend on the input's values."""

    @staticmethod
    def forward(grad_output, input):
        return _ops.adaptive_avg_pool2d_backward(grad_output, input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.output_size = list(inputs[0].shape[-2:])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_grad_input):
        return AdaptiveAvgPool2dFunction.apply(grad_grad_input, ctx.output_size), None

    @staticmethod
    def jvp(ctx, d_grad_output, _):
        # linear in grad_output, independent of the input's values
        return None if d_grad_output is None else _adaptive_backward(d_grad_output, *ctx.saved_tensors)

    @staticmethod
    def vmap(info, in_dims, grad_output, input):
        # fold into N (planes), as the forward's
        grad_input = _adaptive_backward(*_fold_planes(info, in_dims, grad_output, input))
        return unfold(grad_input, 0, info.batch_size), 0


_adaptive_backward = fast_apply(AdaptiveAvgPool2dBackward, _ops.adaptive_avg_pool2d_backward)
register_autograd("manual_ops::adaptive_avg_pool2d_forward", AdaptiveAvgPool2dFunction)


def _max_pool_args(kernel_size, stride, padding, dilation):
    kernel_size = _pool_pair(kernel_size, "kernel_size", "max_pool2d")
    stride = _pool_pair(stride, "stride", "max_pool2d", omittable=True) or kernel_size
    return kernel_size, stride, _pool_pair(padding, "padding", "max_pool2d"), _pool_pair(dilation, "dilation",
                                                                                         "max_pool2d")


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    r"""2-D max pooling returning ``(output, indices)``. Same as
    :func:`torch.nn.functional.max_pool2d_with_indices`; see :func:`max_pool2d`."""
    kernel_size, stride, padding, dilation = _max_pool_args(kernel_size, stride, padding, dilation)
    return _max_pool2d_apply(input, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    r"""Applies 2-D max pooling, with a hand-written backward. Same as :func:`torch.nn.functional.max_pool2d`.

    Padding acts as :math:`-\infty`; a NaN in a window propagates; on ties the first maximum
    (in row-major order) wins. The gradient flows only to each window's maximum, and
    accumulates where windows overlap.

    Args:
        input: input tensor of shape :math:`(N, C, H, W)` or :math:`(C, H, W)`, float32, float64, bfloat16 or float16.
        kernel_size: int or (kH, kW): size of the pooling window.
        stride: int or (sH, sW). Default: ``kernel_size``.
        padding: int or (pH, pW), implicit :math:`-\infty` padding on both sides; at most half
            the kernel size. Default: 0.
        dilation: int or (dH, dW), the spacing between window elements. Default: 1.
        ceil_mode: use ceil instead of floor for the output size; a window must still start
            inside the input or the left padding. Default: ``False``.
        return_indices: also return the int64 flat positions :math:`h \cdot W + w` of the maxima
            within each plane, as :func:`torch.nn.functional.max_unpool2d` takes them. Default: ``False``.

    Shape:
        - Output (and indices): :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})`, where
          :math:`H_{out} = \lfloor (H + 2 pH - dH (kH - 1) - 1 + [\text{ceil\_mode}](sH - 1)) / sH \rfloor + 1`,
          less one if that last window would start at or past :math:`H + pH`; likewise :math:`W_{out}`.
          A channels-last input gives channels-last outputs.
    """
    output, indices = max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
    return (output, indices) if return_indices else output


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    r"""Applies 2-D average pooling, with a hand-written backward. Same as :func:`torch.nn.functional.avg_pool2d`.

    Each output is its window's sum divided by ``divisor_override`` if given; else by the window
    size including the zero padding (``count_include_pad=True``) or by the number of input
    elements in it. The overhang that ``ceil_mode`` adds past the padding is never counted.
    The backward spreads each output's gradient, divided the same way, evenly over its window.

    Args:
        input: input tensor of shape :math:`(N, C, H, W)` or :math:`(C, H, W)`, float32, float64, bfloat16 or float16.
        kernel_size: int or (kH, kW): size of the pooling window.
        stride: int or (sH, sW). Default: ``kernel_size``.
        padding: int or (pH, pW), implicit zero padding on both sides; at most half the kernel size. Default: 0.
        ceil_mode: use ceil instead of floor for the output size. Default: ``False``.
        count_include_pad: count the zero padding in the divisor. Default: ``True``.
        divisor_override: if given (non-zero), the divisor of every window. Default: ``None``.

    Shape:
        - Output: :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})`, with
          :math:`H_{out}, W_{out}` as for :func:`max_pool2d` with dilation 1.
    """
    kernel_size = _pool_pair(kernel_size, "kernel_size", "avg_pool2d")
    stride = _pool_pair(stride, "stride", "avg_pool2d", omittable=True) or kernel_size
    padding = _pool_pair(padding, "padding", "avg_pool2d")
    return _avg_pool2d_apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override)


def adaptive_avg_pool2d(input, output_size):
    r"""Applies 2-D adaptive average pooling, with a hand-written backward.
    Same as :func:`torch.nn.functional.adaptive_avg_pool2d`.

    Output :math:`(o_h, o_w)` averages rows :math:`\lfloor o_h H / H_{out} \rfloor` to
    :math:`\lceil (o_h + 1) H / H_{out} \rceil - 1` and likewise columns; windows overlap when
    :math:`H_{out}` does not divide :math:`H`. The backward spreads each output's gradient
    evenly over its window.

    Args:
        input: input tensor of shape :math:`(N, C, H, W)` or :math:`(C, H, W)`, float32, float64, bfloat16 or float16.
        output_size: int or (H_out, W_out); ``None`` keeps that dimension of the input.

    Shape:
        - Output: :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})`.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    elif input.dim() <= len(output_size):  # torch's _list_with_default, before the op checks the rank
        raise ValueError(f"Input dimension should be at least {len(output_size) + 1}")
    output_size = list(output_size)
    if len(output_size) != 2:
        raise RuntimeError("adaptive_avg_pool2d: output_size must be 2")
    output_size = [input.shape[-2 + i] if v is None else v for i, v in enumerate(output_size)]
    return _adaptive_avg_pool2d_apply(input, output_size)
