"""layer_norm: the autograd wiring around ``manual_ops::layer_norm_forward`` / ``layer_norm_backward``.

Layer norm is group_norm with one group per row (the M values of the normalised trailing dims) and those values
as its channels: on the (R, M) view of the input, with gamma and beta flattened to (M,), group_norm's forward-mode
and second-order formulas (``manual_ops.ops.group_norm``) are layer norm's, and are used as such here.
"""
import torch
from torch.autograd.function import once_differentiable

from .._utils import applier, below_autograd, fast_apply, register_autograd
from ._tangents import output_meta, sum_tangents, zeros_for_missing
from ._vmap import loop, out_dims_of, with_batch
from .batch_norm import _param_dtype
from .group_norm import _second_derivative_terms as _group_terms
from .group_norm import group_norm_tangent

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.layer_norm_forward)
_backward_op = below_autograd(_ops.layer_norm_backward)


def _stats_shape(input, normalized_shape):
    return (*input.shape[:input.dim() - len(normalized_shape)], *[1] * len(normalized_shape))


@torch.library.register_fake("manual_ops::layer_norm_forward")
def _layer_norm_forward_fake(input, normalized_shape, weight, bias, eps):
    torch._check(len(normalized_shape) > 0, lambda: "Expected normalized_shape to be at least 1-dimensional")
    torch._check(tuple(input.shape[input.dim() - len(normalized_shape):]) == tuple(normalized_shape),
                 lambda: f"Given normalized_shape={list(normalized_shape)}, expected input with shape [*, ...]")
    dtype = _param_dtype(input, weight, bias)
    stats = _stats_shape(input, normalized_shape)
    return torch.empty(input.shape, dtype=input.dtype), input.new_empty(stats, dtype=dtype), \
        input.new_empty(stats, dtype=dtype)


@torch.library.register_fake("manual_ops::layer_norm_backward")
def _layer_norm_backward_fake(grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask):
    dtype = _param_dtype(input, weight, save_mean)
    grad_input = torch.empty(input.shape, dtype=input.dtype) if output_mask[0] else None
    grad_weight = input.new_empty(tuple(normalized_shape), dtype=dtype) if output_mask[1] else None
    grad_bias = input.new_empty(tuple(normalized_shape), dtype=dtype) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


class _Rows:
    """The (R, M) view of an input normalised over its trailing ``normalized_shape`` dims, for group_norm's
    formulas (one group per row): rows, per-row statistics and per-value tensors flattened, and back."""

    def __init__(self, input, normalized_shape):
        self.shape, self.normalized_shape = input.shape, tuple(normalized_shape)
        self.M = torch.Size(self.normalized_shape).numel()

    def rows(self, t):
        return None if t is None else t.reshape(-1, self.M)

    def stat(self, t):
        return t.reshape(-1, 1)

    def flat(self, t):
        return None if t is None else t.reshape(-1)

    def unrows(self, t):
        return None if t is None else t.reshape(self.shape)

    def unflat(self, t):
        return None if t is None else t.reshape(self.normalized_shape)


def layer_norm_tangent(input, normalized_shape, save_mean, save_rstd, weight, d_input, d_weight, d_bias):
    r"""The tangent of layer_norm's output: :func:`~manual_ops.ops.group_norm.group_norm_tangent` on the rows
    (:math:`\dot y = \gamma r P(\dot x) + \dot\gamma \hat x + \dot\beta`, P over each row)."""
    v = _Rows(input, normalized_shape)
    return v.unrows(group_norm_tangent(v.rows(input), 1, v.stat(save_mean), v.stat(save_rstd), v.flat(weight),
                                       v.rows(d_input), v.flat(d_weight), v.flat(d_bias)))


def _second_derivative_terms(grad_output, input, normalized_shape, save_mean, save_rstd, weight, ggx, ggw,
                             need_input, need_weight):
    """group_norm's second-order terms on the rows (see :class:`LayerNormBackward`)."""
    v = _Rows(input, normalized_shape)
    d_input, d_weight = _group_terms(v.rows(grad_output), v.rows(input), 1, v.stat(save_mean), v.stat(save_rstd),
                                     v.flat(weight), v.rows(ggx), v.flat(ggw), need_input, need_weight)
    return v.unrows(d_input), v.unflat(d_weight)


class LayerNormFunction(torch.autograd.Function):
    """layer_norm whose backward is the hand-written ``manual_ops::layer_norm_backward``.

    ``apply(input, normalized_shape, weight, bias, eps)``, the arguments of the op, returns (output, save_mean,
    save_rstd), the statistics of size (*leading, 1, ..., 1) and not differentiable. The backward is
    differentiable (:class:`LayerNormBackward`), and ``jvp`` gives forward-mode AD (:func:`layer_norm_tangent`).
    """

    @staticmethod
    def forward(input, normalized_shape, weight, bias, eps):
        return _forward_op(input, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, normalized_shape, weight, _, _ = inputs
        _, save_mean, save_rstd = output
        ctx.save_for_backward(input, save_mean, save_rstd, weight)
        ctx.save_for_forward(input, save_mean, save_rstd, weight)
        ctx.normalized_shape = normalized_shape
        ctx.mark_non_differentiable(save_mean, save_rstd)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_rstd):
        input, save_mean, save_rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = _layer_norm_backward(
            grad_output, input, ctx.normalized_shape, save_mean, save_rstd, weight, [needs[0], needs[2], needs[3]])
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, d_input, _d_shape, d_weight, d_bias, _d_eps):
        input, save_mean, save_rstd, weight = ctx.saved_tensors
        tangent = layer_norm_tangent(input, ctx.normalized_shape, save_mean, save_rstd, weight, d_input, d_weight,
                                     d_bias)
        return tangent, None, None

    @staticmethod
    def vmap(info, in_dims, input, normalized_shape, weight, bias, eps):
        x_bdim, _, w_bdim, b_bdim, _ = in_dims
        if w_bdim is None and b_bdim is None:
            # Only the input vmapped: its vmapped dim becomes one more leading dim, whose rows are normalised on
            # their own as every row is (exact); the statistics gain it too.
            outputs = _layer_norm_apply(with_batch(input, x_bdim, info.batch_size), normalized_shape, weight, bias,
                                        eps)
            return outputs, (0, 0, 0)
        # A vmapped gamma or beta: each slice scales the same values of its rows by its own gamma, which no one
        # call of the op (one gamma for all rows) can do: a loop over the slices.
        return loop(info.batch_size, in_dims, _layer_norm_apply, input, normalized_shape, weight, bias, eps)


_layer_norm_apply = applier(LayerNormFunction)
register_autograd("manual_ops::layer_norm_forward", LayerNormFunction)


class LayerNormBackward(torch.autograd.Function):
    r"""``manual_ops::layer_norm_backward`` as a differentiable function of (grad_output, input, weight):
    ``apply(grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask)``. Its backward and
    jvp are :class:`~manual_ops.ops.group_norm.GroupNormBackward`'s on the rows (one group per row; derivation:
    docs/derivations.md, "layer_norm"). It is differentiable once (a third derivative raises).
    """

    @staticmethod
    def forward(grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask):
        return _backward_op(grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask = inputs
        ctx.save_for_backward(grad_output, input, save_mean, save_rstd, weight)
        ctx.save_for_forward(grad_output, input, save_mean, save_rstd, weight)
        ctx.normalized_shape, ctx.output_mask = normalized_shape, output_mask
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        grad_output, input, save_mean, save_rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad_output = None
        if needs[0] and not (ggx is None and ggw is None and ggb is None):
            d_grad_output = layer_norm_tangent(input, ctx.normalized_shape, save_mean, save_rstd, weight, ggx, ggw,
                                               ggb)
        d_input, d_weight = _second_derivative_terms(grad_output, input, ctx.normalized_shape, save_mean, save_rstd,
                                                     weight, ggx, ggw, needs[1], needs[5])
        return d_grad_output, d_input, None, None, None, d_weight, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, _d_shape, _d_mean, _d_rstd, d_weight, _d_mask):
        """The backward at the tangent of grad_output plus the Hessian's action, as GroupNormBackward's."""
        grad_output, input, save_mean, save_rstd, weight = ctx.saved_tensors
        mask = list(ctx.output_mask)
        tangents = [None, None, None]
        if d_grad_output is not None:
            tangents = list(_layer_norm_backward(d_grad_output, input, ctx.normalized_shape, save_mean, save_rstd,
                                                 weight, mask))
        terms = _second_derivative_terms(grad_output, input, ctx.normalized_shape, save_mean, save_rstd, weight,
                                         d_input, d_weight, mask[0], mask[1])
        return zeros_for_missing(sum_tangents(tangents, terms), ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, normalized_shape, save_mean, save_rstd, weight, output_mask):
        B = info.batch_size
        dy_bdim, x_bdim, _, m_bdim, r_bdim, w_bdim, _ = in_dims
        if w_bdim is not None:  # a vmapped gamma: as the forward's rule, no one call covers the slices
            return loop(B, in_dims, _layer_norm_backward, grad_output, input, normalized_shape, save_mean, save_rstd,
                        weight, output_mask)
        # The vmapped dim as one more leading dim (as the forward's rule): grad_input is the op's; the per-slice
        # grad_weight and grad_bias are the sums over each slice's own rows, sum delta * xhat and sum delta, which
        # the op would add up over all slices: they are summed per slice here.
        dy, x, mean, rstd = (with_batch(t, d, B) for t, d in zip((grad_output, input, save_mean, save_rstd),
                                                                  (dy_bdim, x_bdim, m_bdim, r_bdim)))
        grad_input = _layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight,
                                          [output_mask[0], False, False])[0]
        leading = list(range(1, x.dim() - len(normalized_shape)))
        grad_weight = ((dy * (x - mean) * rstd).sum(leading) if leading else dy * (x - mean) * rstd) \
            if output_mask[1] else None
        grad_bias = (dy.sum(leading) if leading else dy) if output_mask[2] else None
        grads = (grad_input, grad_weight, grad_bias)
        return grads, out_dims_of(grads, 0)


_layer_norm_backward = fast_apply(LayerNormBackward, _backward_op)
register_autograd("manual_ops::layer_norm_backward", LayerNormBackward)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""Applies layer normalization over the trailing dims, with a hand-written backward. Same as
    :func:`torch.nn.functional.layer_norm`.

    Each slice of the input over its last ``len(normalized_shape)`` dims is normalised over its values,
    :math:`y = (x - \mu) / \sqrt{\sigma^2 + \epsilon} \cdot \gamma + \beta`, with :math:`\mu, \sigma^2` the
    slice's mean and biased variance and :math:`\gamma, \beta` of shape ``normalized_shape`` (elementwise).

    Args:
        input: input tensor of shape :math:`(*, \text{normalized\_shape})`.
        normalized_shape: the trailing sizes to normalise over (a list or tuple of ints).
        weight: scale :math:`\gamma` of shape ``normalized_shape``. Default: ``None`` (1).
        bias: shift :math:`\beta` of shape ``normalized_shape``. Default: ``None`` (0).
        eps: added to the variance for numerical stability. Default: 1e-5.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`.
        - Output: same shape as the input, contiguous (as torch's).
    """
    return _layer_norm_apply(input, list(normalized_shape), weight, bias, eps)[0]
