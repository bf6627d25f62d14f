"""batch_norm: the autograd wiring around ``manual_ops::batch_norm_forward`` / ``batch_norm_backward``."""
import torch
from torch.autograd.function import once_differentiable

from .._utils import (applier, below_autograd, check_not_differentiable, fast_apply, memory_format_of,
                      register_autograd)
from ._tangents import output_meta, sum_tangents, zeros_for_missing
from ._vmap import fold, loop, out_dims_of, unfold

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.batch_norm_forward)
_backward_op = below_autograd(_ops.batch_norm_backward)

FLOOR_SCALES = ("sigma", "gamma")

# torch's own (functorch's batch rule for batch norm), word for word
_UNBATCHED_RUNNING_STATS = (
    "Batch norm got a batched tensor as input while the running_mean or running_var, which will be updated in "
    "place, were not batched.\nIf you are using a module and do not need eval mode, please set "
    "`track_running_stats` to be False.If you are using a prebuilt module and do not need eval mode, please see "
    "the functorch website for resources on how to patch your module to work with vmap")


def _param_dtype(input, *params):
    """The dtype of the per-channel tensors; mirrors ``param_type`` in csrc/batch_norm.cpp: float32 for a
    bfloat16/float16 input with float32 parameters, else the input's."""
    low = input.dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if low and any(p is not None and p.dtype == torch.float32 for p in params) else input.dtype


@torch.library.register_fake("manual_ops::batch_norm_forward")
def _batch_norm_forward_fake(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                             momentum, eps, beta_floor, floor_scale):
    torch._check(input.dim() >= 2, lambda: "batch_norm: expected input of size (N, C, *)")
    out = torch.empty_like(input, memory_format=memory_format_of(input))
    dtype = _param_dtype(input, weight, bias, running_mean, running_var)
    if not training and dtype in (torch.bfloat16, torch.float16):
        dtype = torch.float32  # eval saves float32 statistics; see the top of csrc/batch_norm.cpp
    return out, input.new_empty((input.shape[1],), dtype=dtype), input.new_empty((input.shape[1],), dtype=dtype)


@torch.library.register_fake("manual_ops::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor,
                              floor_scale, output_mask):
    dtype = _param_dtype(input, weight, bias, *((save_mean, save_invstd) if training else ()))
    grad_input = torch.empty_like(input, memory_format=memory_format_of(input)) if output_mask[0] else None
    grad_weight = input.new_empty((input.shape[1],), dtype=dtype) if output_mask[1] else None
    grad_bias = input.new_empty((input.shape[1],), dtype=dtype) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


class BatchNormFunction(torch.autograd.Function):
    """batch_norm whose backward is the hand-written ``manual_ops::batch_norm_backward``.

    ``apply(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
    momentum, eps, beta_floor, floor_scale)``, the arguments of the op: those of
    :func:`torch.nn.functional.batch_norm`, plus ``num_batches_tracked`` (incremented in
    training when given; with ``momentum=None`` the running stats are a cumulative average
    over it), ``beta_floor`` (None, or k >= 0 for the clamped shift max(beta, -k*s)) and
    ``floor_scale`` ('sigma' or 'gamma': what s is). Only input, weight and bias get grads.
    The backward is differentiable (:class:`BatchNormBackward`), and ``jvp`` gives forward-mode
    AD (:func:`batch_norm_tangent`).
    """

    @staticmethod
    def forward(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                beta_floor, floor_scale):
        return _forward_op(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                           eps, beta_floor, floor_scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, _, _, _, training, _, _, beta_floor, floor_scale = inputs
        _, save_mean, save_invstd = output
        ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)
        ctx.save_for_forward(input, weight, bias, save_mean, save_invstd)
        ctx.bn_args = (training, beta_floor, floor_scale)
        ctx.mark_non_differentiable(save_mean, save_invstd)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], needs[2]]
        grad_input, grad_weight, grad_bias = _batch_norm_backward(grad_output, input, weight, bias, save_mean,
                                                                  save_invstd, *ctx.bn_args, mask)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_bias, *_):
        saved = ctx.saved_tensors
        return batch_norm_tangent(*saved, *ctx.bn_args, d_input, d_weight, d_bias), None, None

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
             eps, beta_floor, floor_scale):
        x_bdim, w_bdim, b_bdim, rm_bdim, rv_bdim, count_bdim = in_dims[:6]
        B = info.batch_size
        options = (training, momentum, eps, beta_floor, floor_scale)
        if training and x_bdim is not None and ((running_mean is not None and rm_bdim is None)
                                                or (running_var is not None and rv_bdim is None)):
            raise RuntimeError(_UNBATCHED_RUNNING_STATS)  # torch's rule: B different updates of one buffer
        if count_bdim is not None:  # the op takes one batch count, the slices have their own: loop
            return loop(B, in_dims, _batch_norm_apply, input, weight, bias, running_mean, running_var,
                        num_batches_tracked, *options)
        if not training and w_bdim is None and b_bdim is None and rm_bdim is None and rv_bdim is None:
            # eval, only the input vmapped: fold into N, the statistics are the running ones for every sample
            output, save_mean, save_invstd = _batch_norm_apply(fold(input, x_bdim, B, 0), weight, bias, running_mean,
                                                               running_var, num_batches_tracked, *options)
            return (unfold(output, 0, B), save_mean, save_invstd), (0, None, None)
        # fold into channels: every channel is normalised on its own (its statistics, its running stats)
        stats = [fold(t, d, B, 0) for t, d in ((running_mean, rm_bdim), (running_var, rv_bdim))]
        output, save_mean, save_invstd = _batch_norm_apply(
            fold(input, x_bdim, B, 1), fold(weight, w_bdim, B, 0), fold(bias, b_bdim, B, 0), *stats,
            num_batches_tracked, *options)
        if training:  # the folded running stats were updated, in place: the updates go to the buffers
            for buffer, bdim, folded in zip((running_mean, running_var), (rm_bdim, rv_bdim), stats):
                if buffer is not None and bdim is None:  # not vmapped: every slice saw the same input, same update
                    buffer.copy_(folded.view(B, -1)[0])
                elif buffer is not None:
                    buffer.movedim(bdim, 0).copy_(folded.view(B, -1))
        outputs = (unfold(output, 1, B), unfold(save_mean, 0, B), unfold(save_invstd, 0, B))
        return outputs, (1, 0, 0)


_batch_norm_apply = applier(BatchNormFunction, _ops.batch_norm_forward, native_autograd=True)


class _Channels:
    """Per-channel views and means over the M values of each channel of an (N, C, *) tensor."""

    def __init__(self, input):
        self.dims = [0, *range(2, input.dim())]
        self.shape = [1, input.shape[1], *[1] * (input.dim() - 2)]

    def view(self, t):
        return t.view(self.shape)

    def mean(self, t):
        return t.mean(self.dims, keepdim=True)

    def sum(self, t):
        return t.sum(self.dims)


def _clamped(weight, bias, save_invstd, beta_floor, floor_scale):
    """Channels whose shift is the floor: beta < -k*s (as ``shift_floor`` in batch_norm.cpp), or None."""
    if beta_floor is None or bias is None:  # no bias: beta = 0 >= -k*s
        return None
    s = 1 / save_invstd if floor_scale == "sigma" else weight.abs() if weight is not None else torch.ones_like(bias)
    return bias < -beta_floor * s


def batch_norm_tangent(input, weight, bias, save_mean, save_invstd, training, beta_floor, floor_scale, d_input,
                       d_weight, d_bias):
    r"""The tangent of batch_norm's output for tangents (d_input, d_weight, d_bias), any of them None.

    With :math:`\hat x = (x - \mu) s`, :math:`s = 1/\sqrt{\sigma^2 + \epsilon}`, and in training
    :math:`\dot\mu = E[\dot x]`, :math:`\dot s = -s^2 E[\hat x \dot x]`:
    :math:`\dot y = \gamma s P(\dot x) + \dot\gamma \hat x + \dot\beta'` with
    :math:`P(v) = v - E[v] - \hat x E[\hat x v]` (in eval :math:`P(v) = v`). The clamped shift
    :math:`\beta' = -k s'` has :math:`\dot\beta' = -k E[\hat x \dot x]` (s' = sigma, training; 0 in eval)
    or :math:`-k\,\mathrm{sign}(\gamma)\dot\gamma` (s' = |gamma|). It is also the grad w.r.t. grad_output
    of the backward (the adjoint of a linear map's adjoint). Derivation: docs/derivations.md.
    """
    ch = _Channels(input)
    s = ch.view(save_invstd)
    xhat = (input - ch.view(save_mean)) * s
    out = None
    if d_input is not None:
        projected = d_input - ch.mean(d_input) - xhat * ch.mean(xhat * d_input) if training else d_input
        out = (ch.view(weight) * s if weight is not None else s) * projected
    if d_weight is not None:
        out = ch.view(d_weight) * xhat if out is None else out + ch.view(d_weight) * xhat
    clamped = _clamped(weight, bias, save_invstd, beta_floor, floor_scale)
    shift = None if d_bias is None else ch.view(d_bias)
    if clamped is not None:
        floor = None
        if floor_scale == "sigma" and training and d_input is not None:
            floor = -beta_floor * ch.mean(xhat * d_input)
        elif floor_scale == "gamma" and d_weight is not None:
            floor = ch.view(-beta_floor * weight.sign() * d_weight)
        zero = torch.zeros((), dtype=input.dtype)
        shift = torch.where(ch.view(clamped), zero if floor is None else floor, zero if shift is None else shift)
    if shift is not None:
        out = shift.expand(input.shape) + (0 if out is None else out)
    return out if out is not None else torch.zeros_like(input)


class BatchNormBackward(torch.autograd.Function):
    r"""``manual_ops::batch_norm_backward`` as a differentiable function of (grad_output, input, weight):
    ``apply(grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor,
    floor_scale, output_mask)``, where save_mean and save_invstd are the forward's (functions of
    the input in training). bias enters only through the clamp's choice of channels, so gets no grad.

    For the grads (ggx, ggw, ggb) of (grad_input, grad_weight, grad_bias), with
    :math:`\delta` = grad_output, :math:`a = E[\delta]`, :math:`b = E[\delta \hat x]` and :math:`P` as in
    :func:`batch_norm_tangent`, the backward returns (derivation: docs/derivations.md,
    "batch_norm: second order"):

    - grad_output: :func:`batch_norm_tangent` at tangents (ggx, ggw, ggb);
    - input, training: :math:`-\gamma s^2 \big[(E[ggx\,\delta] - a E[ggx] - b E[ggx\,\hat x])\hat x
      + E[ggx\,\hat x] P\delta + b\,P(ggx)\big] + s\,ggw\,P\delta`, and for clamped
      channels with s' = sigma also :math:`-k a s P(ggx)`; eval: :math:`s\,ggw\,\delta`;
    - weight: :math:`s \sum ggx\,P\delta` (:math:`P = 1` in eval).

    It is differentiable once (a third derivative raises).
    """

    @staticmethod
    def forward(grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor, floor_scale,
                output_mask):
        return _backward_op(grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor,
                            floor_scale, output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:6])
        ctx.save_for_forward(*inputs[:6])
        ctx.bn_args = inputs[6:9]
        ctx.output_mask = inputs[9]
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggw, ggb):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad_output = None
        if needs[0] and not (ggx is None and ggw is None and ggb is None):
            d_grad_output = batch_norm_tangent(*saved[1:], *ctx.bn_args, ggx, ggw, ggb)
        d_input, d_weight = _second_derivative_terms(*saved, *ctx.bn_args, ggx, ggw, needs[1], needs[2])
        return d_grad_output, d_input, d_weight, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_grad_output, d_input, d_weight, *_):
        r"""The backward is :math:`J^T \delta` for the Jacobian J of the forward w.r.t. (input, weight, bias):
        its tangent is :math:`J^T \dot\delta` (the backward again) plus :math:`H (\dot x, \dot\gamma)`, H the
        Hessian of :math:`\langle \delta, y \rangle`, which is symmetric: that is what :meth:`backward` gives
        for (ggx, ggw) = (:math:`\dot x, \dot\gamma`) (its grad_input and grad_weight rows; the bias rows of H
        are zero). Derivation: docs/derivations.md, "vmap rules"."""
        saved = ctx.saved_tensors
        mask = list(ctx.output_mask)
        tangents = [None, None, None]
        if d_grad_output is not None:
            tangents = list(_batch_norm_backward(d_grad_output, *saved[1:], *ctx.bn_args, mask))
        terms = _second_derivative_terms(*saved, *ctx.bn_args, d_input, d_weight, mask[0], mask[1])
        return zeros_for_missing(sum_tangents(tangents, terms), ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor,
             floor_scale, output_mask):
        B = info.batch_size
        options = (training, beta_floor, floor_scale, output_mask)
        if not training and all(d is None for d in in_dims[2:6]) and list(output_mask) == [True, False, False]:
            # eval, grad_input alone: fold into N, as the forward's
            grad_input = _batch_norm_backward(*(fold(t, d, B, 0) for t, d in zip((grad_output, input), in_dims)),
                                              weight, bias, save_mean, save_invstd, *options)[0]
            return (unfold(grad_input, 0, B), None, None), (0, None, None)
        # fold into channels (as the forward's): the per-channel grads of the folded op are the slices' stacked
        per_sample = [fold(t, d, B, 1) for t, d in zip((grad_output, input), in_dims)]
        per_channel = [fold(t, d, B, 0) for t, d in zip((weight, bias, save_mean, save_invstd), in_dims[2:6])]
        grad_input, grad_weight, grad_bias = _batch_norm_backward(*per_sample, *per_channel, *options)
        grads = (unfold(grad_input, 1, B), unfold(grad_weight, 0, B), unfold(grad_bias, 0, B))
        return grads, out_dims_of(grads, (1, 0, 0))


def _second_derivative_terms(grad_output, input, weight, bias, save_mean, save_invstd, training, beta_floor,
                             floor_scale, ggx, ggw, need_input, need_weight):
    """The (input, weight) grads of :class:`BatchNormBackward` for the grads (ggx, ggw) of its outputs
    grad_input and grad_weight (None where not needed or zero); see its docstring."""
    d_input = d_weight = None
    ch = _Channels(input)
    s = ch.view(save_invstd)
    xhat = (input - ch.view(save_mean)) * s
    delta = grad_output
    if training:
        a, b = ch.mean(delta), ch.mean(delta * xhat)
        delta = delta - a - xhat * b  # P(delta)
    if need_input and ggx is not None and training:
        gamma = ch.view(weight) if weight is not None else 1
        projected = ggx - ch.mean(ggx) - xhat * ch.mean(xhat * ggx)  # P(ggx)
        d_input = -gamma * s * s * ((ch.mean(ggx * grad_output) - a * ch.mean(ggx) - b * ch.mean(ggx * xhat)) * xhat
                                    + ch.mean(ggx * xhat) * delta + b * projected)
        clamped = _clamped(weight, bias, save_invstd, beta_floor, floor_scale)
        if clamped is not None and floor_scale == "sigma":
            d_input = d_input - torch.where(ch.view(clamped), beta_floor * a * s, 0) * projected
    if need_input and ggw is not None:
        term = ch.view(ggw) * s * delta
        d_input = term if d_input is None else d_input + term
    if need_weight and ggx is not None:
        d_weight = save_invstd * ch.sum(ggx * delta)
    return d_input, d_weight


_batch_norm_backward = fast_apply(BatchNormBackward, _backward_op)
# batch_norm_forward's autograd kernel is C++ (with BatchNormFunction's derivatives); its backward op's is
# BatchNormBackward
register_autograd("manual_ops::batch_norm_backward", BatchNormBackward)


def _apply(input, running_mean, running_var, weight, bias, training, momentum, eps, num_batches_tracked=None,
           beta_floor=None, floor_scale="sigma"):
    """BatchNormFunction.apply, returning only the output (the saved statistics are internal)."""
    check_not_differentiable("batch_norm_forward", "running_mean", running_mean)
    check_not_differentiable("batch_norm_forward", "running_var", running_var)
    if input.dim() == 1 and input.numel() == 0:
        # As torch: an empty 1-D input is a batch of no samples of no channels.
        return _apply(input.view(0, 0), running_mean, running_var, weight, bias, training, momentum, eps,
                      num_batches_tracked, beta_floor, floor_scale).view(0)
    return _batch_norm_apply(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
                             momentum, eps, beta_floor, floor_scale)[0]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    r"""Applies batch normalization per channel, with a hand-written backward. Same as :func:`torch.nn.functional.batch_norm`.

    :math:`y = \gamma \, (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, per channel, where in training
    :math:`\mu, \sigma^2` are the mean and biased variance of the batch over N and the spatial dims
    (and the running stats are updated in place with the unbiased variance), and in eval they are
    the running stats.

    Args:
        input: input tensor of shape :math:`(N, C, *)`.
        running_mean: running mean of shape :math:`(C)`, or ``None``. Updated in place in training.
        running_var: running variance of shape :math:`(C)`, or ``None``. Updated in place in training.
        weight: scale :math:`\gamma` of shape :math:`(C)`. Default: ``None`` (1).
        bias: shift :math:`\beta` of shape :math:`(C)`. Default: ``None`` (0).
        training: use the batch statistics (and update the running stats). Default: ``False``.
        momentum: weight of the batch statistics in the running-stats update. Default: 0.1.
        eps: added to the variance for numerical stability. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and memory format as the input.
    """
    if momentum is None:  # as torch: None (a cumulative average) is for modules, which count batches
        raise TypeError("batch_norm(): argument 'momentum' must be float, not NoneType")
    return _apply(input, running_mean, running_var, weight, bias, training, momentum, eps)


def clamped_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5, beta_floor=1.0, floor_scale="sigma"):
    r"""Batch normalization whose shift cannot go below :math:`-k s`: :func:`batch_norm` with
    :math:`\beta' = \max(\beta, -k s)` in place of :math:`\beta`, and the exact gradient of that.

    Args:
        input, running_mean, running_var, weight, bias, training, momentum, eps: as in :func:`batch_norm`.
        beta_floor: :math:`k \ge 0`. Default: 1.0.
        floor_scale: ``'sigma'`` (:math:`s = \sqrt{\sigma^2 + \epsilon}`, the batch statistic in training
            and the running one in eval) or ``'gamma'`` (:math:`s = |\gamma|`). Default: ``'sigma'``.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and memory format as the input.
    """
    return _apply(input, running_mean, running_var, weight, bias, training, momentum, eps,
                  beta_floor=beta_floor, floor_scale=floor_scale)
