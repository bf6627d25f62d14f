"""conv_transpose2d (conv2d's dX pass as its forward, conv2d's forward and dW pass as its backward) against torch's:
values, gradients and strides over a grid of every option of nn.ConvTranspose2d (stride, padding, output_padding
below the stride and below the dilation, dilation, groups, bias), batched and unbatched, contiguous and channels
last; low precision; gradcheck, gradgradcheck, forward AD and forward-over-reverse; vmap; torch.compile; autocast;
empty batches; errors; the module (output_size), convert and enable()."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from test_low_precision import LOW, check_accuracy
from torch import nn
from torch.func import grad, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
# (stride, padding, output_padding, dilation, groups, kernel)
OPTIONS = [(1, 0, 0, 1, 1, 3), (2, 1, 1, 1, 1, 3), (2, 0, 0, 2, 2, 3), (3, 1, 2, 1, 1, 2), (1, 1, 1, 2, 1, 3),
           ((2, 1), (1, 0), (1, 0), (1, 2), 2, (3, 2)), (1, 0, 0, 1, 4, 1), (2, 2, 1, 3, 2, 3), (4, 0, 3, 1, 1, 4)]


def _case(options, channels_last=False, unbatched=False, dtype=f64):
    stride, padding, output_padding, dilation, groups, kernel = options
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(*(() if unbatched else (2,)), 4, 5, 6, dtype=dtype)
    w = torch.randn(4, 8 // groups, kh, kw, dtype=dtype)
    if channels_last and not unbatched:
        x = x.to(memory_format=torch.channels_last)
    return x, w, torch.randn(8, dtype=dtype), (stride, padding, output_padding, groups, dilation)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "unbatched"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_parity_values_gradients_and_strides(options, bias, layout):
    x, w, b, args = _case(options, layout == "channels_last", layout == "unbatched")
    b = b if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    y = mF.conv_transpose2d(x, w, b, *args)
    y_ref = F.conv_transpose2d(x, w, b, *args)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.stride() == y_ref.stride()
    g = torch.randn_like(y_ref)
    for a, r in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, leaves, g)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
        assert a.stride() == r.stride()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("options", OPTIONS[:3], ids=str)
def test_low_precision_within_twice_the_builtins_error(options, dtype):
    x, w, b, args = _case(options)
    for t in (x, w, b):
        t.requires_grad_()
    check_accuracy(lambda x, w, b: mF.conv_transpose2d(x, w, b, *args),
                   lambda x, w, b: F.conv_transpose2d(x, w, b, *args), [x, w, b], [dtype] * 3)


@pytest.mark.parametrize("options", [OPTIONS[1], OPTIONS[4], OPTIONS[5]], ids=str)
def test_gradcheck_gradgradcheck_and_forward_ad(options):
    x, w, b, args = _case(options)
    x, w, b = x[:, :, :3, :3].clone(), w, b

    def f(x, w, b):
        return mF.conv_transpose2d(x, w, b, *args)

    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("in_dims", [(0, None, None), (1, None, None), (None, 0, 0), (0, 0, None)])
def test_vmap_equals_stacked_slices(in_dims):
    B = 3
    x, w, b, args = _case(OPTIONS[5])
    batched = [t if d is None else torch.stack([torch.randn_like(t) for _ in range(B)], d)
               for t, d in zip((x, w, b), in_dims)]
    out = vmap(lambda x, w, b: mF.conv_transpose2d(x, w, b, *args), in_dims=in_dims)(*batched)
    slices = [F.conv_transpose2d(*(t if d is None else t.select(d, i) for t, d in zip(batched, in_dims)), *args)
              for i in range(B)]
    torch.testing.assert_close(out, torch.stack(slices), rtol=1e-12, atol=1e-12)


def test_per_sample_weight_gradients():
    x, w, b, args = _case(OPTIONS[1])

    def loss(fn):
        return lambda w, xi: fn(xi.unsqueeze(0), w, None, *args).pow(2).sum()

    ours = vmap(grad(loss(mF.conv_transpose2d)), in_dims=(None, 0))(w, x)
    theirs = vmap(grad(loss(F.conv_transpose2d)), in_dims=(None, 0))(w, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_torch_compile_fullgraph():
    x, w, b, args = _case(OPTIONS[1], dtype=torch.float32)
    leaves = tuple(t.requires_grad_() for t in (x, w, b))
    compiled = torch.compile(lambda x, w, b: mF.conv_transpose2d(x, w, b, *args).sin().sum(), fullgraph=True,
                             backend="aot_eager")
    ours = torch.autograd.grad(compiled(*leaves), leaves)
    theirs = torch.autograd.grad(F.conv_transpose2d(*leaves, *args).sin().sum(), leaves)
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t)


def test_autocast_runs_in_the_lower_dtype_as_the_builtin():
    x, w, b, args = _case(OPTIONS[1], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = mF.conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=5e-2)


def test_empty_batch():
    x, w, b, args = _case(OPTIONS[1])
    x = x[:0].requires_grad_()
    w.requires_grad_()
    y, y_ref = mF.conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args)
    assert y.shape == y_ref.shape
    for a, r in zip(torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(y_ref.sum(), (x, w))):
        torch.testing.assert_close(a, r)


def test_errors_are_torchs():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3)
    cases = [
        ((x, w), dict(stride=2, output_padding=2), "output padding must be smaller than either stride or dilation"),
        ((x, torch.randn(3, 3, 3, 3)), {}, r"Given transposed=1, weight of size \[3, 3, 3, 3\], expected "
                                           r"input\[2, 4, 5, 5\] to have 3 channels, but got 4 channels instead"),
        ((x, w), dict(groups=3), "Given groups=3, expected weight to be divisible by 3 at dimension 0"),
        ((torch.randn(2, 4, 5, 5, 1), w), {}, "Expected 3D \\(unbatched\\) or 4D \\(batched\\) input"),
    ]
    for args, kwargs, message in cases:
        for fn in (F.conv_transpose2d, mF.conv_transpose2d):
            with pytest.raises(RuntimeError, match=message):
                fn(*args, **kwargs)


@pytest.mark.parametrize("bias,groups", itertools.product([True, False], [1, 2]))
def test_module_matches_the_builtin_with_output_size(bias, groups):
    torch.manual_seed(0)
    builtin = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
    torch.manual_seed(0)
    ours = mnn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
    assert repr(ours) == repr(builtin) and isinstance(ours, nn.ConvTranspose2d)
    for a, b in zip(ours.state_dict().values(), builtin.state_dict().values()):
        assert torch.equal(a, b)  # torch's init, same seed
    x = torch.randn(3, 4, 5, 5)
    for output_size in (None, (10, 10), [3, 6, 9, 10]):
        leaves = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(leaf, output_size=output_size) for m, leaf in zip((builtin, ours), leaves)]
        torch.testing.assert_close(outs[1], outs[0])
        for out in outs:
            out.pow(2).sum().backward()
        torch.testing.assert_close(leaves[1].grad, leaves[0].grad)
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported'):
        mnn.ConvTranspose2d(4, 6, 3, padding_mode="reflect")  # torch's constructor
    ours.padding_mode = "reflect"
    with pytest.raises(ValueError, match="Only `zeros` padding mode is supported"):  # torch's forward, ours
        ours(x)


def test_convert_and_enable_leave_no_builtin_backward():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.ConvTranspose2d(8, 3, 3, stride=2))
    x = torch.randn(2, 3, 9, 9)
    expected = model(x)
    converted = manual_ops.convert(model)
    assert type(converted[2]) is mnn.ConvTranspose2d and converted[2].weight is model[2].weight
    out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert type(manual_ops.revert(converted)[2]) is nn.ConvTranspose2d
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    with manual_ops.enable():
        y = F.conv_transpose2d(x, w, stride=2)
    assert not manual_ops.builtin_backward_nodes(y)
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, stride=2))
