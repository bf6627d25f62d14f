"""Per-sample gradients through torch.func: ``vmap(grad(loss), in_dims=(None, 0, 0))`` over
``functional_call`` of ResNet-small (BN in eval mode), converted against built-in, and the same
``grad(loss)`` in a Python loop over the samples, ours against built-in, in one run (so that the
vmap/loop ratio of each is a same-run figure too); and manual_ops.extensions' BatchGrad and BatchL2Grad (one
backward of the batch) against the built-in's vmap(grad), the best peer for per-sample gradients.

The built-in model and its converted copy start from the same weights and see the same batch; ours
also uses manual_ops' cross-entropy.
"""
import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .. import extensions as ext
from .. import functional as mF
from ..convert import convert
from ..models import build
from . import Case


def _loss(model, loss_fn):
    """loss(params, x_i, y_i) of one sample, as a batch of one (BN in eval: its running stats)."""
    buffers = dict(model.named_buffers())

    def loss(params, xi, yi):
        return loss_fn(functional_call(model, (params, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))
    return grad(loss)


def _vmapped(model, loss_fn, x, target):
    per_sample = vmap(_loss(model, loss_fn), in_dims=(None, 0, 0))
    params = {k: v.detach() for k, v in model.named_parameters()}
    return lambda: per_sample(params, x, target)


def _looped(model, loss_fn, x, target):
    per_sample = _loss(model, loss_fn)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return lambda: [per_sample(params, xi, yi) for xi, yi in zip(x, target)]


def _extensions(model, x, target, *extensions):
    """One backward of the batch (a sum of the samples' losses, as vmap(grad) computes each sample's) under
    ext.backprop, leaving p.grad_batch / p.batch_l2."""
    def run():
        model.zero_grad(set_to_none=True)
        with ext.backprop(model, *extensions):
            mF.cross_entropy(model(x), target, reduction="sum").backward()
    return run


def cases(batch: int = 32, input_size: int = 32, dtype=torch.float32):
    torch.manual_seed(0)
    builtin = build("resnet-small", in_channels=3, num_classes=10, input_size=input_size).to(dtype).eval()
    ours = convert(copy.deepcopy(builtin))
    x = torch.randn(batch, 3, input_size, input_size, dtype=dtype)
    target = torch.randint(0, 10, (batch,))
    return [Case("per-sample", f"resnet-small vmap(grad), batch {batch}", _vmapped(ours, mF.cross_entropy, x, target),
                 _vmapped(builtin, F.cross_entropy, x, target)),
            Case("per-sample", f"resnet-small grad in a Python loop, batch {batch}",
                 _looped(ours, mF.cross_entropy, x, target), _looped(builtin, F.cross_entropy, x, target)),
            Case("per-sample", f"resnet-small BatchGrad (extensions) vs built-in vmap(grad), batch {batch}",
                 _extensions(ours, x, target, ext.BatchGrad()), _vmapped(builtin, F.cross_entropy, x, target)),
            Case("per-sample", f"resnet-small BatchL2Grad (extensions) vs built-in vmap(grad), batch {batch}",
                 _extensions(ours, x, target, ext.BatchL2Grad()), _vmapped(builtin, F.cross_entropy, x, target))]
