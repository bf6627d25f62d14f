"""SyncBatchNorm as a drop-in for torch.nn.SyncBatchNorm (any backend, CPU included), its clamped variant, and the
conversions between batch-norm kinds (convert_sync_batchnorm's, which manual_ops.convert uses too)."""
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.sync_batch_norm import SyncBatchNormFunction, sync_group
from ._swap import check_devices, same_state_as, swap
from .batch_norm import BatchNorm2d, ClampedBatchNorm2d, ClampedShift, local_forward, module_args


class SyncBatchNorm(_BatchNorm):
    r""":class:`torch.nn.SyncBatchNorm` whose forward and backward are manual_ops' hand-written kernels, with the
    ranks' statistics combined over ``torch.distributed`` by any backend (gloo on CPU too).

    In training, with torch.distributed initialised and a ``process_group`` (default: the world) of more
    than one rank, the mean and variance are those of the batch over all ranks: one all_gather of each
    rank's per-channel (count, mean, sum of squared deviations) in the forward, one all_reduce of the
    per-channel sums of dx in the backward (docs/derivations.md). Ranks may have different batch sizes,
    zero included. The running stats are updated with the global statistics, identically on every rank.
    In eval mode, or without an initialised group of more than one rank, it is plain batch norm and
    communicates nothing, as torch's. The gradients of weight and bias are this rank's share:
    :class:`~torch.nn.parallel.DistributedDataParallel` averages them over the ranks.

    Same constructor, parameters, buffers and state_dict as :class:`torch.nn.SyncBatchNorm`; input
    :math:`(N, C, +)`. It is a ``_BatchNorm`` but not a ``torch.nn.SyncBatchNorm``, so DDP on CPU accepts
    it. Unlike torch, a call that raises leaves the running stats and ``num_batches_tracked`` untouched.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, device, dtype, bias: as :class:`torch.nn.BatchNorm2d`.
        process_group: the group whose ranks share statistics. Default: ``None`` (the world).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _floor(self):
        return None, "sigma"

    def forward(self, input):
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        group = sync_group(self.process_group) if self.training else None  # eval: torch never synchronises
        if group is None:
            return local_forward(self, input)
        _, running_mean, running_var, counter = module_args(self)
        return SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean, running_var, counter,
                                           self.momentum, self.eps, *self._floor(), group)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Converts every batch norm in ``module`` (torch's BatchNorm1d/2d/3d and SyncBatchNorm, manual_ops'
        BatchNorm2d and SyncBatchNorm: exact types) to :class:`SyncBatchNorm`, and manual_ops' clamped ones
        to :class:`ClampedSyncBatchNorm` with the same floor, in place; see :func:`manual_ops.convert_sync_batchnorm`.
        Returns ``module``, or the new layer when ``module`` itself is a batch norm. Raises NotImplementedError,
        changing nothing, if a batch norm to convert is on a device manual_ops has no kernels for."""
        check_devices(module, TO_SYNC | CLAMPED)
        return swap(module, lambda m: to_sync(m, process_group))


class ClampedSyncBatchNorm(ClampedShift, SyncBatchNorm):
    r""":class:`SyncBatchNorm` whose shift cannot go below :math:`-k s`, as :class:`ClampedBatchNorm2d`
    (:math:`s` = the global :math:`\sigma` in synchronised training). The state_dict is SyncBatchNorm's.

    Args:
        num_features: C.
        beta_floor: :math:`k \ge 0`. Default: 1.0.
        floor_scale: ``'sigma'`` or ``'gamma'``. Default: ``'sigma'``.
        The rest (keyword-only): as :class:`SyncBatchNorm`.
    """

    def __init__(self, num_features, beta_floor=1.0, *, floor_scale="sigma", eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, bias=True):
        floor = self._checked_floor(beta_floor, floor_scale)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device, dtype,
                         bias=bias)
        self.beta_floor, self.floor_scale = floor


# convert_sync_batchnorm: these batch norms (exact types) become SyncBatchNorm, the clamped ones ClampedSyncBatchNorm.
TO_SYNC = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, BatchNorm2d, SyncBatchNorm}
CLAMPED = {ClampedBatchNorm2d, ClampedSyncBatchNorm}


def batch_norm_as(module, cls, process_group=None, floor=None):
    """``module`` (a batch norm) as a ``cls`` one sharing its state (see same_state_as). A clamped ``cls``
    gets ``floor`` = (beta_floor, floor_scale), or ``module``'s own when None; a synchronised one
    ``process_group``; options ``cls`` lacks are dropped."""
    new = same_state_as(module, cls)
    for name in ("beta_floor", "floor_scale", "process_group"):
        new.__dict__.pop(name, None)
    if issubclass(cls, ClampedShift):
        new.beta_floor, new.floor_scale = new._checked_floor(*(floor or (module.beta_floor, module.floor_scale)))
    if issubclass(cls, (nn.SyncBatchNorm, SyncBatchNorm)):
        new.process_group = process_group
    return new


def to_sync(module, process_group, clamped_beta=None):
    """``module`` as manual_ops' SyncBatchNorm (clamped ones, or all when ``clamped_beta`` is given: the
    clamped variant), or None when it is not a batch norm that convert_sync_batchnorm converts."""
    if type(module) in CLAMPED:
        return batch_norm_as(module, ClampedSyncBatchNorm, process_group)
    if type(module) not in TO_SYNC:
        return None
    if clamped_beta is None:
        return batch_norm_as(module, SyncBatchNorm, process_group)
    return batch_norm_as(module, ClampedSyncBatchNorm, process_group, floor=(clamped_beta, "sigma"))
