"""conv1d (conv2d on the one-row view) against torch's: values, gradients and strides over a grid of options, batched
and unbatched; gradcheck, gradgradcheck and forward AD; vmap; torch.compile; errors; Conv1d, convert and enable()."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
# (stride, padding, dilation, groups)
OPTIONS = [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (3, 0, 1, 2), (1, "same", 2, 1), (1, "valid", 1, 2),
           ((2,), (1,), (1,), 1), (2, 3, 2, 2)]


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_values_gradients_and_strides(options, bias, unbatched):
    stride, padding, dilation, groups = options
    x = torch.randn(*(() if unbatched else (3,)), 4, 11, dtype=f64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, dtype=f64, requires_grad=True)
    b = torch.randn(6, dtype=f64, requires_grad=True) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    y = mF.conv1d(x, w, b, stride, padding, dilation, groups)
    y_ref = F.conv1d(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.stride() == y_ref.stride()
    g = torch.randn_like(y_ref)
    for a, r in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, leaves, g)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
        assert a.stride() == r.stride()


def test_gradcheck_gradgradcheck_and_forward_ad():
    x = torch.randn(2, 4, 9, dtype=f64, requires_grad=True)
    w = torch.randn(6, 2, 3, dtype=f64, requires_grad=True)
    b = torch.randn(6, dtype=f64, requires_grad=True)

    def f(x, w, b):
        return mF.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2)

    assert torch.autograd.gradcheck(f, (x, w, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_vmap_and_per_sample_weight_gradients():
    x = torch.randn(5, 2, 4, 9, dtype=f64)
    w = torch.randn(6, 4, 3, dtype=f64)
    out = vmap(lambda t: mF.conv1d(t, w, padding=1))(x)
    torch.testing.assert_close(out, torch.stack([F.conv1d(t, w, padding=1) for t in x]), rtol=1e-12, atol=1e-12)

    def loss(fn):
        return lambda w, xi: fn(xi.unsqueeze(0), w, stride=2).pow(2).sum()

    ours = vmap(torch.func.grad(loss(mF.conv1d)), in_dims=(None, 0))(w, x[:, 0])
    theirs = vmap(torch.func.grad(loss(F.conv1d)), in_dims=(None, 0))(w, x[:, 0])
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_torch_compile_fullgraph():
    x = torch.randn(2, 4, 9, requires_grad=True)
    w = torch.randn(6, 4, 3, requires_grad=True)
    compiled = torch.compile(lambda x, w: mF.conv1d(x, w, padding="same").sin().sum(), fullgraph=True,
                             backend="aot_eager")
    ours = torch.autograd.grad(compiled(x, w), (x, w))
    theirs = torch.autograd.grad(F.conv1d(x, w, padding="same").sin().sum(), (x, w))
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t)


def test_errors_are_torchs():
    cases = [
        ((torch.randn(2, 3, 4, 5), torch.randn(4, 3, 3)), "Expected 2D \\(unbatched\\) or 3D \\(batched\\) input"),
        ((torch.randn(5), torch.randn(4, 3, 3)), "Expected 2D \\(unbatched\\) or 3D \\(batched\\) input"),
        ((torch.randn(2, 3, 8), torch.randn(4, 3)), "weight should have at least three dimensions"),
    ]
    for args, message in cases:
        for fn in (F.conv1d, mF.conv1d):
            with pytest.raises(RuntimeError, match=message):
                fn(*args)
    with pytest.raises(RuntimeError, match=r"expected input\[2, 3, 1, 8\] to have 2 channels, but got 3"):
        mF.conv1d(torch.randn(2, 3, 8), torch.randn(4, 2, 3))  # conv2d's words, on the one-row view
    with pytest.raises(RuntimeError, match="stride"):
        mF.conv1d(torch.randn(2, 3, 8), torch.randn(4, 3, 3), stride=(1, 2))


@pytest.mark.parametrize("padding_mode,bias", itertools.product(["zeros", "reflect", "circular"], [True, False]))
def test_module_matches_the_builtin(padding_mode, bias):
    torch.manual_seed(0)
    builtin = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias, padding_mode=padding_mode)
    torch.manual_seed(0)
    ours = mnn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias, padding_mode=padding_mode)
    assert repr(ours) == repr(builtin) and isinstance(ours, nn.Conv1d)
    for a, b in zip(ours.state_dict().values(), builtin.state_dict().values()):
        assert torch.equal(a, b)  # torch's init, same seed
    x = torch.randn(3, 4, 10)
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(leaf) for m, leaf in zip((builtin, ours), leaves)]
    torch.testing.assert_close(outs[1], outs[0])
    for out in outs:
        out.pow(2).sum().backward()
    torch.testing.assert_close(leaves[1].grad, leaves[0].grad)
    for p, q in zip(ours.parameters(), builtin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_convert_and_enable_leave_no_builtin_backward():
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 1))
    x = torch.randn(2, 3, 9)
    expected = model(x)
    converted = manual_ops.convert(model)
    assert type(converted[0]) is mnn.Conv1d and converted[0].weight is model[0].weight
    out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert type(manual_ops.revert(converted)[0]) is nn.Conv1d
    w = torch.randn(4, 3, 3, requires_grad=True)
    with manual_ops.enable():
        y = F.conv1d(x, w)
    assert not manual_ops.builtin_backward_nodes(y)
    torch.testing.assert_close(y, F.conv1d(x, w))
