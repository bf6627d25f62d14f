"""Swapping layers in a model tree: the steps that manual_ops.convert and SyncBatchNorm.convert_sync_batchnorm share."""
from torch import nn

# Where manual_ops has kernels: the CPU, and the meta device (shapes only, through the fake kernels).
SUPPORTED_DEVICES = ("cpu", "meta")


def same_state_as(module, cls):
    """A ``cls`` instance sharing ``module``'s attributes: its parameters, buffers, children,
    mode and hooks (the containers are copied, the tensors in them are not)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


def swap(model, replace):
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


def check_devices(model: nn.Module, kinds) -> None:
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
