"""The activation family: the autograd wiring around ``manual_ops::activation_forward`` / ``activation_`` /
``activation_backward`` / ``activation_double_backward``, and the functional wrappers (sigmoid, tanh, silu,
gelu, leaky_relu, elu, hardtanh, relu6, hardswish, hardsigmoid, softplus).

Each activation is named by a string and two floats ``(alpha, beta)``, its options (see
csrc/cpu/activation_kernel.h). Its backward is ``f'(s) * grad_output``, where the saved ``s`` is the
output for sigmoid, tanh, hardtanh and in-place leaky_relu with a slope >= 0 (as torch's, so that in-place
use costs no copy) and the input for the others (in-place use then saves a copy of the input first, as
torch's autograd does).
Derivations: docs/derivations.md, "Activations".
"""
import torch
from torch.autograd import forward_ad as _forward_ad

from .._utils import applier, below_autograd, check_inplace_allowed, elementwise_layout, fast_apply
from ._vmap import with_batch

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.activation_forward)

# The activations whose derivative is written in their output.
SAVES_OUTPUT = frozenset({"sigmoid", "tanh", "hardtanh"})


def _saves_output(activation, alpha, inplace) -> bool:
    """Whether the backward is given the output: for SAVES_OUTPUT, and for in-place leaky_relu with a slope
    alpha >= 0, whose f' = [x > 0 ? 1 : alpha] is the same function of y (y > 0 exactly where x > 0), as
    torch's leaky_relu_ saves its result. Then in place needs no copy of the input."""
    return activation in SAVES_OUTPUT or (inplace and activation == "leaky_relu" and alpha >= 0)
# The piecewise-linear ones: f'' = 0, so their backward does not depend on the saved tensor's value
# in a differentiable way (as torch's, the double backward gives the saved tensor no gradient).
PIECEWISE_LINEAR = frozenset({"leaky_relu", "hardtanh", "hardsigmoid"})


@torch.library.register_fake("manual_ops::activation_forward")
def _forward_fake(input, activation, alpha, beta):
    return torch.empty_like(input)


@torch.library.register_fake("manual_ops::activation_")
def _inplace_fake(self, activation, alpha, beta):
    return None


@torch.library.register_fake("manual_ops::activation_backward")
def _backward_fake(grad_output, saved, activation, alpha, beta):
    # as csrc/activation.cpp: leaky_relu's result is laid out as its input, the others' as the gradient
    first, second = (saved, grad_output) if activation == "leaky_relu" else (grad_output, saved)
    return torch.empty_like(elementwise_layout(first, second))


@torch.library.register_fake("manual_ops::activation_double_backward")
def _double_backward_fake(grad_output, saved, grad_grad_input, activation, alpha, beta):
    return torch.empty_like(elementwise_layout(grad_grad_input, saved))


class ActivationFunction(torch.autograd.Function):
    """An activation whose backward is the hand-written ``manual_ops::activation_backward``.

    ``apply(input, activation, alpha, beta, inplace, original)``. ``inplace=True`` overwrites the input and
    returns it (marked dirty). ``original`` is None, or for in-place use of an activation whose derivative is
    written in its input, a copy of the input made beforehand (a differentiable clone, so that the double
    backward reaches the input through it); it gets no gradient of its own. The backward is differentiable
    (:class:`ActivationBackward`); forward-mode AD's tangent is ``activation_backward(d_input, s)``.
    """

    @staticmethod
    def forward(input, activation, alpha, beta, inplace, original):
        if not inplace:
            return _forward_op(input, activation, alpha, beta)
        _ops.activation_(input, activation, alpha, beta)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.activation, ctx.alpha, ctx.beta, ctx.inplace, original = inputs
        if ctx.inplace:
            ctx.mark_dirty(input)
        saved = output if _saves_output(ctx.activation, ctx.alpha, ctx.inplace) else \
            input if original is None else original
        ctx.save_for_backward(saved)
        ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx, grad_output):
        return _backward_apply(grad_output, ctx.saved_tensors[0], ctx.activation, ctx.alpha, ctx.beta), \
            None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, *_):
        d_output = _backward_apply(d_input, ctx.saved_tensors[0], ctx.activation, ctx.alpha, ctx.beta)
        return d_input.copy_(d_output) if ctx.inplace else d_output

    @staticmethod
    def vmap(info, in_dims, input, activation, alpha, beta, inplace, original):
        # elementwise: the vmapped dimension is one more dimension of the input, where it is (and of the
        # original, moved to match)
        if original is not None and in_dims[0] is not None:
            original = with_batch(original, in_dims[5], info.batch_size).movedim(0, in_dims[0])
        return _function_apply(input, activation, alpha, beta, inplace, original), in_dims[0]


_function_apply = applier(ActivationFunction)


class ActivationBackward(torch.autograd.Function):
    """``manual_ops::activation_backward`` as a differentiable function:
    ``apply(grad_output, saved, activation, alpha, beta)`` = ``f'(saved) * grad_output``.

    Linear in grad_output, so its gradient there is itself; w.r.t. the saved tensor it is
    ``(d f'(s) / ds) * grad_output * grad`` (:class:`ActivationDoubleBackward`), zero for the
    piecewise-linear activations.
    """

    @staticmethod
    def forward(grad_output, saved, activation, alpha, beta):
        return _ops.activation_backward(grad_output, saved, activation, alpha, beta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, saved, ctx.activation, ctx.alpha, ctx.beta = inputs
        ctx.save_for_backward(grad_output, saved)
        ctx.save_for_forward(grad_output, saved)

    @staticmethod
    def backward(ctx, grad_grad_input):
        grad_output, saved = ctx.saved_tensors
        options = (ctx.activation, ctx.alpha, ctx.beta)
        d_grad_output = _backward_apply(grad_grad_input, saved, *options) if ctx.needs_input_grad[0] else None
        d_saved = None
        if ctx.needs_input_grad[1] and ctx.activation not in PIECEWISE_LINEAR:
            d_saved = _double_backward_apply(grad_output, saved, grad_grad_input, *options)
        return d_grad_output, d_saved, None, None, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_saved, *_):
        grad_output, saved = ctx.saved_tensors
        options = (ctx.activation, ctx.alpha, ctx.beta)
        out = None if d_grad_output is None else _backward_apply(d_grad_output, saved, *options)
        if d_saved is not None and ctx.activation not in PIECEWISE_LINEAR:
            term = _double_backward_apply(grad_output, saved, d_saved, *options)
            out = term if out is None else out + term
        return out if out is not None else torch.zeros_like(saved)

    @staticmethod
    def vmap(info, in_dims, grad_output, saved, activation, alpha, beta):
        # elementwise: both get the vmapped dimension first (an expanded view where one is not vmapped)
        B = info.batch_size
        return ActivationBackward.apply(with_batch(grad_output, in_dims[0], B), with_batch(saved, in_dims[1], B),
                                        activation, alpha, beta), 0


_backward_apply = fast_apply(ActivationBackward, _ops.activation_backward)


class ActivationDoubleBackward(torch.autograd.Function):
    """``manual_ops::activation_double_backward`` as a function:
    ``apply(grad_output, saved, grad_grad_input, activation, alpha, beta)`` =
    ``(d f'(s) / ds) * grad_output * grad_grad_input``.

    Linear in grad_output and in grad_grad_input (its gradient there is the op again, with the two
    swapped); a gradient w.r.t. the saved tensor would need f''' (third order), which is not written:
    asking for it raises.
    """

    @staticmethod
    def forward(grad_output, saved, grad_grad_input, activation, alpha, beta):
        return _ops.activation_double_backward(grad_output, saved, grad_grad_input, activation, alpha, beta)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, saved, grad_grad_input, ctx.activation, ctx.alpha, ctx.beta = inputs
        ctx.save_for_backward(grad_output, saved, grad_grad_input)

    @staticmethod
    def backward(ctx, grad):
        grad_output, saved, grad_grad_input = ctx.saved_tensors
        options = (ctx.activation, ctx.alpha, ctx.beta)
        if ctx.needs_input_grad[1]:
            raise NotImplementedError(
                f"manual_ops: the third derivative of {ctx.activation} (through its saved "
                f"{'output' if ctx.activation in SAVES_OUTPUT else 'input'}) is not implemented")
        return (_double_backward_apply(grad, saved, grad_grad_input, *options) if ctx.needs_input_grad[0] else None,
                None,
                _double_backward_apply(grad_output, saved, grad, *options) if ctx.needs_input_grad[2] else None,
                None, None, None)

    @staticmethod
    def vmap(info, in_dims, grad_output, saved, grad_grad_input, activation, alpha, beta):
        B = info.batch_size
        return ActivationDoubleBackward.apply(with_batch(grad_output, in_dims[0], B), with_batch(saved, in_dims[1], B),
                                              with_batch(grad_grad_input, in_dims[2], B), activation, alpha, beta), 0


_double_backward_apply = fast_apply(ActivationDoubleBackward, _ops.activation_double_backward)


def _op_setup_context(ctx, inputs, output):
    input, ctx.activation, ctx.alpha, ctx.beta = inputs
    ctx.save_for_backward(output if ctx.activation in SAVES_OUTPUT else input)


def _op_backward(ctx, grad_output):
    return _backward_apply(grad_output, ctx.saved_tensors[0], ctx.activation, ctx.alpha, ctx.beta), None, None, None


# activation_forward called directly differentiates like ActivationFunction.
torch.library.register_autograd("manual_ops::activation_forward", _op_backward, setup_context=_op_setup_context)


def _records_derivative(input) -> bool:
    """Whether anything may need ``input``'s value after an in-place activation overwrites it: autograd
    (which would save it), forward-mode AD or a torch.func transform."""
    return (input.requires_grad and torch.is_grad_enabled()) or _forward_ad._current_level >= 0 \
        or torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()


def _activation(input, activation, alpha=0.0, beta=0.0, inplace=False):
    """``activation`` applied to ``input`` (in place with ``inplace``), differentiable by hand."""
    if not input.is_floating_point():
        dtype_name = input.type().removeprefix("torch.").removesuffix("Tensor")  # torch's name: 'Long', 'Bool'
        raise NotImplementedError(f'"{activation}" not implemented for \'{dtype_name}\'')
    if not inplace:
        return _function_apply(input, activation, alpha, beta, False, None)
    check_inplace_allowed(input)
    # A derivative written in the input needs it after the in-place forward has overwritten it: a copy is
    # kept, as torch's autograd keeps one of silu_'s or hardswish_'s input.
    keep = not _saves_output(activation, alpha, True) and _records_derivative(input)
    return _function_apply(input, activation, alpha, beta, True, input.clone() if keep else None)


def _integer_to_float(input):
    """An integer or bool ``input`` as the default floating dtype (torch's type promotion for sigmoid and tanh)."""
    return input if input.is_floating_point() or input.is_complex() else input.to(torch.get_default_dtype())


def sigmoid(input):
    r"""Applies :math:`\sigma(x) = 1 / (1 + e^{-x})` elementwise, with a hand-written backward
    (:math:`\sigma' = y (1 - y)`, from the saved output). Same as :func:`torch.sigmoid`.

    Args:
        input: input tensor of any shape (integer tensors are promoted to the default dtype, as torch's).

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(_integer_to_float(input), "sigmoid")


def tanh(input):
    r"""Applies :math:`\tanh(x)` elementwise, with a hand-written backward (:math:`1 - y^2`, from the saved
    output). Same as :func:`torch.tanh`.

    Args:
        input: input tensor of any shape (integer tensors are promoted to the default dtype, as torch's).

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(_integer_to_float(input), "tanh")


def silu(input, inplace=False):
    r"""Applies :math:`x \sigma(x)` elementwise, with a hand-written backward. Same as
    :func:`torch.nn.functional.silu`.

    Args:
        input: input tensor of any shape.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "silu", inplace=inplace)


def gelu(input, approximate="none"):
    r"""Applies :math:`x \Phi(x)` elementwise (:math:`\Phi` the standard normal CDF), or with
    ``approximate='tanh'`` :math:`\frac{x}{2}(1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))`, with a
    hand-written backward. Same as :func:`torch.nn.functional.gelu`.

    Args:
        input: input tensor of any shape.
        approximate: ``'none'`` or ``'tanh'``. Default: ``'none'``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return _activation(input, "gelu" if approximate == "none" else "gelu_tanh")


def leaky_relu(input, negative_slope=0.01, inplace=False):
    r"""Applies :math:`x` for :math:`x > 0`, else :math:`\text{negative\_slope} \cdot x`, elementwise, with a
    hand-written backward. Same as :func:`torch.nn.functional.leaky_relu`.

    Args:
        input: input tensor of any shape.
        negative_slope: the slope for :math:`x \le 0`. Default: ``0.01``.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "leaky_relu", float(negative_slope), inplace=inplace)


def elu(input, alpha=1.0, inplace=False):
    r"""Applies :math:`x` for :math:`x > 0`, else :math:`\alpha (e^x - 1)`, elementwise, with a hand-written
    backward. Same as :func:`torch.nn.functional.elu`.

    Args:
        input: input tensor of any shape.
        alpha: the scale of the negative part. Default: ``1.0``.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "elu", float(alpha), inplace=inplace)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    r"""Applies :math:`\min(\max(x, \text{min\_val}), \text{max\_val})` elementwise, with a hand-written
    backward (from the saved output). Same as :func:`torch.nn.functional.hardtanh`.

    Args:
        input: input tensor of any shape (floating point).
        min_val: the lower bound. Default: ``-1.0``.
        max_val: the upper bound. Default: ``1.0``.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return _activation(input, "hardtanh", float(min_val), float(max_val), inplace=inplace)


def relu6(input, inplace=False):
    r"""Applies :math:`\min(\max(x, 0), 6)` elementwise: :func:`hardtanh` with bounds 0 and 6. Same as
    :func:`torch.nn.functional.relu6`.

    Args:
        input: input tensor of any shape (floating point).
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return hardtanh(input, 0.0, 6.0, inplace)


def hardswish(input, inplace=False):
    r"""Applies :math:`x \cdot \text{relu6}(x + 3) / 6` elementwise, with a hand-written backward. Same as
    :func:`torch.nn.functional.hardswish`.

    Args:
        input: input tensor of any shape.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "hardswish", inplace=inplace)


def hardsigmoid(input, inplace=False):
    r"""Applies :math:`\text{relu6}(x + 3) / 6` elementwise, with a hand-written backward. Same as
    :func:`torch.nn.functional.hardsigmoid`.

    Args:
        input: input tensor of any shape.
        inplace: overwrite ``input`` with the result and return it. Default: ``False``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "hardsigmoid", inplace=inplace)


def softplus(input, beta=1.0, threshold=20.0):
    r"""Applies :math:`\frac{1}{\beta} \log(1 + e^{\beta x})` elementwise, and :math:`x` itself where
    :math:`\beta x > \text{threshold}`, with a hand-written backward. Same as
    :func:`torch.nn.functional.softplus`.

    Args:
        input: input tensor of any shape.
        beta: the :math:`\beta` of the formula. Default: ``1.0``.
        threshold: above this, :math:`\beta x` is taken as linear. Default: ``20.0``.

    Shape:
        - Input: :math:`(*)`. Output: :math:`(*)`, the same shape (and strides, for dense inputs).
    """
    return _activation(input, "softplus", float(beta), float(threshold))
