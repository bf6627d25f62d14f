"""relu: the autograd wiring around ``manual_ops::relu_forward`` / ``relu_`` / ``relu_backward``."""
import torch
from torch.autograd.function import once_differentiable

_ops = torch.ops.manual_ops


@torch.library.register_fake("manual_ops::relu_forward")
def _relu_forward_fake(input):
    return torch.empty_like(input)


@torch.library.register_fake("manual_ops::relu_")
def _relu_inplace_fake(self):
    return None


@torch.library.register_fake("manual_ops::relu_backward")
def _relu_backward_fake(grad_output, result):
    return torch.empty_like(result)


class ReLUFunction(torch.autograd.Function):
    """relu whose backward is the hand-written ``manual_ops::relu_backward``.

    ``apply(input, inplace)``; with ``inplace=True`` the input is overwritten and returned
    (marked dirty, as autograd requires). The backward needs only the output, so in-place
    use saves nothing extra.
    """

    @staticmethod
    def forward(input, inplace):
        if not inplace:
            return _ops.relu_forward(input)
        _ops.relu_(input)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        if inputs[1]:
            ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(output)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return _ops.relu_backward(grad_output, result), None


def _relu_op_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_op_backward(ctx, grad_output):
    return _ops.relu_backward(grad_output, ctx.saved_tensors[0])


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
    if inplace and torch.is_grad_enabled() and input.requires_grad and not torch.compiler.is_compiling():
        # autograd.Function would detect these only after the forward has overwritten the input
        # (under torch.compile, AOTAutograd checks them while tracing).
        if input.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if input._is_view() and input._base.is_leaf:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
    return ReLUFunction.apply(input, inplace)
