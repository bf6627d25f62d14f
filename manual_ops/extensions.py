"""Per-sample quantities from manual_ops' backward passes, with BackPACK's names: the gradient of every sample
(:class:`BatchGrad`, ``p.grad_batch``), its squared norm (:class:`BatchL2Grad`, ``p.batch_l2``) and the sum of the
squared per-sample gradients (:class:`SumGradSquared`, ``p.sum_grad_squared``).

Inside ``with backprop(model, BatchGrad(), BatchL2Grad(), SumGradSquared()):`` each converted Linear, Conv2d,
eval-mode BatchNorm2d, GroupNorm, LayerNorm and InstanceNorm keeps its input and, during ``loss.backward()``, its output gradient δ, and computes the per-sample gradients of its
parameters from those two factors (derivation: docs/derivations.md, "Per-sample gradients"):

- linear: ``grad_batch[n] = Σ_t δ[n, t]ᵀ x[n, t]`` (t over any middle dims) and ``Σ_t δ[n, t]`` for the bias;
  ``batch_l2[n] = ‖δ_n‖² ‖x_n‖²`` for a 2-D input (no per-sample gradient is made), the Gram form
  ``⟨δ_n δ_nᵀ, x_n x_nᵀ⟩`` over t for a sequence; ``sum_grad_squared = (δ∘δ)ᵀ (x∘x)`` for a 2-D input (one GEMM);
- conv2d: the per-sample weight gradients are one grouped conv2d backward (manual_ops' dW kernel) of the samples
  folded into the channels, groups × N (the vmap rule's fold); ``Σ_hw δ`` for the bias;
- batch norm in eval mode: ``Σ_hw δ x̂`` and ``Σ_hw δ`` per sample, x̂ from the running statistics;
- group, layer and instance norm (each sample normalised by its own statistics, so no coupling between samples):
  ``Σ δ x̂`` and ``Σ δ`` over each sample's positions, x̂ recomputed from the input.

Scaling is BackPACK's: the per-sample gradients are those of the loss as reduced (a mean reduction divides each by
N), so ``grad_batch`` sums to ``grad`` over the samples, and ``p.grad`` itself is unchanged. A layer the extensions
do not cover (a train-mode batch norm, whose per-sample gradients couple through the batch statistics, or a clamped
one) raises NotImplementedError on entry rather than giving a wrong answer.
"""
import contextlib
from dataclasses import dataclass

import torch

from .modules.batch_norm import BatchNorm2d
from .modules.conv import Conv2d
from .modules.linear import Linear
from .modules.normalization import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
from .ops.conv2d import _padding

_ops = torch.ops.manual_ops


@dataclass(frozen=True)
class BatchGrad:
    """The gradient of each sample: ``p.grad_batch``, of size (N, *p.shape)."""

    savefield = "grad_batch"


@dataclass(frozen=True)
class BatchL2Grad:
    """The squared L2 norm of each sample's gradient: ``p.batch_l2``, of size (N,)."""

    savefield = "batch_l2"


@dataclass(frozen=True)
class SumGradSquared:
    """The sum over the samples of each sample's gradient squared, elementwise: ``p.sum_grad_squared``, of
    ``p``'s size."""

    savefield = "sum_grad_squared"


EXTENSIONS = (BatchGrad, BatchL2Grad, SumGradSquared)


def _from_per_sample(g, wanted):
    """The wanted fields of a parameter whose per-sample gradients ``g`` (N, ...) are materialised."""
    out = {}
    if "grad_batch" in wanted:
        out["grad_batch"] = g
    if "batch_l2" in wanted:
        out["batch_l2"] = g.flatten(1).square().sum(1)
    if "sum_grad_squared" in wanted:
        out["sum_grad_squared"] = g.square().sum(0)
    return out


def _linear(module, x, delta, wanted):
    # (x, δ) as (N, T, in) and (N, T, out), T the product of the middle dims (1 for a 2-D input)
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    d3 = delta.reshape(delta.shape[0], -1, delta.shape[-1])
    if "grad_batch" in wanted or (x3.shape[1] > 1 and "sum_grad_squared" in wanted):
        weight = _from_per_sample(torch.bmm(d3.transpose(1, 2), x3), wanted)  # Σ_t δ_tᵀ x_t per sample
    else:  # nothing materialised: one position gives ‖δ xᵀ‖² = ‖δ‖² ‖x‖² and Σ_n (δ_n xᵀ_n)² = (δ∘δ)ᵀ(x∘x)
        weight = {}
        if "batch_l2" in wanted:
            weight["batch_l2"] = (d3.square().sum((1, 2)) * x3.square().sum((1, 2)) if x3.shape[1] == 1 else
                                  # ‖Σ_t δ_tᵀ x_t‖² = Σ_{t,s} (δ_t·δ_s)(x_t·x_s): the Gram form over the positions
                                  (torch.bmm(d3, d3.transpose(1, 2)) * torch.bmm(x3, x3.transpose(1, 2))).sum((1, 2)))
        if "sum_grad_squared" in wanted:
            weight["sum_grad_squared"] = d3[:, 0].square().t() @ x3[:, 0].square()
    results = {"weight": weight}
    if module.bias is not None:
        results["bias"] = _from_per_sample(d3.sum(1), wanted)
    return results


def _conv2d(module, x, delta, wanted):
    if x.dim() == 3:
        x, delta = x.unsqueeze(0), delta.unsqueeze(0)
    N, (O, Cg, kh, kw) = x.shape[0], module.weight.shape
    pads = _padding(module.padding, module.weight, module.stride, module.dilation)  # the module's conv's own
    if module.padding_mode != "zeros":
        x = torch.nn.functional.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        pads = (0, 0, 0, 0)
    # the samples folded into the channels: one grouped conv2d whose groups are (sample, group) pairs
    folded_x = x.reshape(1, N * x.shape[1], *x.shape[2:])
    folded_delta = delta.reshape(1, N * O, *delta.shape[2:])
    folded_w = module.weight.detach().expand(N, O, Cg, kh, kw).reshape(N * O, Cg, kh, kw)
    grad_w = _ops.conv2d_backward(folded_delta, folded_x, folded_w, list(module.stride), list(pads),
                                  list(module.dilation), N * module.groups, [False, True, False])[1]
    results = {"weight": _from_per_sample(grad_w.reshape(N, O, Cg, kh, kw), wanted)}
    if module.bias is not None:
        results["bias"] = _from_per_sample(delta.sum((2, 3)), wanted)
    return results


def _batch_norm_eval(module, x, delta, wanted):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    xhat = (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    dims = tuple(range(2, x.dim()))
    results = {"weight": (delta * xhat).sum(dims), "bias": delta.sum(dims)}
    return {name: _from_per_sample(g, wanted) for name, g in results.items() if getattr(module, name) is not None}


def _normalised(x, dims, eps):
    """x̂ = (x - mean) / sqrt(var + eps) over ``dims`` (the biased variance), as the forward computed it."""
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def _group_norm(module, x, delta, wanted):
    # each (sample, group) is normalised by its own statistics: no coupling between samples
    xhat = _normalised(x.reshape(x.shape[0], module.num_groups, -1), 2, module.eps).reshape(x.shape)
    dims = tuple(range(2, x.dim()))
    return {"weight": _from_per_sample((delta * xhat).sum(dims), wanted),
            "bias": _from_per_sample(delta.sum(dims), wanted)} if module.affine else {}


def _layer_norm(module, x, delta, wanted):
    norm_dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
    xhat = _normalised(x, norm_dims, module.eps)
    middle = tuple(range(1, x.dim() - len(module.normalized_shape)))  # the positions of one sample
    results = {}
    if module.weight is not None:
        results["weight"] = _from_per_sample((delta * xhat).sum(middle) if middle else delta * xhat, wanted)
    if module.bias is not None:
        results["bias"] = _from_per_sample(delta.sum(middle) if middle else delta, wanted)
    return results


def _instance_norm(module, x, delta, wanted):
    if not module.affine:
        return {}
    dims = tuple(range(2, x.dim()))
    if module.training or not module.track_running_stats:  # each (sample, channel) by its own statistics
        xhat = _normalised(x, dims, module.eps)
    else:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xhat = (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    return {"weight": _from_per_sample((delta * xhat).sum(dims), wanted),
            "bias": _from_per_sample(delta.sum(dims), wanted)}


_RULES = {Linear: _linear, Conv2d: _conv2d, GroupNorm: _group_norm, LayerNorm: _layer_norm,
          InstanceNorm1d: _instance_norm, InstanceNorm2d: _instance_norm, InstanceNorm3d: _instance_norm}


def _rule(module):
    if type(module) in _RULES:
        return _RULES[type(module)]
    if type(module) is BatchNorm2d:  # not the clamped one: its clamped channels' gradients differ
        if module.training or not module.track_running_stats:
            raise NotImplementedError(
                f"manual_ops.extensions: {type(module).__name__} in training mode (or without running statistics): its "
                "per-sample gradients couple through the batch statistics, which these extensions do not derive yet; "
                "put the model in eval mode")
        return _batch_norm_eval
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        raise NotImplementedError(
            f"manual_ops.extensions: no per-sample rule for {type(module).__name__} (the extensions cover "
            "manual_ops.nn.Linear, Conv2d, eval-mode BatchNorm2d, GroupNorm, LayerNorm and InstanceNorm1d/2d/3d: "
            "convert the model with manual_ops.convert)")
    return None


def _store(param, field, value):
    previous = getattr(param, field, None)
    setattr(param, field, value if previous is None else previous + value)  # a layer called twice: summed


@contextlib.contextmanager
def backprop(model, *extensions):
    """Computes ``extensions`` in every backward pass run inside the block, for every parameter of ``model`` that
    requires grad, into ``p.grad_batch``, ``p.batch_l2`` and ``p.sum_grad_squared``.

    Args:
        model: a model converted by :func:`manual_ops.convert` (its parameterised layers are manual_ops' Linear,
            Conv2d, BatchNorm2d in eval mode, GroupNorm, LayerNorm or InstanceNorm; any other layer with parameters
            raises NotImplementedError).
        extensions: instances of :class:`BatchGrad`, :class:`BatchL2Grad` and :class:`SumGradSquared`.

    The fields are reset on entry; each backward adds to them, as ``p.grad`` accumulates.
    """
    unknown = sorted({type(e).__name__ for e in extensions if not isinstance(e, EXTENSIONS)})
    if unknown:
        raise NotImplementedError(f"manual_ops.extensions: {unknown} not implemented; available: "
                                  f"{', '.join(e.__name__ for e in EXTENSIONS)}")
    wanted = {e.savefield for e in extensions}
    layers = [(m, _rule(m)) for m in model.modules()]
    layers = [(m, rule) for m, rule in layers if rule is not None]
    for m, _ in layers:
        for p in m.parameters(recurse=False):
            for field in (e.savefield for e in EXTENSIONS):
                if hasattr(p, field):
                    delattr(p, field)

    def forward_hook(module, args, output, rule):
        x = args[0].detach()
        if not output.requires_grad:
            return

        def on_grad(delta):
            for name, fields in rule(module, x, delta.detach(), wanted).items():
                param = getattr(module, name)
                if param is not None and param.requires_grad:
                    for field, value in fields.items():
                        _store(param, field, value)

        output.register_hook(on_grad)

    handles = [m.register_forward_hook(lambda module, args, output, rule=rule: forward_hook(module, args, output, rule))
               for m, rule in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
