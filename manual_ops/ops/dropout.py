"""dropout and dropout2d: the autograd wiring around ``manual_ops::dropout_forward`` / ``dropout_`` /
``dropout_backward``, and the functional wrappers.

The mask is drawn here, from torch's generator, exactly as torch's CPU dropout draws it (``bernoulli_(1 - p)``
on ``empty_like(input)``, or on an (N, C, 1, ...) tensor for feature dropout; nothing for p = 1), so that
``torch.manual_seed`` gives the built-in's masks and outputs bit for bit. Forward and backward multiply by
that mask times 1 / (1 - p). Derivation: docs/derivations.md, "Dropout".
"""
import warnings

import torch

from .._utils import applier, below_autograd, check_inplace_allowed, elementwise_layout, fast_apply
from ._vmap import with_batch

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.dropout_forward)


@torch.library.register_fake("manual_ops::dropout_forward")
def _forward_fake(input, mask, p):
    return torch.empty_like(input)


@torch.library.register_fake("manual_ops::dropout_")
def _inplace_fake(self, mask, p):
    return None


@torch.library.register_fake("manual_ops::dropout_backward")
def _backward_fake(grad_output, mask, p):
    return torch.empty_like(elementwise_layout(grad_output, mask.expand(grad_output.shape)))


class DropoutFunction(torch.autograd.Function):
    """Dropout whose backward is the hand-written ``manual_ops::dropout_backward``:
    ``apply(input, mask, p, inplace)``, the mask given (it gets no gradient). In place, the input is
    overwritten and returned (marked dirty); the backward needs only the mask. The backward is linear, and
    differentiable (:class:`DropoutBackward`); forward-mode AD's tangent is ``dropout_backward(d_input, mask, p)``.
    """

    @staticmethod
    def forward(input, mask, p, inplace):
        if not inplace:
            return _forward_op(input, mask, p)
        _ops.dropout_(input, mask, p)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, mask, ctx.p, ctx.inplace = inputs
        if ctx.inplace:
            ctx.mark_dirty(input)
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad_output):
        return _backward_apply(grad_output, ctx.saved_tensors[0], ctx.p), None, None, None

    @staticmethod
    def jvp(ctx, d_input, *_):
        d_output = _backward_apply(d_input, ctx.saved_tensors[0], ctx.p)
        return d_input.copy_(d_output) if ctx.inplace else d_output

    @staticmethod
    def vmap(info, in_dims, input, mask, p, inplace):
        # elementwise with a broadcast mask: both get the vmapped dimension first (an expanded view where one
        # is not vmapped; in place, only the input itself can take the result)
        if inplace and in_dims[0] is None:
            raise RuntimeError("vmap: dropout_(self, mask) is not possible because self is not vmapped but the "
                               "mask is (use the out-of-place dropout)")
        B = info.batch_size
        if inplace:
            DropoutFunction.apply(input.movedim(in_dims[0], 0), with_batch(mask, in_dims[1], B), p, True)
            return input, in_dims[0]
        return _function_apply(with_batch(input, in_dims[0], B), with_batch(mask, in_dims[1], B), p, False), 0


_function_apply = applier(DropoutFunction)


class DropoutBackward(torch.autograd.Function):
    """``manual_ops::dropout_backward`` as a differentiable function: ``apply(grad_output, mask, p)`` =
    ``grad_output * mask / (1 - p)``, linear in grad_output (its gradient is itself; the mask gets none)."""

    @staticmethod
    def forward(grad_output, mask, p):
        return _ops.dropout_backward(grad_output, mask, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, mask, ctx.p = inputs
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad):
        return _backward_apply(grad, ctx.saved_tensors[0], ctx.p), None, None

    @staticmethod
    def jvp(ctx, d_grad_output, *_):
        return _backward_apply(d_grad_output, ctx.saved_tensors[0], ctx.p)

    @staticmethod
    def vmap(info, in_dims, grad_output, mask, p):
        B = info.batch_size
        return DropoutBackward.apply(with_batch(grad_output, in_dims[0], B), with_batch(mask, in_dims[1], B), p), 0


_backward_apply = fast_apply(DropoutBackward, _ops.dropout_backward)


def _op_setup_context(ctx, inputs, output):
    _, mask, ctx.p = inputs
    ctx.save_for_backward(mask)


def _op_backward(ctx, grad_output):
    return _backward_apply(grad_output, ctx.saved_tensors[0], ctx.p), None, None


# dropout_forward called directly differentiates like DropoutFunction.
torch.library.register_autograd("manual_ops::dropout_forward", _op_backward, setup_context=_op_setup_context)


def _check_p(p):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _dropout(input, p, training, inplace, mask_shape):
    """Dropout of ``input`` (``p`` checked by the caller) with a mask of ``mask_shape`` (None: the input's own),
    as torch's ``_dropout_impl``."""
    if not training or p == 0 or input.numel() == 0:
        return input  # torch's too: the input itself
    if not input.is_floating_point():
        raise NotImplementedError(f"dropout: expected a floating-point input, but got {input.dtype}")
    if inplace:
        check_inplace_allowed(input)
    if p == 1:  # torch multiplies by zero and draws nothing
        mask = torch.zeros((), dtype=input.dtype, device=input.device)
    elif mask_shape is None:
        mask = torch.empty_like(input).bernoulli_(1 - p)
    else:
        mask = torch.empty(mask_shape, dtype=input.dtype, device=input.device).bernoulli_(1 - p)
    return _function_apply(input, mask, float(p), inplace)


def dropout(input, p=0.5, training=True, inplace=False):
    r"""During training, zeroes each element of ``input`` with probability ``p`` and scales the others by
    :math:`1 / (1 - p)`, with a hand-written backward (the same mask and scale). Same as
    :func:`torch.nn.functional.dropout`, masks included: after ``torch.manual_seed(s)`` both draw the same
    mask, so their outputs and gradients are equal bit for bit.

    Args:
        input: input tensor of any shape.
        p: probability of an element to be zeroed. Default: ``0.5``.
        training: apply dropout if ``True``; else the input itself is returned. Default: ``True``.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    _check_p(p)
    return _dropout(input, p, training, inplace, None)


def dropout2d(input, p=0.5, training=True, inplace=False):
    r"""During training, zeroes each channel (``input[n, c]``) with probability ``p`` and scales the others by
    :math:`1 / (1 - p)`, with a hand-written backward. Same as :func:`torch.nn.functional.dropout2d`, its
    masks, warnings and its treatment of a 3-D input as (N, C, L) included.

    Args:
        input: input tensor of shape :math:`(N, C, H, W)` (or :math:`(N, C, L)`).
        p: probability of a channel to be zeroed. Default: ``0.5``.
        training: apply dropout if ``True``; else the input itself is returned. Default: ``True``.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(N, C, H, W)`. Output: the same shape (and strides, for dense inputs).
    """
    _check_p(p)
    if input.dim() not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated and will result in an "
            "error in a future release. To retain the behavior and silence this warning, please use dropout "
            "instead. Note that dropout2d exists to provide channel-wise dropout on inputs with 2 spatial "
            "dimensions, a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).", stacklevel=2)
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
            "desired - input is interpreted as shape (N, C, L), where C is the channel dim. This behavior will "
            "change in a future release to interpret the input as one without a batch dimension, i.e. shape "
            "(C, H, W). To maintain the 1D channel-wise dropout behavior, please switch to using dropout1d "
            "instead.", stacklevel=2)
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    return _dropout(input, p, training, inplace, (*input.shape[:2], *[1] * (input.dim() - 2)))
