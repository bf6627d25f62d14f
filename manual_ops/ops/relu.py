"""relu: the autograd wiring around ``manual_ops::relu_forward`` / ``relu_`` / ``relu_backward``."""
import torch

from .._utils import applier, below_autograd, check_inplace_allowed, elementwise_layout, fast_apply
from ._vmap import with_batch

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.relu_forward)


@torch.library.register_fake("manual_ops::relu_forward")
def _relu_forward_fake(input):
    return torch.empty_like(input)


@torch.library.register_fake("manual_ops::relu_")
def _relu_inplace_fake(self):
    return None


@torch.library.register_fake("manual_ops::relu_backward")
def _relu_backward_fake(grad_output, result):
    return torch.empty_like(elementwise_layout(result, grad_output))


class ReLUFunction(torch.autograd.Function):
    """relu whose backward is the hand-written ``manual_ops::relu_backward``.

    ``apply(input, inplace)``; with ``inplace=True`` the input is overwritten and returned
    (marked dirty, as autograd requires). The backward needs only the output, so in-place
    use saves nothing extra. The backward is differentiable (:class:`ReLUBackward`); the
    tangent of forward-mode AD is ``relu_backward(dx, y)`` (written into the input's tangent
    in place for ``inplace=True``).
    """

    @staticmethod
    def forward(input, inplace):
        if not inplace:
            return _forward_op(input)
        _ops.relu_(input)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.inplace = inputs[1]
        if ctx.inplace:
            ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        return _backward_apply(grad_output, ctx.saved_tensors[0]), None

    @staticmethod
    def jvp(ctx, d_input, _):
        d_output = _backward_apply(d_input, ctx.saved_tensors[0])  # differentiable, vmappable (jacfwd, hessian)
        return d_input.copy_(d_output) if ctx.inplace else d_output

    @staticmethod
    def vmap(info, in_dims, input, inplace):
        # elementwise: the vmapped dimension is one more dimension of the input, where it is
        return _relu_apply(input, inplace), in_dims[0]


_relu_apply = applier(ReLUFunction)


class ReLUBackward(torch.autograd.Function):
    """``manual_ops::relu_backward`` as a differentiable function: ``apply(grad_output, result)``.

    ``grad_output * [result > 0]`` is linear in grad_output, so its grad w.r.t. grad_output is
    relu_backward again; w.r.t. the result it is zero almost everywhere (as torch's).
    """

    @staticmethod
    def forward(grad_output, result):
        return _ops.relu_backward(grad_output, result)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_grad_input):
        return ReLUBackward.apply(grad_grad_input, ctx.saved_tensors[0]), None

    @staticmethod
    def jvp(ctx, d_grad_output, _):
        # linear in grad_output; the result's tangent contributes zero almost everywhere (as in backward)
        return None if d_grad_output is None else ReLUBackward.apply(d_grad_output, ctx.saved_tensors[0])

    @staticmethod
    def vmap(info, in_dims, grad_output, result):
        # elementwise: both get the vmapped dimension first (an expanded view where one is not vmapped)
        B = info.batch_size
        return ReLUBackward.apply(with_batch(grad_output, in_dims[0], B), with_batch(result, in_dims[1], B)), 0

_backward_apply = fast_apply(ReLUBackward, _ops.relu_backward)


def _relu_op_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_op_backward(ctx, grad_output):
    return _backward_apply(grad_output, ctx.saved_tensors[0])


# relu_forward called directly differentiates like ReLUFunction (which also covers in-place use).
torch.library.register_autograd("manual_ops::relu_forward", _relu_op_backward, setup_context=_relu_op_setup_context)


def relu(input, inplace=False):
    r"""Applies :math:`\max(x, 0)` elementwise, with a hand-written backward. Same as :func:`torch.nn.functional.relu`.

    Args:
        input: input tensor of any shape.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the same shape (and strides, for dense inputs) as the input.
    """
    if inplace:
        check_inplace_allowed(input)
    return _relu_apply(input, inplace)
