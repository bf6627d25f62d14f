import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn
from manual_ops._utils import pair

f64 = torch.float64

# (input shape, weight shape, kwargs): every option and their combinations.
GRAD_CASES = [
    ((2, 4, 7, 6), (6, 4, 3, 3), dict()),
    ((2, 4, 7, 6), (6, 4, 3, 3), dict(stride=2)),
    ((2, 4, 7, 6), (6, 4, 3, 2), dict(stride=(2, 3), padding=(1, 2))),
    ((2, 4, 8, 7), (6, 4, 3, 3), dict(stride=3, padding=1)),  # rows lost to the stride
    ((2, 4, 9, 9), (6, 2, 3, 3), dict(groups=2, dilation=2)),
    ((2, 4, 9, 9), (4, 1, 3, 3), dict(groups=4, padding=2, dilation=(2, 1))),
    ((2, 4, 7, 6), (6, 4, 2, 2), dict(padding="same")),  # even kernel: asymmetric
    ((2, 4, 7, 6), (6, 4, 4, 3), dict(padding="same", dilation=(1, 2))),
    ((2, 4, 7, 6), (6, 4, 3, 3), dict(padding="valid", stride=2)),
    ((2, 4, 5, 5), (6, 4, 1, 1), dict()),  # pointwise fast path
    ((2, 4, 5, 5), (6, 2, 1, 1), dict(groups=2)),  # pointwise, grouped
    ((2, 4, 5, 5), (6, 4, 1, 1), dict(stride=2)),  # 1x1 strided: im2col is a row gather
    ((2, 4, 6, 5), (6, 2, 1, 1), dict(stride=(2, 3), groups=2)),
    ((2, 3, 6, 5), (5, 3, 3, 3), dict(padding=1)),  # the 3-channel stem, K = 27
    ((4, 7, 6), (6, 4, 3, 3), dict(padding=1)),  # unbatched
    ((2, 3, 4, 4), (5, 3, 4, 4), dict()),  # kernel = input: 1x1 output
    ((2, 3, 3, 3), (5, 3, 5, 5), dict(padding=1)),  # kernel bigger than input, fits padded
]


@pytest.mark.parametrize("shapes", GRAD_CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(shapes, bias):
    x_shape, w_shape, kw = shapes
    x = torch.randn(x_shape, dtype=f64, requires_grad=True)
    w = torch.randn(w_shape, dtype=f64, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=f64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(lambda x, w, b: mF.conv2d(x, w, b, **kw), (x, w, b))


def _grads(fn, x, w, b, grad):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    y.backward(grad)
    return y, x.grad, w.grad, (b.grad if b is not None else None)


def builtin_conv2d(x, w, b=None, **kw):
    """F.conv2d, the reference. The channels-last input of a strided 1x1 conv with fewer than 16 input
    channels a group goes in as an NCHW copy (the same values; its grad flows back to x): there oneDNN's
    NHWC 1x1 backward-weights kernel (jit_1x1, picked by torch 2.13 on AVX-512 CPUs) writes past its
    workspace (uxlfoundation/oneDNN#6035). On a Sapphire Rapids Xeon that corrupted the heap, and a later
    test crashed in the built-in's own conv."""
    if (w.shape[-2:] == (1, 1) and max(pair(kw.get("stride", 1), "stride")) > 1 and w.shape[1] < 16 and x.dim() == 4
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    return F.conv2d(x, w, b, **kw)


def assert_parity(x, w, b, kw):
    """Output and every grad against F.conv2d in float32.

    Both sides sum K = C/groups*kH*kW (<= 72 here) products of O(1) values in float32,
    in different orders: the difference is a few ulps of the partial sums, ~1e-6 * sqrt(K)
    relative. atol/rtol of 1e-4 leaves a wide margin while catching any indexing slip.
    """
    grad = torch.randn_like(mF.conv2d(x, w, b, **kw))  # in our output's layout, which test_layouts checks
    ours = _grads(lambda x, w, b: mF.conv2d(x, w, b, **kw), x, w, b, grad)
    ref = _grads(lambda x, w, b: builtin_conv2d(x, w, b, **kw), x, w, b, grad)
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        if r is None:
            assert a is None
            continue
        assert a.shape == r.shape, name
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    return ours


PARITY_GRID = list(itertools.product(
    [1, 2, 3],  # stride
    [0, 1, 2],  # padding
    [1, 2],  # dilation
    [1, 2],  # groups
    [1, 3],  # kernel
))


@pytest.mark.parametrize("stride,padding,dilation,groups,k", PARITY_GRID)
def test_parity_float32(stride, padding, dilation, groups, k):
    x = torch.randn(3, 4, 11, 10)
    w = torch.randn(6, 4 // groups, k, k)
    b = torch.randn(6)
    assert_parity(x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


@pytest.mark.parametrize("k,stride", [(3, 1), (1, 1), (1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_parity_channels_and_pixels_past_a_vector(k, stride, channels_last):
    """Channel and pixel counts of whole 8 x 8 blocks and remainders (C = 12, Cout = 20, 9 x 9 pixels), so
    that the NCHW <-> NHWC transposes take their vector blocks and their edges."""
    x = torch.randn(2, 12, 9, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert_parity(x, torch.randn(20, 12, k, k) / k, torch.randn(20), dict(stride=stride, padding=k // 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c,hw", [(12, 9), (40, 9), (64, 6)])
def test_parity_identity_conv_is_exact_through_the_layout_copies(dtype, c, hw):
    """A 1x1 conv with the identity weight returns its NCHW input, and its grad_input the output gradient,
    bit for bit: each value passes the NCHW -> NHWC -> NCHW copies of the tiles (blocks of 8, 16 and 32 and
    their edges, at every capability) and one exact GEMM product."""
    x = torch.randn(2, c, hw, hw + 1).to(dtype).requires_grad_()
    w = torch.eye(c, dtype=dtype).view(c, c, 1, 1)
    out = mF.conv2d(x, w)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.equal(out, x) and torch.equal(x.grad, grad)


@pytest.mark.parametrize("stride", [2, 3, (2, 3)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_parity_strided_pointwise(stride, groups, channels_last):
    """1x1 unpadded convs whose input rows are evenly spaced (H = 12 divisible by the stride): the column
    matrix and dX are strided views of the NHWC tiles, with no im2col (W = 10 need not divide)."""
    x = torch.randn(3, 4, 12, 10)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // groups, 1, 1)
    assert_parity(x, w, torch.randn(6), dict(stride=stride, groups=groups))


LAYOUTS = ["channels_last", "noncontiguous", "weight_channels_last", "both_channels_last", "expanded_bias"]


@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout, k):
    x, w, b = torch.randn(2, 6, 9, 8), torch.randn(8, 6, k, k), torch.randn(8)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "both_channels_last":
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = torch.randn(2, 12, 9, 16)[:, ::2, :, ::2]
    elif layout == "weight_channels_last":
        w = w.to(memory_format=torch.channels_last)
    else:
        b = torch.randn(1).expand(8)
    y, gx, gw, _ = assert_parity(x, w, b, dict(stride=2, padding=1))
    # Outputs and grads keep torch's memory-format conventions (the leaves' .grad their own layouts, as
    # AccumulateGrad makes them; tests/test_layouts.py compares the ops' own strides with the built-in's)
    ref = F.conv2d(x, w, b, stride=2, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)
    assert gx.stride() == x.contiguous(memory_format=manual_ops._utils.memory_format_of(x)).stride()
    assert gw.stride() == w.contiguous(memory_format=manual_ops._utils.memory_format_of(w)).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_empty_batch(dtype):
    w = torch.randn(5, 3, 3, 3, dtype=dtype, requires_grad=True)
    x = torch.randn(0, 3, 6, 6, dtype=dtype, requires_grad=True)
    y = mF.conv2d(x, w, padding=1)
    assert y.shape == (0, 5, 6, 6) and y.dtype == dtype
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_large_batch_is_tiled():
    """A tile's scratch for one sample is (64*9*32*32 + 2*64*32*32 + 16*32*32)*4 bytes = 2.9 MB: with the
    forward's 8 MB and the backward's 4 MB budgets, 9 samples span 3 and 9 tiles.

    grad_weight sums 9*32*32 = 9216 products, so float32 rounding alone is ~1e-4 absolute; we
    judge both float32 results against a float64 reference and allow ours at most 4x torch's error.
    """
    x, w, b = torch.randn(9, 64, 32, 32), torch.randn(16, 64, 3, 3), torch.randn(16)
    grad = torch.randn(9, 16, 32, 32)
    ours = _grads(lambda x, w, b: mF.conv2d(x, w, b, padding=1), x, w, b, grad)
    ref32 = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, grad)
    ref64 = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x.double(), w.double(), b.double(), grad.double())
    for a, r32, r64 in zip(ours, ref32, ref64):
        our_err = (a.double() - r64).abs().max()
        torch_err = (r32.double() - r64).abs().max()
        assert our_err <= 4 * torch_err + 1e-6


@pytest.mark.parametrize("stride,padding,dilation,hw", [(1, 0, 1, 7), (2, 1, 1, 8), (3, 1, 2, 12), (2, 2, 2, 9)])
def test_grad_input_is_full_correlation_of_rotated_kernel(stride, padding, dilation, hw):
    """docs/derivations.md: dX = crop(corr(pad(zero_insert(dY)), rot180(W)^T)), rows lost to the stride = 0."""
    x = torch.randn(2, 3, hw, hw + 1, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=f64)
    y = mF.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)

    kh, kw = w.shape[2:]
    u = torch.zeros(2, 4, (y.shape[2] - 1) * stride + 1, (y.shape[3] - 1) * stride + 1, dtype=f64)
    u[:, :, ::stride, ::stride] = dy  # zero insertion
    lost_h = (hw + 2 * padding - dilation * (kh - 1) - 1) % stride
    lost_w = (hw + 1 + 2 * padding - dilation * (kw - 1) - 1) % stride
    eh, ew = dilation * (kh - 1), dilation * (kw - 1)
    u = F.pad(u, (ew, ew + lost_w, eh, eh + lost_h))  # "full" padding, plus the lost rows/columns
    w_rot = w.flip(2, 3).transpose(0, 1)  # 180-degree rotation, in/out transpose
    dxp = mF.conv2d(u, w_rot, dilation=dilation)
    expected = dxp[:, :, padding:padding + hw, padding:padding + hw + 1]
    torch.testing.assert_close(dx, expected)


def test_only_requested_grads_are_computed():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    gy = torch.randn(2, 4, 3, 3)
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    gx, gw, gb = torch.ops.manual_ops.conv2d_backward(gy, x, w, *args, [False, True, False])
    assert gx is None and gb is None and gw.shape == w.shape
    gx, gw, gb = torch.ops.manual_ops.conv2d_backward(gy, x, w, *args, [True, False, True])
    assert gw is None and gx.shape == x.shape and torch.allclose(gb, gy.sum((0, 2, 3)))
    # Through autograd: a frozen weight gets no grad.
    w.requires_grad_(False)
    xr = x.clone().requires_grad_()
    mF.conv2d(xr, w).sum().backward()
    assert w.grad is None and xr.grad is not None


def _samples():
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    return [
        (x, w, b, [1, 1], [0, 0, 0, 0], [1, 1], 2),
        (x, w, None, [2, 1], [1, 0, 2, 1], [1, 2], 2),
        (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, b, [1, 2], [1, 1, 1, 1], [1, 1], 2),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(sample):
    args = _samples()[sample]
    torch.library.opcheck(torch.ops.manual_ops.conv2d_forward.default, args)
    y = torch.ops.manual_ops.conv2d_forward(*args)
    x, w, _, *conv_args = args
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(torch.ops.manual_ops.conv2d_backward.default,
                              (torch.randn_like(y), x.detach(), w.detach(), *conv_args, mask))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = mnn.Conv2d(3, 8, 3, padding=1)
        self.b = mnn.Conv2d(8, 4, 2, stride=2, groups=4, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    net = _Net()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    eager = net(x)
    eager_grads = torch.autograd.grad(eager.sum(), [x, *net.parameters()])
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    compiled_grads = torch.autograd.grad(compiled.sum(), [x, *net.parameters()])
    torch.testing.assert_close(compiled, eager)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


@given(
    n=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]), cin_g=st.integers(1, 3), cout_g=st.integers(1, 3),
    h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    dh=st.integers(1, 3), dw=st.integers(1, 3), bias=st.booleans(), channels_last=st.booleans(),
)
def test_property_matches_torch(n, groups, cin_g, cout_g, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias,
                                channels_last):
    x = torch.randn(n, groups * cin_g, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt = torch.randn(groups * cout_g, cin_g, kh, kw)
    b = torch.randn(groups * cout_g) if bias else None
    kwargs = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    try:
        F.conv2d(x, wt, b, **kwargs)
    except RuntimeError:
        with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
            mF.conv2d(x, wt, b, **kwargs)
        return
    assert_parity(x, wt, b, kwargs)


x4, w4 = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3)
BAD_INPUTS = [
    (lambda: mF.conv2d(torch.randn(5, 5), w4), r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, "
                                              r"but got input of size: \[5, 5\]"),
    (lambda: mF.conv2d(torch.randn(1, 2, 4, 5, 5), w4), r"input of size: \[1, 2, 4, 5, 5\]"),
    (lambda: mF.conv2d(x4, torch.randn(6, 4, 3)), r"expected a 4-D weight .* weight of size \[6, 4, 3\]"),
    (lambda: mF.conv2d(torch.randn(2, 3, 5, 5), w4),
     r"weight of size \[6, 4, 3, 3\], expected input\[2, 3, 5, 5\] to have 4 channels, but got 3 channels"),
    (lambda: mF.conv2d(x4, torch.randn(6, 2, 3, 3), groups=3),
     r"given groups=3, weight of size \[6, 2, 3, 3\], expected input\[2, 4, 5, 5\] to have 6 channels"),
    (lambda: mF.conv2d(x4, torch.randn(5, 2, 3, 3), groups=2),
     r"expected weight to be divisible by 2 at dimension 0, but got weight of size \[5, 2, 3, 3\]"),
    (lambda: mF.conv2d(x4, w4, groups=0), r"non-positive groups is not supported"),
    (lambda: mF.conv2d(x4, torch.randn(6, 4, 7, 7)),
     r"padded input size per channel: \(5 x 5\)\. Kernel size \(dilated\): \(7 x 7\)"),
    (lambda: mF.conv2d(x4, w4, padding=1, dilation=4), r"padded input size per channel: \(7 x 7\)\. "
                                                      r"Kernel size \(dilated\): \(9 x 9\)"),
    (lambda: mF.conv2d(x4, w4, stride=0), r"non-positive stride is not supported, got stride=\[0, 0\]"),
    (lambda: mF.conv2d(x4, w4, stride=(1, -1)), r"non-positive stride is not supported, got stride=\[1, -1\]"),
    (lambda: mF.conv2d(x4, w4, dilation=0), r"non-positive dilation is not supported"),
    (lambda: mF.conv2d(x4, w4, padding=-1), r"negative padding is not supported, got padding=\[-1, -1, -1, -1\]"),
    (lambda: mF.conv2d(x4, w4, padding="same", stride=2), r"padding='same' is not supported for strided"),
    (lambda: mF.conv2d(x4, w4, padding="full"), r"Invalid padding string: 'full'"),
    (lambda: mF.conv2d(x4.double(), w4), r"expected input and weight to have the same dtype, but got input of "
                                        r"dtype Double and weight of dtype Float"),
    (lambda: mF.conv2d(x4, w4, torch.randn(6).double()), r"input and bias to have the same dtype"),
    (lambda: mF.conv2d(x4, w4, torch.randn(5)), r"expected bias to be 1-dimensional with 6 elements, but got bias "
                                               r"of size \[5\]"),
    (lambda: mF.conv2d(x4.long(), w4.long()), r"expected input to be float32, float64, bfloat16 or float16, but got Long"),
    (lambda: mF.conv2d(x4, w4, stride=(1, 1, 1)), r"expected stride to be a single integer value or a list of 2 "
                                                 r"values .* but got stride=\[1, 1, 1\]"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS)
def test_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_grad_output_size():
    with pytest.raises(RuntimeError, match=r"expected grad_output of size \[2, 6, 3, 3\], but got grad_output of "
                                           r"size \[2, 6, 4, 4\]"):
        torch.ops.manual_ops.conv2d_backward(torch.randn(2, 6, 4, 4), x4, w4, [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                             [True, True, True])


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, padding=1), dict(padding=(1, 2), dilation=2, groups=2),
                                    dict(padding="same", bias=False)], ids=str)
def test_module_matches_nn(padding_mode, kwargs):
    torch.manual_seed(1)
    ref = torch.nn.Conv2d(4, 6, 3, padding_mode=padding_mode, **kwargs)
    torch.manual_seed(1)
    ours = mnn.Conv2d(4, 6, 3, padding_mode=padding_mode, **kwargs)
    assert repr(ours) == repr(ref)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)  # same init under the same seed
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    torch.testing.assert_close(ours(x), ref(xr), atol=1e-4, rtol=1e-4)
    ours(x).sum().backward()
    ref(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_state_dict_loads_both_ways_strictly():
    ref, ours = torch.nn.Conv2d(3, 8, 3, bias=True), mnn.Conv2d(3, 8, 3, bias=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(ours.weight, ref.weight)
    ours.weight.data.mul_(2)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(ours.weight, ref.weight)
    assert isinstance(ours, torch.nn.Conv2d)
