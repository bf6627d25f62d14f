"""batch_norm: the autograd wiring around ``manual_ops::batch_norm_forward`` / ``batch_norm_backward``."""
import torch
from torch.autograd.function import once_differentiable

from .._utils import memory_format_of

_ops = torch.ops.manual_ops

FLOOR_SCALES = ("sigma", "gamma")


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
    """

    @staticmethod
    def forward(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                beta_floor, floor_scale):
        return _ops.batch_norm_forward(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                       training, momentum, eps, beta_floor, floor_scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, _, _, _, training, _, _, beta_floor, floor_scale = inputs
        _, save_mean, save_invstd = output
        ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)
        ctx.bn_args = (training, beta_floor, floor_scale)
        ctx.mark_non_differentiable(save_mean, save_invstd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, _grad_mean, _grad_invstd):
        input, weight, bias, save_mean, save_invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], needs[2]]
        grad_input, grad_weight, grad_bias = _ops.batch_norm_backward(
            grad_output, input, weight, bias, save_mean, save_invstd, *ctx.bn_args, mask)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None, None



def _apply(input, running_mean, running_var, weight, bias, training, momentum, eps, num_batches_tracked=None,
           beta_floor=None, floor_scale="sigma"):
    """BatchNormFunction.apply, returning only the output (the saved statistics are internal)."""
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, num_batches_tracked, training,
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
