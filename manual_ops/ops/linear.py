"""linear: the autograd wiring around ``manual_ops::linear_forward`` / ``linear_backward``."""
import torch

from .._utils import applier, below_autograd, fast_apply, register_autograd
from ._bilinear import bilinear_backward_tangent, bilinear_double_backward, bilinear_sum
from ._tangents import output_meta, zeros_for_missing
from ._vmap import fold, loop, out_dims_of, unfold, with_batch

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.linear_forward)
_backward_op = below_autograd(_ops.linear_backward)


@torch.library.register_fake("manual_ops::linear_forward")
def _linear_forward_fake(input, weight, bias):
    torch._check(input.dim() >= 1 and weight.dim() == 2, lambda: "linear: expected input of 1+ dims and a 2-D weight")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("manual_ops::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    grad_input = input.new_empty(input.shape) if output_mask[0] else None
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


class LinearFunction(torch.autograd.Function):
    """linear whose backward is the hand-written ``manual_ops::linear_backward``.

    ``apply(input, weight, bias)`` with input (*, in_features), weight (out_features, in_features).
    The backward is itself differentiable (:class:`LinearBackward`), and ``jvp`` gives
    forward-mode AD: ``dx W^T + x dW^T + db``.
    """

    @staticmethod
    def forward(input, weight, bias):
        return _forward_op(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _ = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.output_size = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        return _backward_apply(grad_output, input, weight, list(ctx.needs_input_grad))

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_bias):
        input, weight = ctx.saved_tensors
        # linear's own applier: under torch.func the tangents need the Python Function (not the C++ kernel)
        return bilinear_sum(_linear_apply, input, weight, d_input, d_weight, d_bias, ctx.output_size, -1)

    @staticmethod
    def vmap(info, in_dims, input, weight, bias):
        x_bdim, w_bdim, b_bdim = in_dims
        B = info.batch_size
        if w_bdim is None and b_bdim is None:  # fold into the input's leading dimensions: one more of them
            return _linear_apply(with_batch(input, x_bdim, B), weight, bias), 0
        if x_bdim is None:  # fold into out_features: the slices' weights stacked are one weight
            output = _linear_apply(input, fold(weight, w_bdim, B, 0), fold(bias, b_bdim, B, 0))
            return unfold(output, output.dim() - 1, B), output.dim() - 1
        # A vmapped input and weight: each slice is its own product x_b W_b^T; in one linear (one GEMM) they
        # would come with all the cross products x_b W_c^T, B times the work, so loop.
        return loop(B, in_dims, _linear_apply, input, weight, bias)


_linear_apply = applier(LinearFunction, _ops.linear_forward, native_autograd=True, autocast_to="lower")


class LinearBackward(torch.autograd.Function):
    """``manual_ops::linear_backward`` as a differentiable function of (grad_output, input, weight).

    ``apply(grad_output, input, weight, output_mask)``. Its backward is the bilinear rule of
    :mod:`manual_ops.ops._bilinear`, made of linear's own forward and backward ops.
    """

    @staticmethod
    def forward(grad_output, input, weight, output_mask):
        return _backward_op(grad_output, input, weight, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])
        ctx.save_for_forward(*inputs[:3])
        ctx.output_mask = inputs[3]
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, ggx, ggw, ggb):
        grad_output, input, weight = ctx.saved_tensors
        grads = bilinear_double_backward(LinearFunction.apply, LinearBackward.apply, ctx.needs_input_grad,
                                         grad_output, input, weight, ggx, ggw, ggb, -1)
        return *grads, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, d_weight, _):
        tangents = bilinear_backward_tangent(_backward_apply, ctx.output_mask, *ctx.saved_tensors, d_grad_output,
                                             d_input, d_weight)
        return zeros_for_missing(tangents, ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, weight, output_mask):
        gy_bdim, x_bdim, w_bdim = in_dims[:3]
        B = info.batch_size
        mask = list(output_mask)
        if w_bdim is not None or (x_bdim is not None and gy_bdim is not None and mask[1:] != [False, False]):
            # each slice's grad_weight (x_b^T gy_b) or grad_input (gy_b W_b) is its own product, which one GEMM
            # would compute only with all the cross products: loop
            return loop(B, in_dims, _backward_apply, grad_output, input, weight, output_mask)
        grad_input = grad_weight = grad_bias = None
        if mask[0]:  # fold into the leading dimensions: grad_input is per row
            grad_input = _backward_apply(with_batch(grad_output, gy_bdim, B), with_batch(input, x_bdim, B), weight,
                                         [True, False, False])[0]
        if (mask[1] or mask[2]) and x_bdim is None:
            # fold into out_features (only grad_output vmapped): the stacked slices' grads are those of one linear
            # whose weight is the B copies of the weight stacked
            _, grad_weight, grad_bias = _backward_apply(fold(grad_output, gy_bdim, B, grad_output.dim() - 2), input,
                                                        fold(weight, None, B, 0), [False, *mask[1:]])
            grads = (grad_input, unfold(grad_weight, 0, B), unfold(grad_bias, 0, B))
            return grads, out_dims_of(grads, 0)
        if mask[1] or mask[2]:
            # fold into in_features (only the input vmapped): grad_weight of one linear on the slices' features
            # side by side, whose weight is the B copies of the weight side by side; grad_bias is the slices' own
            _, grad_weight, grad_bias = _backward_apply(grad_output, fold(input, x_bdim, B, input.dim() - 2),
                                                        fold(weight, None, B, 1), [False, *mask[1:]])
            grads = (grad_input, unfold(grad_weight, 1, B), grad_bias)
            return grads, out_dims_of(grads, (0, 1, None))
        return (grad_input, None, None), (0, None, None)


_backward_apply = fast_apply(LinearBackward, _backward_op)
# linear_forward's autograd kernel is C++ (with LinearFunction's derivatives); its backward op's is LinearBackward
register_autograd("manual_ops::linear_backward", LinearBackward)


def linear(input, weight, bias=None):
    r"""Applies :math:`y = x W^T + b`, with a hand-written backward. Same as :func:`torch.nn.functional.linear`.

    Args:
        input: input tensor of shape :math:`(*, H_{in})`.
        weight: weight of shape :math:`(H_{out}, H_{in})`.
        bias: optional bias of shape :math:`(H_{out})`. Default: ``None``.

    Shape:
        - Input: :math:`(*, H_{in})`, where :math:`*` is any number of leading dimensions, including none.
        - Output: :math:`(*, H_{out})`.
    """
    return _linear_apply(input, weight, bias)
