"""``manual_ops.enable()``: a torch function mode that sends torch's own spellings of manual_ops' ops
(``F.relu``, ``torch.relu``, ``x.relu_()``, ``F.conv2d``, ``nn.Linear``'s call of ``F.linear``, ...) to
:mod:`manual_ops.functional`, so that code which calls torch's functions runs the hand-written backward
passes. :data:`ROUTES` is the table: one :class:`Route` per op."""
import functools
import inspect
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import functional as mF
from ._utils import KERNEL_DTYPES as _DTYPES
from .modules import _swap
from .ops.batch_norm import _param_dtype

_INDEX_DTYPES = frozenset({torch.int64, torch.uint8})  # cross_entropy's class-index targets
_PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})  # not subclasses with a __torch_function__ of their own


def _plain(t) -> bool:
    """Whether ``t`` is a tensor of a kind manual_ops' kernels take, whatever its dtype: a ``torch.Tensor``
    or ``nn.Parameter`` (not another subclass), strided, on the CPU or the meta device."""
    return type(t) in _PLAIN_TYPES and t.layout == torch.strided and t.device.type in _swap.SUPPORTED_DEVICES


def _takes(*tensors) -> bool:
    """Whether each of ``tensors`` (``None``: an optional one left out) is :func:`_plain` and float32,
    float64, bfloat16 or float16."""
    return all(t is None or (_plain(t) and t.dtype in _DTYPES) for t in tensors)


def _one_dtype(*tensors) -> bool:
    """:func:`_takes` for the tensors of an op that autocast casts (conv2d, linear, cross_entropy), which
    must also be of one dtype unless autocast is on for their device and casts them to one."""
    given = [t for t in tensors if t is not None]
    if not _takes(*given):
        return False
    device = given[0].device.type
    return len({t.dtype for t in given}) == 1 or (torch.amp.is_autocast_available(device)
                                                  and torch.is_autocast_enabled(device))


def _elementwise(input, *args, **kwargs) -> bool:
    return _takes(input)


def _pooling(input, *args, **kwargs) -> bool:
    return _takes(input) and input.dim() in (3, 4)


def _conv2d(input, weight, bias=None, *args, **kwargs) -> bool:
    return _one_dtype(input, weight, bias) and input.dim() in (3, 4) and weight.dim() == 4


def _conv1d(input, weight, bias=None, *args, **kwargs) -> bool:
    return _one_dtype(input, weight, bias) and input.dim() in (2, 3) and weight.dim() == 3


def _linear(input, weight, bias=None) -> bool:
    # torch's also takes a 1-D weight, and a bias that broadcasts to (out_features,)
    return _one_dtype(input, weight, bias) and input.dim() >= 1 and weight.dim() == 2 and \
        (bias is None or bias.shape == weight.shape[:1])


def _normalisation(input, *params) -> bool:
    """:func:`_takes` for a normalisation's input and per-channel tensors, which follow torch's mixed-dtype rule
    (all of the input's dtype, or float32 for a bfloat16/float16 input), as ours do."""
    if not _takes(input, *params):
        return False
    dtype = _param_dtype(input, *params)
    return all(p is None or p.dtype == dtype for p in params)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, *args, **kwargs) -> bool:
    return input.dim() >= 2 and _normalisation(input, running_mean, running_var, weight, bias)


def _group_norm(input, num_groups, weight=None, bias=None, *args, **kwargs) -> bool:
    return input.dim() >= 2 and _normalisation(input, weight, bias)


def _layer_norm(input, normalized_shape, weight=None, bias=None, *args, **kwargs) -> bool:
    return _normalisation(input, weight, bias)


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, *args, **kwargs) -> bool:
    return _batch_norm(input, running_mean, running_var, weight, bias)


def _cross_entropy(input, target, weight=None, *args, **kwargs) -> bool:
    return _one_dtype(input, weight) and input.dim() >= 1 and _plain(target) and \
        target.dtype in _INDEX_DTYPES | _DTYPES


class Route(NamedTuple):
    """One op of :mod:`manual_ops.functional` and the torch callables that compute it.

    Attributes:
        ours: the manual_ops functional. It has torch's signature: a call's args and kwargs pass through.
        spellings: the torch callables with ``ours``' signature, as a torch function mode receives them
            (``torch.nn.functional.conv2d`` is ``torch.conv2d``, so it is listed once).
        in_place: torch's in-place spellings (``torch.relu_``, ``Tensor.relu_``), which run
            ``ours(..., inplace=True)``. Default: none.
        takes: called with a call's args and kwargs: whether ``ours`` takes them (tensor types, devices,
            layouts, dtypes and ranks); where not, torch's own callable runs. Default: its first
            argument is a tensor of manual_ops' dtypes on the CPU or meta device (an elementwise op's rule).
    """

    ours: Callable
    spellings: tuple
    in_place: tuple = ()
    takes: Callable = _elementwise


ROUTES = (
    Route(mF.relu, (F.relu, torch.relu, torch.Tensor.relu), in_place=(torch.relu_, torch.Tensor.relu_)),
    Route(mF.conv2d, (torch.conv2d,), takes=_conv2d),
    Route(mF.conv1d, (torch.conv1d,), takes=_conv1d),
    Route(mF.conv_transpose2d, (torch.conv_transpose2d,), takes=_conv2d),
    Route(mF.linear, (F.linear,), takes=_linear),  # F.linear is torch._C._nn.linear
    Route(mF.batch_norm, (F.batch_norm,), takes=_batch_norm),
    Route(mF.max_pool2d, (F.max_pool2d, torch.max_pool2d), takes=_pooling),
    # F.max_pool2d (torch's boolean dispatch on return_indices) hands a call with return_indices=True to this
    Route(mF.max_pool2d_with_indices, (F.max_pool2d_with_indices, torch._C._nn.max_pool2d_with_indices),
          takes=_pooling),
    Route(mF.avg_pool2d, (F.avg_pool2d,), takes=_pooling),  # F.avg_pool2d is torch._C._nn.avg_pool2d
    Route(mF.adaptive_avg_pool2d, (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d), takes=_pooling),
    Route(mF.cross_entropy, (F.cross_entropy,), takes=_cross_entropy),
    Route(mF.group_norm, (F.group_norm,), takes=_group_norm),
    Route(mF.layer_norm, (F.layer_norm,), takes=_layer_norm),
    Route(mF.instance_norm, (F.instance_norm,), takes=_instance_norm),
    # The activations. F.sigmoid and F.tanh call Tensor.sigmoid / Tensor.tanh, so the mode sees those; their
    # in-place spellings (torch.sigmoid_, Tensor.tanh_, ...) stay torch's, as ours take no `inplace`.
    Route(mF.sigmoid, (torch.sigmoid, torch.Tensor.sigmoid)),
    Route(mF.tanh, (torch.tanh, torch.Tensor.tanh)),
    Route(mF.silu, (F.silu,), in_place=(torch._C._nn.silu_,)),
    Route(mF.gelu, (F.gelu,)),  # F.gelu is torch._C._nn.gelu
    Route(mF.leaky_relu, (F.leaky_relu, torch._C._nn.leaky_relu), in_place=(F.leaky_relu_,)),
    Route(mF.elu, (F.elu, torch._C._nn.elu), in_place=(F.elu_,)),
    Route(mF.hardtanh, (F.hardtanh, torch._C._nn.hardtanh), in_place=(F.hardtanh_,)),  # nn.ReLU6's call
    Route(mF.relu6, (F.relu6, torch._C._nn.relu6)),
    Route(mF.hardswish, (F.hardswish, torch._C._nn.hardswish), in_place=(torch._C._nn.hardswish_,)),
    Route(mF.hardsigmoid, (F.hardsigmoid, torch._C._nn.hardsigmoid), in_place=(torch._C._nn.hardsigmoid_,)),
    Route(mF.softplus, (F.softplus,)),  # F.softplus is torch._C._nn.softplus
    Route(mF.dropout, (F.dropout,)),
    Route(mF.dropout2d, (F.dropout2d,)),
)


class _Entry(NamedTuple):
    """What the mode runs for one torch callable: ``run``, where ``signature`` binds the call's arguments
    and ``takes`` accepts them."""

    run: Callable
    signature: inspect.Signature
    takes: Callable


def _entries(routes) -> dict:
    """``{torch callable: _Entry}`` for ``routes``, the form :class:`enable` looks calls up in."""
    entries = {}
    for route in routes:
        for spelling in route.spellings:
            entries[spelling] = _Entry(route.ours, inspect.signature(route.ours), route.takes)
        for spelling in route.in_place:
            run = functools.partial(route.ours, inplace=True)
            entries[spelling] = _Entry(run, inspect.signature(run), route.takes)
    return entries


_ENTRIES = _entries(ROUTES)


def _binds(signature, args, kwargs) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:  # an argument ours lacks (out=, say), a missing one, too many
        return False
    return True


class enable(TorchFunctionMode):
    """Runs manual_ops' ops where code calls torch's: inside ``with manual_ops.enable():``, each call of a
    torch function or tensor method in :data:`ROUTES` (``F.relu``, ``torch.relu``, ``x.relu()``,
    ``torch.relu_``, ``x.relu_()``, ``F.conv2d``, ``F.linear``, ``F.batch_norm``, ``F.max_pool2d``,
    ``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``F.cross_entropy``, ...) runs the manual_ops functional
    for that op instead, with the same arguments, so its backward is manual_ops'. Unconverted
    ``torch.nn`` layers call these functions too, and run manual_ops' kernels inside the mode.

    A call stays torch's where manual_ops' op does not take it: where its arguments do not bind to the
    functional's signature (``out=``), where a tensor argument is a subclass (other than ``nn.Parameter``),
    sparse, on a device other than the CPU or meta, or of a dtype other than float32, float64, bfloat16 or
    float16 (class-index targets: int64 or uint8), where the tensors' dtypes differ outside autocast, or
    where a rank or shape is one only torch's takes (a 1-D weight for ``F.linear``); so results, and
    errors, are torch's wherever ours would differ. Every other torch call passes through unchanged.

    It is a :class:`torch.overrides.TorchFunctionMode` (a class, as ``torch.no_grad`` is): modes nest, and
    it is removed on leaving the ``with`` block, by an exception too. While it handles a call it is off, so
    manual_ops' functionals, and torch's where a call falls back, never come back to it.

    Example::

        with manual_ops.enable():
            loss = F.cross_entropy(model(x), y)  # model calls F.relu: manual_ops' relu
        loss.backward()
        assert not manual_ops.builtin_backward_nodes(loss)
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _ENTRIES.get(func)
        if entry is not None and _binds(entry.signature, args, kwargs) and entry.takes(*args, **kwargs):
            return entry.run(*args, **kwargs)
        return func(*args, **kwargs)
