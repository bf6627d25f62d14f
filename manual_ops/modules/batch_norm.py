"""BatchNorm2d as a drop-in for torch.nn.BatchNorm2d, and the clamped-shift ClampedBatchNorm2d."""
import numbers

import torch
from torch import nn

from ..ops.batch_norm import FLOOR_SCALES, _apply


def module_args(module):
    """(bn_training, running_mean, running_var, num_batches_tracked) for a batch-norm module's call, as
    torch.nn's batch norms decide them: batch statistics in training, and in eval when there are no
    running stats; the running stats and the batch count are updated only in training, when tracked."""
    bn_training = module.training or (module.running_mean is None and module.running_var is None)
    use_buffers = not module.training or module.track_running_stats
    counter = module.num_batches_tracked if module.training and module.track_running_stats else None
    return (bn_training, module.running_mean if use_buffers else None, module.running_var if use_buffers else None,
            counter)


def local_forward(module, input):
    """A manual_ops batch-norm module's call on this process's batch alone (no synchronisation)."""
    bn_training, running_mean, running_var, counter = module_args(module)
    return _apply(input, running_mean, running_var, module.weight, module.bias, bn_training, module.momentum,
                  module.eps, counter, *module._floor())


class BatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor, parameters, buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``), init, repr, 4-D input check and state_dict as
    :class:`torch.nn.BatchNorm2d` (it subclasses it). Unlike torch, a call that raises
    leaves ``num_batches_tracked`` and the running stats untouched.
    """

    def _floor(self):
        return None, "sigma"

    def forward(self, input):
        self._check_input_dim(input)
        return local_forward(self, input)


class ClampedShift:
    """The clamped-shift option of a batch-norm module (a mixin): ``beta_floor``, ``floor_scale``, their repr."""

    def _checked_floor(self, beta_floor, floor_scale):
        """(beta_floor, floor_scale) as stored, or ValueError naming the bad one."""
        name = type(self).__name__
        if not isinstance(beta_floor, numbers.Real) or not beta_floor >= 0:
            raise ValueError(f"{name}: beta_floor must be a non-negative number, but got {beta_floor}")
        if floor_scale not in FLOOR_SCALES:
            raise ValueError(f"{name}: floor_scale must be 'sigma' or 'gamma', but got {floor_scale!r}")
        return float(beta_floor), floor_scale

    def _floor(self):
        return self.beta_floor, self.floor_scale

    def extra_repr(self):
        return f"{super().extra_repr()}, beta_floor={self.beta_floor}, floor_scale={self.floor_scale!r}"


class ClampedBatchNorm2d(ClampedShift, BatchNorm2d):
    r"""BatchNorm2d whose shift cannot go below :math:`-k s`: :math:`y = \gamma \hat{x} + \max(\beta, -k s)`.

    :math:`k` = ``beta_floor``; :math:`s = \sqrt{\sigma^2 + \epsilon}` of the channel (batch statistics in
    training, running statistics in eval) for ``floor_scale='sigma'``, or :math:`|\gamma|` for ``'gamma'``.
    The backward is the exact gradient of that (see docs/derivations.md). To also project the stored
    :math:`\beta` after each optimizer step, as the lecture notes do, use
    :func:`manual_ops.register_clamp_beta_hook`. The state_dict is exactly BatchNorm2d's.

    Args:
        num_features: C.
        beta_floor: :math:`k \ge 0`. Default: 1.0.
        floor_scale: ``'sigma'`` or ``'gamma'``. Default: ``'sigma'``.
        The rest (keyword-only, so that ``eps`` can't be taken for ``beta_floor``): as :class:`torch.nn.BatchNorm2d`.
    """

    def __init__(self, num_features, beta_floor=1.0, *, floor_scale="sigma", eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, bias=True):
        floor = self._checked_floor(beta_floor, floor_scale)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.beta_floor, self.floor_scale = floor


@torch.no_grad()
def clamp_beta_(model: nn.Module) -> nn.Module:
    r"""The lecture notes' update rule, as a projection: :math:`\beta \leftarrow \max(\beta, -k s)` in place.

    For every clamped batch norm (:class:`ClampedBatchNorm2d`, ``ClampedSyncBatchNorm``) in ``model`` with a shift, :math:`s` is
    :math:`\sqrt{\text{running\_var} + \epsilon}` (``floor_scale='sigma'``) or :math:`|\gamma|`
    (``'gamma'``). A 'sigma' module without running stats has no running :math:`\sigma` and is
    left as it is (its forward still clamps with the batch :math:`\sigma`). Returns ``model``.
    """
    for m in model.modules():
        if not isinstance(m, ClampedShift) or m.bias is None:
            continue
        if m.floor_scale == "sigma":
            if m.running_var is None:
                continue
            scale = (m.running_var + m.eps).sqrt()
        else:
            scale = m.weight.abs()
        m.bias.clamp_(min=-m.beta_floor * scale)
    return model


def register_clamp_beta_hook(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Runs :func:`clamp_beta_` on ``model`` after every ``optimizer.step()``; one line, no other change
    to a training loop. Returns the hook's handle (``handle.remove()`` detaches it)."""
    return optimizer.register_step_post_hook(lambda _optimizer, _args, _kwargs: clamp_beta_(model))
