"""Swap torch.nn layers for manual_ops' hand-written-backward ones in a model, and back.

Table-driven: a module is converted only when its type is exactly one of the built-in types
below, so subclasses and unknown modules are left alone. The new module takes over the old
one's parameters and buffers (the same tensor objects: no copies, so requires_grad, device,
dtype and an optimizer built beforehand all carry over), its train/eval mode and hooks;
state_dict keys are unchanged, so state_dicts load strictly either way.
"""
import functools

from torch import nn

from . import nn as mnn
from .modules._swap import check_devices, same_state_as, swap
from .modules.normalization import channel_layer_norm_for
from .modules.sync_batch_norm import CLAMPED, TO_SYNC, batch_norm_as, to_sync

# The built-in layer kinds that manual_ops replaces (same class names in torch.nn and manual_ops.nn).
_KINDS = ["Conv1d", "Conv2d", "ConvTranspose2d", "BatchNorm2d", "SyncBatchNorm", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "ReLU",
          "Sigmoid", "Tanh", "SiLU", "GELU", "LeakyReLU", "ELU", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid",
          "Softplus", "Dropout", "Dropout2d", "GroupNorm", "LayerNorm", "InstanceNorm1d", "InstanceNorm2d",
          "InstanceNorm3d"]
TO_MANUAL = {getattr(nn, k): getattr(mnn, k) for k in _KINDS}
TO_BUILTIN = {ours: builtin for builtin, ours in TO_MANUAL.items()}
TO_BUILTIN[mnn.ClampedBatchNorm2d] = nn.BatchNorm2d
TO_BUILTIN[mnn.ClampedSyncBatchNorm] = nn.SyncBatchNorm

def convert(model: nn.Module, *, clamped_beta: float | None = None, sync_bn: bool = False,
            process_group=None) -> nn.Module:
    """Replaces, in place, every built-in layer of a kind manual_ops provides (exact type match) by
    manual_ops' version, and returns the model (a new object only when the root itself is converted).
    torchvision's LayerNorm2d (ConvNeXt's LayerNorm over the channels) becomes a subclass of it with manual_ops'
    layer_norm; torchvision's composite blocks (Conv2dNormActivation, ...) are converted by their contents.

    Args:
        model: any ``torch.nn.Module``, on the CPU (or the meta device).
        clamped_beta: if given, batch norms become ``ClampedBatchNorm2d(beta_floor=clamped_beta)``
            (``ClampedSyncBatchNorm`` with ``sync_bn``).
        sync_bn: batch norms become :class:`manual_ops.nn.SyncBatchNorm`, as by :func:`convert_sync_batchnorm`.
        process_group: with ``sync_bn``, the group whose ranks share statistics. Default: the world.

    Raises:
        NotImplementedError: a layer to convert is on another device (cuda, mps, ...); nothing is changed.
    """
    channel_layer_norms = {type(m) for m in model.modules() if channel_layer_norm_for(type(m))}
    check_devices(model, set(TO_MANUAL) | channel_layer_norms | (TO_SYNC | CLAMPED if sync_bn else set()))

    def replace(module):
        if sync_bn and (type(module) in TO_SYNC or type(module) in CLAMPED):
            return to_sync(module, process_group, clamped_beta)
        cls = TO_MANUAL.get(type(module))
        if cls is None:
            cls = channel_layer_norm_for(type(module))  # torchvision's LayerNorm2d, by its name
            if cls is None:
                return None
            TO_BUILTIN[cls] = type(module)
        if clamped_beta is not None and cls in (mnn.BatchNorm2d, mnn.SyncBatchNorm):
            clamped = mnn.ClampedBatchNorm2d if cls is mnn.BatchNorm2d else mnn.ClampedSyncBatchNorm
            return batch_norm_as(module, clamped, getattr(module, "process_group", None), (clamped_beta, "sigma"))
        return same_state_as(module, cls)

    return swap(model, replace)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """:meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` for manual_ops: every batch norm of an exact
    type torch.nn.BatchNorm1d/2d/3d or SyncBatchNorm, or manual_ops.nn.BatchNorm2d or SyncBatchNorm,
    becomes a :class:`manual_ops.nn.SyncBatchNorm` (a ClampedBatchNorm2d a ``ClampedSyncBatchNorm`` with the
    same floor) sharing its parameters, buffers, mode and hooks, in place. Other layers are left alone.

    Args:
        module: any ``torch.nn.Module``.
        process_group: the group whose ranks share statistics. Default: ``None`` (the world).

    Returns ``module``, or the new layer when ``module`` itself is a batch norm. Raises NotImplementedError,
    changing nothing, if a batch norm to convert is on a device manual_ops has no kernels for.
    """
    return mnn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: manual_ops layers become the built-in ones again (a clamped batch
    norm a plain ``nn.BatchNorm2d`` or ``nn.SyncBatchNorm``, losing its floor; manual_ops' SyncBatchNorm
    torch's). In place; returns the model."""

    def replace(module):
        cls = TO_BUILTIN.get(type(module))
        if cls is None:
            return None
        if cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
            return batch_norm_as(module, cls, getattr(module, "process_group", None))
        return same_state_as(module, cls)

    return swap(model, replace)


def converted_modules(model: nn.Module) -> dict[str, type]:
    """The submodules of ``model`` that are manual_ops layers: qualified name -> type."""
    return {name: type(m) for name, m in model.named_modules() if type(m) in TO_BUILTIN}


def builtin_modules(model: nn.Module) -> dict[str, type]:
    """The submodules of ``model`` that :func:`convert` would replace: qualified name -> type."""
    return {name: type(m) for name, m in model.named_modules() if type(m) in TO_MANUAL}


def _keep_manual_ops_in_torch_convert_sync_batchnorm():
    """torch.nn.SyncBatchNorm.convert_sync_batchnorm replaces every ``_BatchNorm`` (manual_ops' are ones) by
    torch's SyncBatchNorm, which would silently drop the hand-written backward, and which refuses CPU
    input. Patched once, on import: manual_ops' batch norms become manual_ops' SyncBatchNorm, exactly as
    :func:`convert_sync_batchnorm` does; every other module is left to torch's own conversion."""
    torch_convert = nn.SyncBatchNorm.convert_sync_batchnorm.__func__
    if getattr(torch_convert, "keeps_manual_ops", False):
        return

    @functools.wraps(torch_convert)
    def convert_sync_batchnorm(cls, module, process_group=None):
        if type(module) in TO_SYNC | CLAMPED and type(module) in TO_BUILTIN:  # a manual_ops batch norm
            return to_sync(module, process_group)
        return torch_convert(cls, module, process_group)  # its recursion into children comes back here

    convert_sync_batchnorm.keeps_manual_ops = True
    nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(convert_sync_batchnorm)


_keep_manual_ops_in_torch_convert_sync_batchnorm()
