"""Swap torch.nn layers for manual_ops' hand-written-backward ones in a model, and back.

Table-driven: a module is converted only when its type is exactly one of the built-in types
below, so subclasses and unknown modules are left alone. The new module takes over the old
one's parameters and buffers (the same tensor objects: no copies, so requires_grad, device,
dtype and an optimizer built beforehand all carry over), its train/eval mode and hooks;
state_dict keys are unchanged, so state_dicts load strictly either way.
"""
import torch
from torch import nn

from . import nn as mnn

# The built-in layer kinds that manual_ops replaces (same class names in torch.nn and manual_ops.nn).
_KINDS = ["Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "ReLU"]
TO_MANUAL = {getattr(nn, k): getattr(mnn, k) for k in _KINDS}
TO_BUILTIN = {ours: builtin for builtin, ours in TO_MANUAL.items()}
TO_BUILTIN[mnn.ClampedBatchNorm2d] = nn.BatchNorm2d


def _same_state_as(module, cls):
    """A ``cls`` instance sharing ``module``'s attributes: its parameters, buffers, children,
    mode and hooks (the containers are copied, the tensors in them are not)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


def _batch_norm_as(module, cls, **kwargs):
    """A freshly constructed ``cls`` batch norm that takes over ``module``'s parameters, buffers and mode."""
    some_tensor = next(iter(module.state_dict().values()), None)
    factory = {} if some_tensor is None else {"device": some_tensor.device, "dtype": some_tensor.dtype}
    new = cls(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
              track_running_stats=module.track_running_stats, **factory, **kwargs)
    for name, p in module.named_parameters(recurse=False):
        new._parameters[name] = p
    for name, b in module.named_buffers(recurse=False):
        new._buffers[name] = b
    return new.train(module.training)


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


def _check_devices(model: nn.Module) -> None:
    """NotImplementedError, before anything is changed, if a layer that convert() would replace holds
    a parameter or buffer on a device that manual_ops has no kernels for."""
    for name, module in model.named_modules():
        if type(module) not in TO_MANUAL:
            continue
        for tensor_name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.device.type not in SUPPORTED_DEVICES:
                layer = f"{name}.{tensor_name}" if name else tensor_name
                raise NotImplementedError(
                    f"convert: {layer} ({type(module).__name__}) is on device '{t.device}', but manual_ops' "
                    f"kernels run only on {' and '.join(SUPPORTED_DEVICES)}; move the model to the CPU first "
                    f"(model.cpu()), or keep torch's built-in layers on that device"
                )


def convert(model: nn.Module, *, clamped_beta: float | None = None) -> nn.Module:
    """Replaces, in place, every built-in layer of a kind manual_ops provides (exact type match) by
    manual_ops' version, and returns the model (a new object only when the root itself is converted).

    Args:
        model: any ``torch.nn.Module``, on the CPU (or the meta device).
        clamped_beta: if given, batch norms become ``ClampedBatchNorm2d(beta_floor=clamped_beta)``.

    Raises:
        NotImplementedError: a layer to convert is on another device (cuda, mps, ...); nothing is changed.
    """
    _check_devices(model)

    def replace(module):
        if clamped_beta is not None and type(module) is nn.BatchNorm2d:
            return _batch_norm_as(module, mnn.ClampedBatchNorm2d, beta_floor=clamped_beta)
        cls = TO_MANUAL.get(type(module))
        return None if cls is None else _same_state_as(module, cls)

    return _swap(model, replace)


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: manual_ops layers become the built-in ones again (a
    ClampedBatchNorm2d becomes a plain ``nn.BatchNorm2d``, losing its floor). In place; returns the model."""

    def replace(module):
        cls = TO_BUILTIN.get(type(module))
        if cls is None:
            return None
        if cls is nn.BatchNorm2d and type(module) is not TO_MANUAL.get(nn.BatchNorm2d):
            return _batch_norm_as(module, cls)
        return _same_state_as(module, cls)

    return _swap(model, replace)


def converted_modules(model: nn.Module) -> dict[str, type]:
    """The submodules of ``model`` that are manual_ops layers: qualified name -> type."""
    return {name: type(m) for name, m in model.named_modules() if type(m) in TO_BUILTIN}


def builtin_modules(model: nn.Module) -> dict[str, type]:
    """The submodules of ``model`` that :func:`convert` would replace: qualified name -> type."""
    return {name: type(m) for name, m in model.named_modules() if type(m) in TO_MANUAL}
