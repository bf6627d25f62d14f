"""max_pool2d, avg_pool2d and adaptive_avg_pool2d against torch's built-ins."""
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_ops.functional as mF
import manual_ops.nn as mnn

ops = torch.ops.manual_ops

# (kernel, stride, padding, dilation, ceil_mode): overlapping windows (stride < kernel),
# gaps (stride > kernel), padding, dilation, and ceil_mode overhangs.
MAX_GRID = [
    (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 1, True),
    (2, 3, 1, 1, True), ((3, 2), (2, 1), (1, 0), 1, False), (2, 1, 0, 2, False), (3, 2, 1, 2, True),
    ((2, 3), 2, (1, 1), (2, 1), True), (1, 2, 0, 1, True),
]
# (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_GRID = [
    (k, s, p, c, cip, d)
    for (k, s, p), c, cip, d in itertools.product(
        [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (1, 2), (1, 0)), (2, 3, 1)], [False, True], [True, False], [None, 3]
    )
]
ADAPTIVE_SIZES = [1, 2, (3, 4), (5, 2), (4, 9), (None, 3), (2, None), 7]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def layout(x, kind):
    """x in the given layout: NCHW contiguous, channels-last, or a non-contiguous slice."""
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        return torch.cat([x, x], dim=-1)[..., ::2]
    return x.contiguous()


def distinct(*shape, dtype=torch.float64):
    """Values without ties, spaced 0.01 apart, so max pooling is differentiable everywhere
    and gradcheck's perturbations (1e-6) never change an argmax."""
    return (torch.randperm(torch.Size(shape).numel(), dtype=dtype) * 0.01 - 1).reshape(shape)


def run_both(ours, builtin, x):
    """Outputs and input grads of ours and the built-in on copies of x, for the same grad_output."""
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = ours(xa), builtin(xb)
    oa, ob = (ya[0], yb[0]) if isinstance(ya, tuple) else (ya, yb)
    grad = torch.randn_like(ob)
    oa.backward(grad)
    ob.backward(grad)
    return ya, yb, xa.grad, xb.grad


# ------------------------------------------------------------------ gradcheck (float64)

@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
def test_max_pool2d_gradcheck(k, s, p, d, ceil, kind):
    x = layout(distinct(2, 3, 7, 6), kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mF.max_pool2d(t, k, s, p, d, ceil), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
def test_avg_pool2d_gradcheck(k, s, p, ceil, cip, div, kind):
    x = layout(torch.randn(2, 3, 7, 6, dtype=torch.float64), kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mF.avg_pool2d(t, k, s, p, ceil, cip, div), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_avg_pool2d_gradcheck(size, kind):
    x = layout(torch.randn(2, 3, 7, 6, dtype=torch.float64), kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mF.adaptive_avg_pool2d(t, size), (x,))


def test_gradcheck_unbatched():
    x = distinct(3, 6, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: mF.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda t: mF.avg_pool2d(t, 3, 2, 1, count_include_pad=False), (x,))
    assert torch.autograd.gradcheck(lambda t: mF.adaptive_avg_pool2d(t, (4, 2)), (x,))


# ------------------------------------------------------------------ parity with torch (float32)

@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
def test_max_pool2d_matches_torch(k, s, p, d, ceil, kind):
    # Max pooling selects and routes values without arithmetic (the backward adds the same
    # terms in the same order as torch), so outputs, indices and grads must be identical.
    x = layout(torch.randn(2, 5, 9, 8), kind)
    (ya, ia), (yb, ib), ga, gb = run_both(lambda t: mF.max_pool2d(t, k, s, p, d, ceil, return_indices=True),
                                          lambda t: F.max_pool2d(t, k, s, p, d, ceil, return_indices=True), x)
    assert torch.equal(ya, yb) and torch.equal(ia, ib) and torch.equal(ga, gb)
    assert ya.stride() == yb.stride() and ia.stride() == ib.stride() and ga.stride() == gb.stride()


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
def test_avg_pool2d_matches_torch(k, s, p, ceil, cip, div, kind):
    # The forward sums each window in torch's order and divides by the same divisor; the
    # backward's sums of <= 9 float32 terms of magnitude ~1 may differ from torch's in order
    # only: a few ulps, well inside atol=1e-6 with rtol=1e-5.
    x = layout(torch.randn(2, 5, 9, 8), kind)
    ya, yb, ga, gb = run_both(lambda t: mF.avg_pool2d(t, k, s, p, ceil, cip, div),
                              lambda t: F.avg_pool2d(t, k, s, p, ceil, cip, div), x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    assert ya.stride() == yb.stride() and ga.stride() == gb.stride()


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_avg_pool2d_matches_torch(size, kind):
    # We accumulate chunks of float32 sums in float64, torch in float32, over windows of <= 63 terms:
    # differences of a few float32 ulps of the mean, inside rtol=1e-5, atol=1e-6.
    x = layout(torch.randn(2, 5, 9, 8), kind)
    ya, yb, ga, gb = run_both(lambda t: mF.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    assert ga.stride() == gb.stride()


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [1, (2, 3)])
def test_adaptive_avg_pool2d_long_windows_match_torch(size, dtype, kind):
    """Windows of more than one 256-value chunk (23 * 17 = 391 values), rows (NCHW) and channel counts
    (NHWC: 19) of full vectors, pairs of vectors and remainders; bfloat16 within its rounding."""
    x = layout(torch.randn(2, 19, 23, 17) + 1, kind).to(dtype)
    ya, yb, ga, gb = run_both(lambda t: mF.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(ga, gb, **tol)
    assert ga.stride() == gb.stride()


def test_unbatched_and_empty_batch_match_torch():
    for x in (torch.randn(3, 9, 8), torch.randn(0, 3, 9, 8)):
        (ya, ia), (yb, ib), ga, gb = run_both(lambda t: mF.max_pool2d(t, 3, 2, 1, return_indices=True),
                                              lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True), x)
        assert ya.shape == yb.shape and torch.equal(ya, yb) and torch.equal(ia, ib) and torch.equal(ga, gb)
        ya, yb, ga, gb = run_both(lambda t: mF.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), x)
        assert ya.shape == yb.shape
        torch.testing.assert_close((ya, ga), (yb, gb), rtol=1e-5, atol=1e-6)
        ya, yb, ga, gb = run_both(lambda t: mF.adaptive_avg_pool2d(t, (2, 5)),
                                  lambda t: F.adaptive_avg_pool2d(t, (2, 5)), x)
        assert ya.shape == yb.shape
        torch.testing.assert_close((ya, ga), (yb, gb), rtol=1e-5, atol=1e-6)


def test_adaptive_zero_output_size_matches_torch():
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    y = mF.adaptive_avg_pool2d(x, (0, 2))
    assert y.shape == F.adaptive_avg_pool2d(x, (0, 2)).shape == (2, 3, 0, 2)
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_float64_matches_torch():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    for ours, builtin in [(mF.max_pool2d, F.max_pool2d), (mF.avg_pool2d, F.avg_pool2d)]:
        ya, yb, ga, gb = run_both(lambda t: ours(t, 3, 2, 1, ceil_mode=True),
                                  lambda t: builtin(t, 3, 2, 1, ceil_mode=True), x)
        torch.testing.assert_close((ya, ga), (yb, gb), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ max-pool semantics

def test_indices_round_trip_through_max_unpool2d():
    x = torch.randn(2, 4, 10, 9)
    for kind in ["contiguous", "channels_last"]:
        xl = layout(x, kind)
        y, idx = mF.max_pool2d(xl, 3, 2, 1, return_indices=True)
        assert idx.dtype == torch.int64
        un = F.max_unpool2d(y, idx, 3, 2, 1, output_size=x.shape[-2:])
        # Every pooled value lands back on the position it came from.
        assert torch.equal(un.flatten(2).gather(2, idx.flatten(2)), y.flatten(2))
        assert torch.equal(un, F.max_unpool2d(*F.max_pool2d(xl, 3, 2, 1, return_indices=True), 3, 2, 1,
                                              output_size=x.shape[-2:]))


def test_first_maximum_wins_ties_and_padding_is_minus_inf():
    x = torch.tensor([[[[1.0, 3.0, 3.0], [3.0, -5.0, 0.0], [-1.0, -2.0, -3.0]]]])
    for kind in ["contiguous", "channels_last"]:
        y, idx = mF.max_pool2d(layout(x, kind), 2, 1, 1, return_indices=True)
        yt, it = F.max_pool2d(x, 2, 1, 1, return_indices=True)
        assert torch.equal(y, yt) and torch.equal(idx, it)
        assert idx[0, 0, 1, 1] == 1  # window {1, 3, 3, -5}: the first 3 (position 1) wins
        assert y[0, 0, 3, 3] == -3.0  # window is 3 padding cells and -3: padding acts as -inf


def test_nan_propagates_like_torch():
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[1, 2, 4, 4] = float("nan")
    x[0, 1] = -float("inf")
    for kind in ["contiguous", "channels_last"]:
        (ya, ia), (yb, ib), ga, gb = run_both(lambda t: mF.max_pool2d(t, 3, 1, 1, return_indices=True),
                                              lambda t: F.max_pool2d(t, 3, 1, 1, return_indices=True),
                                              layout(x, kind))
        assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
        assert torch.equal(ia, ib) and torch.equal(ga, gb)


def expected_max_grad(x, idx, grad):
    """The max-pool gradient implied by indices: grad scattered (accumulated) to each index; -1 routes nothing."""
    planes = grad.reshape(-1, grad.shape[-2] * grad.shape[-1])
    idx = idx.reshape(planes.shape)
    keep = idx >= 0
    out = torch.zeros(planes.shape[0], x.shape[-2] * x.shape[-1], dtype=grad.dtype)
    out.scatter_add_(1, idx.where(keep, 0), planes.where(keep, 0))
    return out.reshape(x.shape)


def test_window_wholly_in_padding_gives_minus_inf_and_index_minus_one():
    # Width 2, kernel 2 with dilation 3 and padding 1: each window taps columns -1 and 2, both
    # outside the input. torch reports ih*W + 2 there, i.e. the element (ih + 1, 0), which is
    # not in the window (its backward would route the gradient there); we report -1.
    x = torch.randn(1, 1, 3, 2, requires_grad=True)
    y, idx = mF.max_pool2d(x, (2, 2), 1, (0, 1), (1, 3), return_indices=True)
    yt, it = F.max_pool2d(x.detach(), (2, 2), 1, (0, 1), (1, 3), return_indices=True)
    assert torch.equal(y, yt) and (y == -float("inf")).all()
    assert it.flatten().tolist() == [2, 4] and (idx == -1).all()
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_avg_divisor_rules():
    x = torch.ones(1, 1, 5, 5)
    # ceil_mode overhang is never counted; padding is, with count_include_pad.
    y = mF.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=True)
    assert torch.equal(y[0, 0, 0], torch.tensor([0.25, 0.5, 0.5]))
    assert torch.equal(mF.avg_pool2d(x, 2, 2, 0, ceil_mode=True), torch.ones(1, 1, 3, 3))
    assert torch.equal(mF.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False), torch.ones(1, 1, 3, 3))
    assert torch.equal(mF.avg_pool2d(x, 2, divisor_override=8), torch.full((1, 1, 2, 2), 0.5))


# ------------------------------------------------------------------ property test

@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
    kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2),
    ceil=st.booleans(), cip=st.booleans(), div=st.sampled_from([None, 2, -3]),
    kind=st.sampled_from(LAYOUTS), oh=st.integers(1, 10), ow=st.integers(1, 10),
)
def test_property_matches_torch(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ceil, cip, div, kind, oh, ow):
    x = layout(torch.randn(n, c, h, w), kind)
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    args = ((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)
    try:
        yt, it = F.max_pool2d(x, *args, return_indices=True)
    except RuntimeError as e:
        with pytest.raises(RuntimeError, match=re.escape(str(e).split("\n")[0])):
            mF.max_pool2d(x, *args)
    else:
        xa = x.detach().clone().requires_grad_()
        ya, ia = mF.max_pool2d(xa, *args, return_indices=True)
        grad = torch.randn_like(ya)
        ya.backward(grad)
        # Windows wholly in the padding (possible with dilation): max of zeros there is -inf.
        empty = F.max_pool2d(torch.zeros_like(x), *args) == -float("inf")
        assert torch.equal(ya, yt) and torch.equal(ia[~empty], it[~empty]) and (ia[empty] == -1).all()
        assert torch.equal(xa.grad, expected_max_grad(x, ia, grad))
        if not empty.any():  # else torch's indices there are bogus, and so is its backward
            xb = x.detach().clone().requires_grad_()
            F.max_pool2d(xb, *args).backward(grad)
            assert torch.equal(xa.grad, xb.grad)
    try:
        F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil, cip, div)
    except RuntimeError as e:
        with pytest.raises(RuntimeError, match=re.escape(str(e).split("\n")[0])):
            mF.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil, cip, div)
    else:
        ya, yb, ga, gb = run_both(lambda t: mF.avg_pool2d(t, (kh, kw), (sh, sw), (ph, pw), ceil, cip, div),
                                  lambda t: F.avg_pool2d(t, (kh, kw), (sh, sw), (ph, pw), ceil, cip, div), x)
        torch.testing.assert_close((ya, ga), (yb, gb), rtol=1e-5, atol=1e-5)
    ya, yb, ga, gb = run_both(lambda t: mF.adaptive_avg_pool2d(t, (oh, ow)),
                              lambda t: F.adaptive_avg_pool2d(t, (oh, ow)), x)
    torch.testing.assert_close((ya, ga), (yb, gb), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ opcheck, compile, modules

def _opcheck_cases():
    for kind in ["contiguous", "channels_last"]:
        x = layout(torch.randn(2, 3, 7, 6), kind).requires_grad_()
        y, idx = ops.max_pool2d_forward(x.detach(), [3, 2], [2, 1], [1, 1], [1, 2], True)
        yield ops.max_pool2d_forward.default, (x, [3, 2], [2, 1], [1, 1], [1, 2], True)
        yield ops.max_pool2d_backward.default, (torch.randn_like(y), x.detach(), idx)
        args = ([3, 3], [2, 2], [1, 1], True, False, None)
        y = ops.avg_pool2d_forward(x.detach(), *args)
        yield ops.avg_pool2d_forward.default, (x, *args)
        yield ops.avg_pool2d_forward.default, (x, [2, 2], [2, 2], [0, 0], False, True, 3)
        yield ops.avg_pool2d_backward.default, (torch.randn_like(y), x.detach(), *args)
        yield ops.adaptive_avg_pool2d_forward.default, (x, [4, 5])
        yield ops.adaptive_avg_pool2d_backward.default, (torch.randn(2, 3, 4, 5), x.detach())
    x3 = torch.randn(3, 7, 6, requires_grad=True)
    yield ops.max_pool2d_forward.default, (x3, [2, 2], [2, 2], [0, 0], [1, 1], False)
    yield ops.adaptive_avg_pool2d_forward.default, (x3, [1, 1])


@pytest.mark.parametrize("op,args", list(_opcheck_cases()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    def net(t):
        t = mF.max_pool2d(t, 3, 2, 1)
        t = mF.avg_pool2d(t, 2, ceil_mode=True, count_include_pad=False)
        return mF.adaptive_avg_pool2d(t, 1).flatten(1)

    x = torch.randn(2, 4, 16, 15)
    for kind in ["contiguous", "channels_last"]:
        xe, xc = layout(x.clone(), kind).requires_grad_(), layout(x.clone(), kind).requires_grad_()
        ye = net(xe)
        yc = torch.compile(net, fullgraph=True)(xc)
        grad = torch.randn_like(ye)
        ye.backward(grad)
        yc.backward(grad)
        assert torch.equal(ye, yc) and torch.equal(xe.grad, xc.grad)


def test_modules_are_torch_modules_with_torch_repr():
    pairs = [
        (mnn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (mnn.MaxPool2d(2, return_indices=True), torch.nn.MaxPool2d(2, return_indices=True)),
        (mnn.AvgPool2d(3, 2, 1, count_include_pad=False, divisor_override=2),
         torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False, divisor_override=2)),
        (mnn.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3))),
    ]
    x = torch.randn(2, 3, 8, 7)
    for ours, theirs in pairs:
        assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ bad input

X = torch.randn(2, 3, 8, 8)
ERRORS = [
    (lambda f: f.max_pool2d(X, 2, padding=2), RuntimeError, "pad should be at most half of effective kernel size"),
    (lambda f: f.max_pool2d(X, 3, padding=2, dilation=2), RuntimeError,
     "pad should be smaller than or equal to half of kernel size, but got padW = 2, padH = 2, kW = 3, kH = 3"),
    (lambda f: f.max_pool2d(X, 0, 1), RuntimeError, "kernel size should be greater than zero, but got kH: 0 kW: 0"),
    (lambda f: f.max_pool2d(X, 2, 0), RuntimeError, "stride should not be zero"),
    (lambda f: f.max_pool2d(X, 2, -1), RuntimeError, "stride should be greater than zero, but got dH: -1 dW: -1"),
    (lambda f: f.max_pool2d(X, 2, dilation=0), RuntimeError, "dilation should be greater than zero"),
    (lambda f: f.max_pool2d(X, 2, padding=(0, -1)), RuntimeError, "pad must be non-negative, but got pad: -1"),
    (lambda f: f.max_pool2d(X, 9), RuntimeError,
     r"Given input size: \(3x8x8\). Calculated output size: \(3x0x0\). Output size is too small"),
    (lambda f: f.max_pool2d(X[0, 0], 2), RuntimeError, "non-empty 3D or 4D \\(batch mode\\) tensor expected for input"),
    (lambda f: f.max_pool2d(X[None], 2), RuntimeError, "non-empty 3D or 4D \\(batch mode\\) tensor expected for input"),
    (lambda f: f.max_pool2d(X[:, :, :0], 2), RuntimeError,
     re.escape("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:[2, 3, 0, 8]")),
    (lambda f: f.max_pool2d(X[:, :0], 2), RuntimeError, "0 dim batch size for input, but got:\\[2, 0, 8, 8\\]"),
    (lambda f: f.max_pool2d(X, (2, 2, 2)), RuntimeError,
     "max_pool2d: kernel_size must either be a single int, or a tuple of two ints"),
    (lambda f: f.max_pool2d(X, 2, (2, 2, 2)), RuntimeError,
     "max_pool2d: stride must either be omitted, a single int, or a tuple of two ints"),
    (lambda f: f.avg_pool2d(X, 2, padding=2), RuntimeError, "pad should be at most half of effective kernel size"),
    (lambda f: f.avg_pool2d(X, -1, 1), RuntimeError, "kernel size should be greater than zero, but got kH: -1 kW: -1"),
    (lambda f: f.avg_pool2d(X, 2, -2), RuntimeError, "stride should be greater than zero, but got dH: -2 dW: -2"),
    (lambda f: f.avg_pool2d(X, 2, divisor_override=0), RuntimeError, "divisor must be not zero"),
    (lambda f: f.avg_pool2d(X, 9), RuntimeError, "Output size is too small"),
    (lambda f: f.avg_pool2d(X[None], 2), RuntimeError, "Expected 3D or 4D \\(batch mode\\) tensor"),
    (lambda f: f.avg_pool2d(X[..., :0], 2), RuntimeError, "but got:\\[2, 3, 8, 0\\]"),
    (lambda f: f.avg_pool2d(X, 2, 2, (1, 1, 1)), RuntimeError,
     "avg_pool2d: padding must either be a single int, or a tuple of two ints"),
    (lambda f: f.adaptive_avg_pool2d(X, -1), RuntimeError,
     re.escape("adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but received {-1, -1}")
     ),
    (lambda f: f.adaptive_avg_pool2d(X, (1, 2, 3)), RuntimeError, "adaptive_avg_pool2d: output_size must be 2"),
    (lambda f: f.adaptive_avg_pool2d(X[0, 0], 2), RuntimeError,
     re.escape("adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got [8, 8]")),
    # a pair for output_size: torch's Python wrapper checks the rank first (its OpInfo's error input)
    (lambda f: f.adaptive_avg_pool2d(X[0, 0], (2, 2)), ValueError, "^Input dimension should be at least 3$"),
    (lambda f: f.adaptive_avg_pool2d(X[0], (2, 2, 2)), ValueError, "^Input dimension should be at least 4$"),
    (lambda f: f.adaptive_avg_pool2d(X[:, :, :, :0], 2), RuntimeError,
     re.escape("Expected input to have non-zero size for non-batch dimensions, but input has sizes [2, 3, 8, 0] "
               "with dimension 3 being empty")),
    (lambda f: f.max_pool2d(X, 2.5), TypeError, "kernel_size"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_bad_input_raises_like_torch(call, error, message):
    with pytest.raises(error, match=message):
        call(F)  # the expected message is torch's own
    with pytest.raises(error, match=message):
        call(mF)


def test_errors_torch_reports_oddly():
    # torch raises IndexError (from a size(-3) lookup) for a 2-D avg_pool2d input; we raise
    # RuntimeError, with torch's message for the other wrong ranks.
    with pytest.raises(RuntimeError, match=re.escape("with optional 0 dim batch size for input, but got:[8, 8]")):
        mF.avg_pool2d(X[0, 0], 2)
    with pytest.raises(RuntimeError, match="max_pool2d: expected input to be float32, float64, bfloat16 or float16, but got Long"):
        mF.max_pool2d(X.long(), 2)


def test_backward_ops_reject_bad_arguments():
    x = torch.randn(2, 3, 6, 6)
    y, idx = ops.max_pool2d_forward(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    bad = idx.clone()
    bad[1, 2, 0, 0] = 36
    with pytest.raises(RuntimeError, match="max_pool2d_backward: index 36 is out of range for an input plane of 36"):
        ops.max_pool2d_backward(torch.ones_like(y), x, bad)
    with pytest.raises(RuntimeError, match=re.escape("expected grad_output of size [2, 3, 3, 3], but got grad_output "
                                                     "of size [2, 3, 3, 2]")):
        ops.max_pool2d_backward(torch.ones(2, 3, 3, 2), x, idx)
    with pytest.raises(RuntimeError, match="expected indices of dtype int64"):
        ops.max_pool2d_backward(torch.ones_like(y), x, idx.int())
    with pytest.raises(RuntimeError, match=re.escape("expected grad_output of size [2, 3, 3, 3]")):
        ops.avg_pool2d_backward(torch.ones(2, 3, 4, 3), x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match="expected input and grad_output to have the same dtype"):
        ops.adaptive_avg_pool2d_backward(torch.ones(2, 3, 2, 2, dtype=torch.float64), x)
