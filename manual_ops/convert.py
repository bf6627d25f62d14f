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
from .modules.batch_norm import ClampedShift

# The built-in layer kinds that manual_ops replaces (same class names in torch.nn and manual_ops.nn).
_KINDS = ["Conv2d", "BatchNorm2d", "SyncBatchNorm", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "ReLU",
          "Sigmoid", "Tanh", "SiLU", "GELU", "LeakyReLU", "ELU", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid",
          "Softplus"]
TO_MANUAL = {getattr(nn, k): getattr(mnn, k) for k in _KINDS}
TO_BUILTIN = {ours: builtin for builtin, ours in TO_MANUAL.items()}
TO_BUILTIN[mnn.ClampedBatchNorm2d] = nn.BatchNorm2d
TO_BUILTIN[mnn.ClampedSyncBatchNorm] = nn.SyncBatchNorm

# convert_sync_batchnorm: these batch norms (exact types) become SyncBatchNorm, the clamped ones ClampedSyncBatchNorm.
TO_SYNC = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, mnn.BatchNorm2d, mnn.SyncBatchNorm}
CLAMPED = {mnn.ClampedBatchNorm2d, mnn.ClampedSyncBatchNorm}


def _same_state_as(module, cls):
    """A ``cls`` instance sharing ``module``'s attributes: its parameters, buffers, children,
    mode and hooks (the containers are copied, the tensors in them are not)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


def _batch_norm_as(module, cls, process_group=None, floor=None):
    """``module`` (a batch norm) as a ``cls`` one sharing its state (see _same_state_as). A clamped ``cls``
    gets ``floor`` = (beta_floor, floor_scale), or ``module``'s own when None; a synchronised one
    ``process_group``; options ``cls`` lacks are dropped."""
    new = _same_state_as(module, cls)
    for name in ("beta_floor", "floor_scale", "process_group"):
        new.__dict__.pop(name, None)
    if issubclass(cls, ClampedShift):
        new.beta_floor, new.floor_scale = new._checked_floor(*(floor or (module.beta_floor, module.floor_scale)))
    if issubclass(cls, (nn.SyncBatchNorm, mnn.SyncBatchNorm)):
        new.process_group = process_group
    return new


def _to_sync(module, process_group, clamped_beta=None):
    """``module`` as manual_ops' SyncBatchNorm (clamped ones, or all when ``clamped_beta`` is given: the
    clamped variant), or None when it is not a batch norm that convert_sync_batchnorm converts."""
    if type(module) in CLAMPED:
        return _batch_norm_as(module, mnn.ClampedSyncBatchNorm, process_group)
    if type(module) not in TO_SYNC:
        return None
    if clamped_beta is None:
        return _batch_norm_as(module, mnn.SyncBatchNorm, process_group)
    return _batch_norm_as(module, mnn.ClampedSyncBatchNorm, process_group, floor=(clamped_beta, "sigma"))


def _swap(model, replace):
    """Applies ``replace(module) -> new module or None`` to ``model`` and, top-down, to every submodule
    (a module that appears twice is replaced by one new module, so sharing is kept)."""
    new_root = replace(model)
    if new_root is not None:
        return new_root
    done = {}  # id(old) -> (old, new or None); holding `old` keeps its id from being reused
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in done:
                done[id(child)] = (child, replace(child))
            new = done[id(child)][1]
            if new is not None:
                parent._modules[name] = new
    return model


# Where manual_ops has kernels: the CPU, and the meta device (shapes only, through the fake kernels).
SUPPORTED_DEVICES = ("cpu", "meta")


def _check_devices(model: nn.Module, kinds) -> None:
    """NotImplementedError, before anything is changed, if a layer of one of the types ``kinds`` (those a
    conversion would replace) holds a parameter or buffer on a device that manual_ops has no kernels for."""
    for name, module in model.named_modules():
        if type(module) not in kinds:
            continue
        for tensor_name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.device.type not in SUPPORTED_DEVICES:
                layer = f"{name}.{tensor_name}" if name else tensor_name
                raise NotImplementedError(
                    f"convert: {layer} ({type(module).__name__}) is on device '{t.device}', but manual_ops' "
                    f"kernels run only on {' and '.join(SUPPORTED_DEVICES)}; move the model to the CPU first "
                    f"(model.cpu()), or keep torch's built-in layers on that device"
                )


def convert(model: nn.Module, *, clamped_beta: float | None = None, sync_bn: bool = False,
            process_group=None) -> nn.Module:
    """Replaces, in place, every built-in layer of a kind manual_ops provides (exact type match) by
    manual_ops' version, and returns the model (a new object only when the root itself is converted).

    Args:
        model: any ``torch.nn.Module``, on the CPU (or the meta device).
        clamped_beta: if given, batch norms become ``ClampedBatchNorm2d(beta_floor=clamped_beta)``
            (``ClampedSyncBatchNorm`` with ``sync_bn``).
        sync_bn: batch norms become :class:`manual_ops.nn.SyncBatchNorm`, as by :func:`convert_sync_batchnorm`.
        process_group: with ``sync_bn``, the group whose ranks share statistics. Default: the world.

    Raises:
        NotImplementedError: a layer to convert is on another device (cuda, mps, ...); nothing is changed.
    """
    _check_devices(model, set(TO_MANUAL) | (TO_SYNC | CLAMPED if sync_bn else set()))

    def replace(module):
        if sync_bn and (type(module) in TO_SYNC or type(module) in CLAMPED):
            return _to_sync(module, process_group, clamped_beta)
        cls = TO_MANUAL.get(type(module))
        if cls is None:
            return None
        if clamped_beta is not None and cls in (mnn.BatchNorm2d, mnn.SyncBatchNorm):
            clamped = mnn.ClampedBatchNorm2d if cls is mnn.BatchNorm2d else mnn.ClampedSyncBatchNorm
            return _batch_norm_as(module, clamped, getattr(module, "process_group", None), (clamped_beta, "sigma"))
        return _same_state_as(module, cls)

    return _swap(model, replace)


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
    _check_devices(module, TO_SYNC | CLAMPED)
    return _swap(module, lambda m: _to_sync(m, process_group))


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: manual_ops layers become the built-in ones again (a clamped batch
    norm a plain ``nn.BatchNorm2d`` or ``nn.SyncBatchNorm``, losing its floor; manual_ops' SyncBatchNorm
    torch's). In place; returns the model."""

    def replace(module):
        cls = TO_BUILTIN.get(type(module))
        if cls is None:
            return None
        if cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
            return _batch_norm_as(module, cls, getattr(module, "process_group", None))
        return _same_state_as(module, cls)

    return _swap(model, replace)


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
            return _to_sync(module, process_group)
        return torch_convert(cls, module, process_group)  # its recursion into children comes back here

    convert_sync_batchnorm.keeps_manual_ops = True
    nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(convert_sync_batchnorm)


_keep_manual_ops_in_torch_convert_sync_batchnorm()
