"""group_norm: the autograd wiring around ``manual_ops::group_norm_forward`` / ``group_norm_backward``."""
import torch
from torch.autograd.function import once_differentiable

from .._utils import applier, below_autograd, fast_apply, memory_format_of, register_autograd
from ._tangents import output_meta, sum_tangents, zeros_for_missing
from .batch_norm import _param_dtype  # the mixed-dtype rule (param_type in csrc/channel_passes.h)
from ._vmap import fold, out_dims_of, unfold

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.group_norm_forward)
_backward_op = below_autograd(_ops.group_norm_backward)


@torch.library.register_fake("manual_ops::group_norm_forward")
def _group_norm_forward_fake(input, num_groups, weight, bias, eps):
    torch._check(input.dim() >= 2, lambda: "group_norm: expected input of size (N, C, *)")
    torch._check(num_groups > 0 and input.shape[1] % num_groups == 0,
                 lambda: "Expected number of channels in input to be divisible by num_groups")
    dtype = _param_dtype(input, weight, bias)
    stats = (input.shape[0], num_groups)
    out = torch.empty_like(input, memory_format=memory_format_of(input))
    return out, input.new_empty(stats, dtype=dtype), input.new_empty(stats, dtype=dtype)


@torch.library.register_fake("manual_ops::group_norm_backward")
def _group_norm_backward_fake(grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask):
    dtype = _param_dtype(input, weight, save_mean)
    grad_input = torch.empty_like(input, memory_format=memory_format_of(input)) if output_mask[0] else None
    grad_weight = input.new_empty((input.shape[1],), dtype=dtype) if output_mask[1] else None
    grad_bias = input.new_empty((input.shape[1],), dtype=dtype) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


class _Groups:
    """Means over the values of each (sample, group) of an (N, C, *) tensor, and per-group and per-channel
    tensors broadcast over it."""

    def __init__(self, input, num_groups):
        self.shape, self.G = input.shape, num_groups
        self.grouped = (input.shape[0], num_groups, -1)
        self.channel_shape = (1, input.shape[1], *[1] * (input.dim() - 2))

    def mean(self, t):
        """E over each group, broadcast back to t's shape."""
        means = t.reshape(self.grouped).mean(-1, keepdim=True)
        return means.expand(t.reshape(self.grouped).shape).reshape(self.shape)

    def view(self, stat):
        """An (N, G) statistic broadcast over the (N, C, *) shape."""
        return stat.reshape(*stat.shape, 1).expand(self.grouped[:2] + (self.shape[1:].numel() // self.G,)) \
            .reshape(self.shape)

    def channel(self, t):
        return t.view(self.channel_shape)

    def channel_sum(self, t):
        return t.sum([0, *range(2, t.dim())])


def _xhat(g, input, save_mean, save_rstd):
    return (input - g.view(save_mean)) * g.view(save_rstd)


def group_norm_tangent(input, num_groups, save_mean, save_rstd, weight, d_input, d_weight, d_bias):
    r"""The tangent of group_norm's output for tangents (d_input, d_weight, d_bias), any of them None:
    :math:`\dot y = \gamma s P(\dot x) + \dot\gamma \hat x + \dot\beta` with :math:`P(v) = v - E[v] - \hat x
    E[\hat x v]` over each group (batch_norm's training-mode tangent with the group as the batch). It is also
    the grad w.r.t. grad_output of the backward (the adjoint of a linear map's adjoint). Derivation:
    docs/derivations.md, "group_norm"."""
    g = _Groups(input, num_groups)
    xhat = _xhat(g, input, save_mean, save_rstd)
    out = None
    if d_input is not None:
        projected = d_input - g.mean(d_input) - xhat * g.mean(xhat * d_input)
        out = g.view(save_rstd) * projected
        if weight is not None:
            out = g.channel(weight) * out
    if d_weight is not None:
        term = g.channel(d_weight) * xhat
        out = term if out is None else out + term
    if d_bias is not None:
        out = g.channel(d_bias).expand(input.shape) + (0 if out is None else out)
    return out if out is not None else torch.zeros_like(input)


class GroupNormFunction(torch.autograd.Function):
    """group_norm whose backward is the hand-written ``manual_ops::group_norm_backward``.

    ``apply(input, num_groups, weight, bias, eps)``, the arguments of the op, returns (output, save_mean,
    save_rstd), the statistics of size (N, num_groups) and not differentiable. The backward is differentiable
    (:class:`GroupNormBackward`), and ``jvp`` gives forward-mode AD (:func:`group_norm_tangent`).
    """

    @staticmethod
    def forward(input, num_groups, weight, bias, eps):
        return _forward_op(input, num_groups, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, num_groups, weight, _, _ = inputs
        _, save_mean, save_rstd = output
        ctx.save_for_backward(input, save_mean, save_rstd, weight)
        ctx.save_for_forward(input, save_mean, save_rstd, weight)
        ctx.num_groups = num_groups
        ctx.mark_non_differentiable(save_mean, save_rstd)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_rstd):
        input, save_mean, save_rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = _group_norm_backward(
            grad_output, input, ctx.num_groups, save_mean, save_rstd, weight, [needs[0], needs[2], needs[3]])
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, d_input, _d_groups, d_weight, d_bias, _d_eps):
        input, save_mean, save_rstd, weight = ctx.saved_tensors
        tangent = group_norm_tangent(input, ctx.num_groups, save_mean, save_rstd, weight, d_input, d_weight, d_bias)
        return tangent, None, None

    @staticmethod
    def vmap(info, in_dims, input, num_groups, weight, bias, eps):
        # Fold into channels: slice b's channels become channels b*C .. b*C + C - 1, and with B*G groups each
        # of its groups is a group of the folded call (groups are runs of consecutive channels), with its own
        # statistics and its slice's gamma and beta: exact.
        x_bdim, _, w_bdim, b_bdim, _ = in_dims
        B = info.batch_size
        output, save_mean, save_rstd = _group_norm_apply(fold(input, x_bdim, B, 1), num_groups * B,
                                                         fold(weight, w_bdim, B, 0), fold(bias, b_bdim, B, 0), eps)
        return (unfold(output, 1, B), unfold(save_mean, 1, B), unfold(save_rstd, 1, B)), (1, 1, 1)


_group_norm_apply = applier(GroupNormFunction)
register_autograd("manual_ops::group_norm_forward", GroupNormFunction)


class GroupNormBackward(torch.autograd.Function):
    r"""``manual_ops::group_norm_backward`` as a differentiable function of (grad_output, input, weight):
    ``apply(grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask)``, where save_mean and
    save_rstd are the forward's (functions of the input, which the formulas account for).

    With :math:`\delta` = grad_output, :math:`g = \gamma\delta`, :math:`P` as in :func:`group_norm_tangent`
    and E the mean over a group, for the grads (ggx, ggw, ggb) of (grad_input, grad_weight, grad_bias) the
    backward returns (derivation: docs/derivations.md, "group_norm"):

    - grad_output: :func:`group_norm_tangent` at tangents (ggx, ggw, ggb);
    - input: :math:`-s^2\big[(E[ggx\,g] - a E[ggx] - b E[ggx\,\hat x])\hat x + E[ggx\,\hat x] P g + b P(ggx)\big]
      + s P(ggw\,\delta)` with :math:`a = E[g]`, :math:`b = E[g \hat x]`;
    - weight: :math:`\sum \delta\, s P(ggx)` over each channel's values.

    It is differentiable once (a third derivative raises).
    """

    @staticmethod
    def forward(grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask):
        return _backward_op(grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask = inputs
        ctx.save_for_backward(grad_output, input, save_mean, save_rstd, weight)
        ctx.save_for_forward(grad_output, input, save_mean, save_rstd, weight)
        ctx.num_groups, ctx.output_mask = num_groups, output_mask
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        grad_output, input, save_mean, save_rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad_output = None
        if needs[0] and not (ggx is None and ggw is None and ggb is None):
            d_grad_output = group_norm_tangent(input, ctx.num_groups, save_mean, save_rstd, weight, ggx, ggw, ggb)
        d_input, d_weight = _second_derivative_terms(grad_output, input, ctx.num_groups, save_mean, save_rstd,
                                                     weight, ggx, ggw, needs[1], needs[5])
        return d_grad_output, d_input, None, None, None, d_weight, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, _d_groups, _d_mean, _d_rstd, d_weight, _d_mask):
        r"""The backward's tangent: the backward at :math:`\dot\delta` plus the Hessian of
        :math:`\langle\delta, y\rangle` applied to :math:`(\dot x, \dot\gamma)`, which is what :meth:`backward`
        gives for (ggx, ggw) = :math:`(\dot x, \dot\gamma)` (the Hessian is symmetric; as batch_norm's)."""
        grad_output, input, save_mean, save_rstd, weight = ctx.saved_tensors
        mask = list(ctx.output_mask)
        tangents = [None, None, None]
        if d_grad_output is not None:
            tangents = list(_group_norm_backward(d_grad_output, input, ctx.num_groups, save_mean, save_rstd, weight,
                                                 mask))
        terms = _second_derivative_terms(grad_output, input, ctx.num_groups, save_mean, save_rstd, weight, d_input,
                                         d_weight, mask[0], mask[1])
        return zeros_for_missing(sum_tangents(tangents, terms), ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, num_groups, save_mean, save_rstd, weight, output_mask):
        # Fold into channels, as the forward's rule: slice b's per-channel grads are channels b*C .. b*C + C - 1.
        B = info.batch_size
        dy_bdim, x_bdim, _, m_bdim, r_bdim, w_bdim, _ = in_dims
        grads = _group_norm_backward(fold(grad_output, dy_bdim, B, 1), fold(input, x_bdim, B, 1), num_groups * B,
                                     fold(save_mean, m_bdim, B, 1), fold(save_rstd, r_bdim, B, 1),
                                     fold(weight, w_bdim, B, 0), output_mask)
        grads = (unfold(grads[0], 1, B), unfold(grads[1], 0, B), unfold(grads[2], 0, B))
        return grads, out_dims_of(grads, (1, 0, 0))


def _second_derivative_terms(grad_output, input, num_groups, save_mean, save_rstd, weight, ggx, ggw, need_input,
                             need_weight):
    """The (input, weight) grads of :class:`GroupNormBackward` for the grads (ggx, ggw) of its outputs
    grad_input and grad_weight (None where not needed or zero); see its docstring."""
    g = _Groups(input, num_groups)
    s = g.view(save_rstd)
    xhat = _xhat(g, input, save_mean, save_rstd)
    scaled = grad_output if weight is None else g.channel(weight) * grad_output  # g = gamma * delta

    def project(v):
        return v - g.mean(v) - xhat * g.mean(xhat * v)

    d_input = d_weight = None
    if need_input and ggx is not None:
        a, b = g.mean(scaled), g.mean(scaled * xhat)
        d_input = -s * s * ((g.mean(ggx * scaled) - a * g.mean(ggx) - b * g.mean(ggx * xhat)) * xhat
                            + g.mean(ggx * xhat) * project(scaled) + b * project(ggx))
    if need_input and ggw is not None:
        term = s * project(g.channel(ggw) * grad_output)
        d_input = term if d_input is None else d_input + term
    if need_weight and ggx is not None:
        d_weight = g.channel_sum(grad_output * s * project(ggx))
    return d_input, d_weight


_group_norm_backward = fast_apply(GroupNormBackward, _backward_op)
register_autograd("manual_ops::group_norm_backward", GroupNormBackward)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    r"""Applies group normalization, with a hand-written backward. Same as :func:`torch.nn.functional.group_norm`.

    The C channels are split into ``num_groups`` groups of consecutive channels; each sample's group is
    normalised over its values, :math:`y = \gamma_c (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta_c`, with
    :math:`\mu, \sigma^2` the mean and biased variance of the group, and :math:`\gamma, \beta` per channel.

    Args:
        input: input tensor of shape :math:`(N, C, *)`.
        num_groups: number of groups; must divide C.
        weight: scale :math:`\gamma` of shape :math:`(C)`. Default: ``None`` (1).
        bias: shift :math:`\beta` of shape :math:`(C)`. Default: ``None`` (0).
        eps: added to the variance for numerical stability. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and memory format as the input.
    """
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    # torch's _verify_batch_size on the group view: one value per group cannot be normalised
    if input.shape[0] * input.shape[1] // num_groups * input.shape[2:].numel() == 1:  # // num_groups: as torch's
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{[input.shape[0] * input.shape[1] // num_groups, num_groups, *input.shape[2:]]}")
    return _group_norm_apply(input, num_groups, weight, bias, eps)[0]
