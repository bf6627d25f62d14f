"""sync_batch_norm: batch norm whose statistics are those of the whole batch over the ranks of a process group.

Forward: ``manual_ops::batch_norm_stats`` gives each rank's per-channel (mean, m2); one all_gather
of [count, mean, m2]; Chan's formula combines them (float64) into the global mean and variance;
``manual_ops::batch_norm_forward`` in eval mode normalises with them. Backward:
``manual_ops::batch_norm_backward_reduce`` gives the local [sum delta, sum delta * xhat]; one
all_reduce sums them; ``manual_ops::sync_batch_norm_backward`` forms dx from the global sums and
dgamma, dbeta from the local ones. Derivation: docs/derivations.md, "synchronised batch norm".
"""
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .._utils import check_not_differentiable
from .batch_norm import _apply, _batch_norm_backward_fake, _param_dtype

_ops = torch.ops.manual_ops


@torch.library.register_fake("manual_ops::batch_norm_stats")
def _batch_norm_stats_fake(input):
    torch._check(input.dim() >= 2, lambda: "batch_norm_stats: expected input of size (N, C, *)")
    return input.new_empty((2, input.shape[1]), dtype=torch.float64)


@torch.library.register_fake("manual_ops::batch_norm_backward_reduce")
def _batch_norm_backward_reduce_fake(grad_output, input, mean, invstd):
    return input.new_empty((2, input.shape[1]), dtype=torch.float64)


@torch.library.register_fake("manual_ops::sync_batch_norm_backward")
def _sync_batch_norm_backward_fake(grad_output, input, weight, bias, mean, invstd, local_sums, global_sums, count,
                                   beta_floor, floor_scale, output_mask):
    return _batch_norm_backward_fake(grad_output, input, weight, bias, mean, invstd, True, beta_floor, floor_scale,
                                     output_mask)


def combine_stats(counts, means, m2s):
    r"""Chan et al.'s parallel formula for R groups: per channel, from each group's count :math:`n_r`,
    mean :math:`\mu_r` and sum of squared deviations :math:`m2_r` (shapes (R, 1), (R, C), (R, C)),

    :math:`n = \sum n_r,\ \mu = \sum n_r \mu_r / n,\ m2 = \sum m2_r + \sum n_r (\mu_r - \mu)^2`.

    Groups with :math:`n_r = 0` add nothing. Returns (n, mean, m2); mean and m2 are NaN when n = 0.
    """
    n = counts.sum()
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return int(n.item()), mean, m2


def _all_gather(t, group):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return torch.stack(parts)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training batch norm over the batch of all ranks of ``group``, backward by hand.

    ``apply(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps,
    beta_floor, floor_scale, group)``: as :class:`manual_ops.functional.BatchNormFunction` in
    training mode, plus ``group``: the process group whose ranks share the statistics, or None
    for this process alone (the same computation without communication). Every rank of the group
    must call it (a rank without samples too), in the same order, with the same number of channels.
    The running stats are updated, identically on every rank, with the global mean and unbiased
    variance. Only input, weight and bias get grads; weight and bias get this rank's share.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, beta_floor,
                floor_scale, group):
        if not eps > 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
        if momentum is None and running_mean is not None and num_batches_tracked is None:
            raise RuntimeError("sync_batch_norm: momentum=None (a cumulative average) needs num_batches_tracked")
        C = input.shape[1]
        local = _ops.batch_norm_stats(input)
        packed = torch.cat([local.new_full((1,), input.numel() // max(C, 1)), local.flatten()])
        gathered = packed[None] if group is None else _all_gather(packed, group)
        count, mean, m2 = combine_stats(gathered[:, :1], gathered[:, 1:C + 1], gathered[:, C + 1:])
        if count == 1:
            ranks = 1 if group is None else dist.get_world_size(group)
            raise ValueError(f"Expected more than 1 value per channel when training, got 1 over the {ranks} "
                             f"rank{'s' if ranks > 1 else ''} of the process group (input size {tuple(input.shape)} here)")
        if count == 0:  # every rank's batch is empty: nothing to normalise, no statistics
            mean, var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
        else:
            var = m2 / count
        stats_dtype = _param_dtype(input, weight, bias, running_mean, running_var)
        out, save_mean, save_invstd = _ops.batch_norm_forward(
            input, weight, bias, mean.to(stats_dtype), var.to(stats_dtype), None, False, 0.0, eps, beta_floor,
            floor_scale)
        with torch.no_grad():  # the forward succeeded: now update the running stats, as one BatchNorm would
            if running_mean is not None and count > 0:
                m = momentum if momentum is not None else 1.0 / (num_batches_tracked.item() + 1)
                running_mean.copy_((1 - m) * running_mean.double() + m * mean)
                running_var.copy_((1 - m) * running_var.double() + m * m2 / (count - 1))
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)
        ctx.save_for_backward(input, weight, bias, save_mean, save_invstd)
        ctx.args = (count, beta_floor, floor_scale, group)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, bias, mean, invstd = ctx.saved_tensors
        count, beta_floor, floor_scale, group = ctx.args
        needs = ctx.needs_input_grad
        local = _ops.batch_norm_backward_reduce(grad_output, input, mean, invstd)
        total = local
        if needs[0] and group is not None:  # every rank needs dx alike, so all or none take part
            total = local.clone()
            dist.all_reduce(total, group=group)
        mask = [needs[0], needs[1] and weight is not None, needs[2] and bias is not None]
        grad_input, grad_weight, grad_bias = _ops.sync_batch_norm_backward(
            grad_output, input, weight, bias, mean, invstd, local, total, count, beta_floor, floor_scale, mask)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None, None


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5,
                    process_group=None, num_batches_tracked=None, beta_floor=None, floor_scale="sigma"):
    r"""Batch normalization in training mode with the statistics of the batch over all ranks of a process group.

    :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` per channel, where :math:`\mu, \sigma^2`
    are the mean and biased variance over N, the spatial dims and every rank's batch; the running
    stats are updated in place with the global unbiased variance. The backward is hand-written:
    one all_reduce of the per-channel sums that dx needs; the weight and bias gradients are this
    rank's share (DistributedDataParallel averages them). Every rank of the group must call it.

    Args:
        input: input tensor of shape :math:`(N, C, *)`; N may differ between ranks, and be 0.
        running_mean, running_var, weight, bias, momentum, eps: as in :func:`manual_ops.functional.batch_norm`.
        process_group: the group to synchronise over. Default: ``None``, the default (world) group; if
            torch.distributed is not initialised, or the group has one rank, this is plain batch norm.
        num_batches_tracked: incremented when given; needed for ``momentum=None`` (cumulative average).
        beta_floor, floor_scale: the clamped shift of :func:`manual_ops.functional.clamped_batch_norm`
            (s = the global :math:`\sigma` for ``'sigma'``); ``beta_floor=None`` is plain batch norm.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and memory format as the input.
    """
    group = sync_group(process_group)
    if group is None:
        return _apply(input, running_mean, running_var, weight, bias, True, momentum, eps, num_batches_tracked,
                      beta_floor, floor_scale)
    check_not_differentiable("sync_batch_norm", "running_mean", running_mean)
    check_not_differentiable("sync_batch_norm", "running_var", running_var)
    return SyncBatchNormFunction.apply(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                                       eps, beta_floor, floor_scale, group)


def sync_group(process_group=None):
    """The group to synchronise over (``None``: the world), or None when there is nothing to synchronise:
    torch.distributed unavailable or not initialised, or a group of one rank (as torch.nn.SyncBatchNorm)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None
