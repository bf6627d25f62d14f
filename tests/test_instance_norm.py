"""instance_norm (group_norm with a group per channel; batch_norm in eval on the running statistics) against
torch's: values, gradients, strides and running-stat updates over 1-D to 3-D inputs, with and without running
statistics and affine parameters; gradcheck and gradgradcheck; vmap; errors; the modules, convert and enable()."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
SHAPES = [(2, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 2), (1, 4, 3, 3)]


def _stats(C, given):
    return (torch.randn(C, dtype=f64), torch.rand(C, dtype=f64) + 0.5) if given else (None, None)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["input stats", "input stats, running updated", "running stats"])
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_values_gradients_strides_and_running_stats(shape, mode, affine, channels_last):
    x = torch.randn(shape, dtype=f64) * 2 + 3
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    w, b = (torch.randn(C, dtype=f64), torch.randn(C, dtype=f64)) if affine else (None, None)
    stats = _stats(C, mode != "input stats")
    grad_output = torch.randn(shape, dtype=f64)
    results = []
    for fn in (mF, F):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        running = [t.clone() if t is not None else None for t in stats]
        y = fn.instance_norm(leaves[0], *running, leaves[1], leaves[2], mode != "running stats", 0.2, 1e-5)
        grads = torch.autograd.grad(y, [t for t in leaves if t is not None], grad_output)
        results.append((y, grads, running))
    (y, grads, running), (y_ref, grads_ref, running_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.stride() == y_ref.stride()
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    for s, r in zip(running, running_ref):
        if r is not None:
            torch.testing.assert_close(s, r, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 3, 4, 3, dtype=f64, requires_grad=True)
    w, b = torch.randn(3, dtype=f64, requires_grad=True), torch.randn(3, dtype=f64, requires_grad=True)

    def f(x, w, b):
        return mF.instance_norm(x, None, None, w, b)

    assert torch.autograd.gradcheck(f, (x, w, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_vmap_over_the_input_equals_stacked_slices():
    x = torch.randn(4, 2, 3, 5, dtype=f64)
    w = torch.randn(3, dtype=f64)
    out = vmap(lambda t: mF.instance_norm(t, weight=w))(x)
    torch.testing.assert_close(out, torch.stack([F.instance_norm(t, weight=w) for t in x]), rtol=1e-12, atol=1e-12)


def test_errors_are_torchs():
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        mF.instance_norm(torch.randn(2, 3, 1, 1))
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        mF.instance_norm(torch.randn(2, 3, 4), use_input_stats=False)
    with pytest.raises(RuntimeError, match="is not differentiable with respect to argument 'running_mean'"):
        mF.instance_norm(torch.randn(2, 3, 4), torch.zeros(3, requires_grad=True), torch.ones(3))


@pytest.mark.parametrize("cls,shape", [("InstanceNorm1d", (2, 4, 7)), ("InstanceNorm2d", (2, 4, 5, 5)),
                                       ("InstanceNorm3d", (2, 4, 3, 3, 3)), ("InstanceNorm2d", (4, 5, 5))])
@pytest.mark.parametrize("kwargs", [{}, dict(affine=True, track_running_stats=True), dict(momentum=None,
                                                                                        track_running_stats=True)])
def test_modules_match_the_builtins(cls, shape, kwargs):
    torch.manual_seed(0)
    builtin, ours = getattr(nn, cls)(4, **kwargs), getattr(mnn, cls)(4, **kwargs)
    assert repr(ours) == repr(builtin) and isinstance(ours, getattr(nn, cls))
    assert ours.state_dict().keys() == builtin.state_dict().keys()
    x = torch.randn(shape)
    for training in (True, False, True):
        builtin.train(training), ours.train(training)
        leaves = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(leaf) for m, leaf in zip((builtin, ours), leaves)]
        torch.testing.assert_close(outs[1], outs[0])
        for out in outs:
            out.pow(2).sum().backward()
        torch.testing.assert_close(leaves[1].grad, leaves[0].grad)
        for a, b in zip(ours.buffers(), builtin.buffers()):
            torch.testing.assert_close(a, b)


def test_convert_and_enable_leave_no_builtin_backward():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, affine=True), nn.ReLU())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = manual_ops.convert(model)
    assert type(converted[1]) is mnn.InstanceNorm2d and converted[1].weight is model[1].weight
    out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert type(manual_ops.revert(converted)[1]) is nn.InstanceNorm2d
    x = torch.randn(2, 3, 4, requires_grad=True)
    with manual_ops.enable():
        y = F.instance_norm(x)
    assert not manual_ops.builtin_backward_nodes(y)
    torch.testing.assert_close(y, F.instance_norm(x))
