"""manual_ops.extensions (BatchGrad, BatchL2Grad) against per-sample gradients from torch.func (vmap(grad)) of the
built-in model, in float64: a CNN with every covered layer and option (conv stride/padding/dilation/groups/bias,
padding modes, eval-mode batch norm, a linear over a sequence), mean and sum reductions; the plain grad unchanged;
accumulation over two backwards; and the layers not covered raise."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import manual_ops
from manual_ops import extensions as ext

f64 = torch.float64


def _cnn(conv_kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, **conv_kwargs), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).to(f64)
    with torch.no_grad():  # running statistics that are not the identity
        model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.normal_(), model[1].bias.normal_()
    return model.eval()


def _per_sample_reference(model, x, y, reduction):
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    N = x.shape[0]

    def loss(params, xi, yi):  # each sample's share of the batch loss, as the reduction weighs it
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0)) / (N if reduction == "mean" else 1)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("conv_kwargs", [dict(padding=1), dict(stride=2, dilation=2, padding=2, bias=True),
                                         dict(padding="same", padding_mode="reflect")], ids=str)
def test_batch_grad_and_l2_equal_torch_func_per_sample_gradients(conv_kwargs, reduction):
    builtin = _cnn(conv_kwargs)
    model = manual_ops.convert(copy.deepcopy(builtin))
    x, y = torch.randn(6, 3, 9, 9, dtype=f64), torch.randint(0, 5, (6,))
    reference = _per_sample_reference(builtin, x, y, reduction)
    plain = torch.autograd.grad(F.cross_entropy(builtin(x), y, reduction=reduction), list(builtin.parameters()))
    with ext.backprop(model, ext.BatchGrad(), ext.BatchL2Grad(), ext.SumGradSquared()):
        manual_ops.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    for (name, p), g in zip(model.named_parameters(), plain):
        torch.testing.assert_close(p.grad_batch, reference[name], rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(p.batch_l2, reference[name].flatten(1).square().sum(1), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(p.sum_grad_squared, reference[name].square().sum(0), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)  # unchanged
        torch.testing.assert_close(p.grad_batch.sum(0), p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sequence", [False, True])
def test_linear_l2_and_sum_grad_squared_without_per_sample_gradients(sequence):
    """BatchL2Grad and SumGradSquared without BatchGrad: ‖δ‖²‖x‖² and (δ∘δ)ᵀ(x∘x) for a 2-D input, the Gram form
    (and the per-sample gradients) over the positions of a sequence; no grad_batch is left."""
    torch.manual_seed(0)
    layer = manual_ops.convert(nn.Linear(7, 4).to(f64))
    x = torch.randn(5, 3, 7, dtype=f64) if sequence else torch.randn(5, 7, dtype=f64)
    with ext.backprop(layer, ext.BatchL2Grad(), ext.SumGradSquared()):
        layer(x).pow(2).sum().backward()
    assert not hasattr(layer.weight, "grad_batch")
    params = {k: v.detach() for k, v in layer.named_parameters()}
    reference = vmap(grad(lambda p, xi: functional_call(layer, p, (xi,)).pow(2).sum()), in_dims=(None, 0))(params, x)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.batch_l2, reference[name].flatten(1).square().sum(1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.sum_grad_squared, reference[name].square().sum(0), rtol=1e-10, atol=1e-12)


def test_two_backwards_accumulate_and_a_new_block_resets():
    model = manual_ops.convert(_cnn(dict(padding=1)))
    x, y = torch.randn(4, 3, 9, 9, dtype=f64), torch.randint(0, 5, (4,))
    with ext.backprop(model, ext.BatchGrad()):
        manual_ops.functional.cross_entropy(model(x), y).backward()
        first = model[0].weight.grad_batch.clone()
        manual_ops.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(model[0].weight.grad_batch, 2 * first)
    with ext.backprop(model, ext.BatchGrad()):
        manual_ops.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(model[0].weight.grad_batch, first)


def test_uncovered_layers_raise_before_anything_runs():
    model = manual_ops.convert(_cnn(dict(padding=1))).train()
    with pytest.raises(NotImplementedError, match="BatchNorm2d in training mode"):
        with ext.backprop(model, ext.BatchGrad()):
            pass
    with pytest.raises(NotImplementedError, match="no per-sample rule for ClampedBatchNorm2d"):
        with ext.backprop(manual_ops.convert(nn.Sequential(nn.BatchNorm2d(4)), clamped_beta=1.0).eval(),
                          ext.BatchGrad()):
            pass
    with pytest.raises(NotImplementedError, match="DiagGGNExact"):
        class DiagGGNExact:
            pass
        with ext.backprop(model.eval(), DiagGGNExact()):
            pass


def _norm_net(kind):
    torch.manual_seed(0)
    norms = {"group": nn.GroupNorm(4, 8), "instance": nn.InstanceNorm2d(8, affine=True),
             "instance-running": nn.InstanceNorm2d(8, affine=True, track_running_stats=True)}
    if kind == "layer":  # a transformer-like block: LayerNorm over tokens of a sequence, then a linear head
        return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Flatten(), nn.Linear(5 * 8, 5)).to(f64)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norms[kind], nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).to(f64)
    with torch.no_grad():
        for p in model[1].parameters():
            p.normal_()
        if kind == "instance-running":  # eval mode, the running statistics in use
            model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2.0)
    return model.eval() if kind == "instance-running" else model.train()


@pytest.mark.parametrize("kind", ["group", "layer", "instance", "instance-running"])
def test_group_layer_and_instance_norm_per_sample_gradients(kind):
    """The normalisations that use each sample's own statistics (or the running ones): per-sample gradients with
    them in training mode, as Opacus's GroupNorm models train."""
    builtin = _norm_net(kind)
    model = manual_ops.convert(copy.deepcopy(builtin))
    x = torch.randn(6, 5, 6, dtype=f64) if kind == "layer" else torch.randn(6, 3, 7, 7, dtype=f64)
    y = torch.randint(0, 5, (6,))
    reference = _per_sample_reference(builtin, x, y, "mean")
    with ext.backprop(model, ext.BatchGrad(), ext.BatchL2Grad(), ext.SumGradSquared()):
        manual_ops.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad_batch, reference[name], rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(p.batch_l2, reference[name].flatten(1).square().sum(1), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(p.sum_grad_squared, reference[name].square().sum(0), rtol=1e-10, atol=1e-14)
