"""manual_ops relu (and in-place relu): gradcheck, parity with torch, opcheck, torch.compile, properties, errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_ops
from manual_ops import functional as mF

LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


def _make(layout, dtype=torch.float64, shape=(2, 3, 4, 5)):
    base = torch.randn(*shape, dtype=dtype)
    if layout == "channels_last":
        return base.to(memory_format=torch.channels_last)
    if layout == "transposed":
        return base.transpose(1, 3)
    if layout == "strided":
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    return base


def _away_from_zero(x):
    # gradcheck's finite differences are wrong within eps of the kink at 0.
    return torch.where(x.abs() < 1e-2, x.sign() * 0.1 + 0.05, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inplace", [False, True])
def test_gradcheck(layout, inplace):
    torch.manual_seed(0)
    x = _away_from_zero(_make(layout)).requires_grad_()
    # In-place ReLU needs a non-leaf input (as after a conv or batch norm).
    assert torch.autograd.gradcheck(lambda x: mF.relu(x * 1 if inplace else x, inplace=inplace), (x,))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inplace", [False, True])
def test_parity_float32(layout, inplace):
    torch.manual_seed(1)
    x = _make(layout, torch.float32)
    x[0, 0, 0, 0] = 0.0  # the kink: both give output 0 and gradient 0
    ours_leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours = mF.relu(ours_leaf * 1, inplace=inplace)
    y_ref = F.relu(ref_leaf * 1, inplace=inplace)
    g = torch.randn_like(y_ref)
    y_ours.backward(g)
    y_ref.backward(g)
    # ReLU and its gradient are selections, not arithmetic: exact equality, strides included.
    assert torch.equal(y_ours, y_ref) and y_ours.stride() == y_ref.stride()
    assert torch.equal(ours_leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_and_signed_zero_like_torch(dtype):
    # 35 values: full vectors of every capability's copy (up to 16 float32 or 32 bfloat16/float16 lanes)
    # and a tail (each lower capability reruns this: tests/test_cpu_capability.py); NaN where torch has NaN (ours passes the input's NaN through; torch's
    # bfloat16 relu returns another NaN's bits), every other output bit for bit (the sign of -0.0 included)
    special = [float("nan"), -0.0, 0.0, -1.0, 2.0, float("-inf"), float("inf")]
    x = torch.tensor(special * 5, dtype=dtype, requires_grad=True)
    ours, ref = mF.relu(x), torch.relu(x)
    assert torch.equal(ours.isnan(), ref.isnan())
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(ours.detach().nan_to_num().view(bits), ref.detach().nan_to_num().view(bits))
    grad = torch.arange(1.0, 36.0, dtype=dtype)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    assert torch.equal(g_ours, g_ref)
    inplace = x.detach().clone()
    mF.relu(inplace, inplace=True)
    assert torch.equal(inplace.nan_to_num(), ref.detach().nan_to_num()) and torch.equal(inplace.isnan(), ref.isnan())


def test_inplace_returns_input_and_bumps_version():
    x = torch.randn(10, requires_grad=True)
    h = x * 2
    version = h._version
    y = mF.relu(h, inplace=True)
    assert y is h and h._version > version
    assert (h >= 0).all()
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2.0 * (x > 0))


def test_inplace_without_autograd_and_non_dense():
    x = torch.randn(4, 12)
    view = x[:, ::3]
    expected = torch.relu(view)
    assert mF.relu(view, inplace=True) is view
    assert torch.equal(view, expected) and torch.equal(x[:, ::3], expected)


def test_inplace_on_leaf_that_requires_grad_raises_before_mutating():
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    for target, what in ((x, "a leaf Variable"), (x[:1], "a view of a leaf Variable")):
        with pytest.raises(RuntimeError, match=f"^{what} that requires grad is being used in an in-place operation"):
            mF.relu(target, inplace=True)
        with pytest.raises(RuntimeError, match=f"^{what} that requires grad is being used in an in-place operation"):
            torch.relu_(target)  # torch's own message, which ours repeats
    assert torch.equal(x.detach(), torch.tensor([-1.0, 2.0]))


def test_inplace_then_modified_output_is_detected():
    # The saved output is checked by autograd's version counter, as for torch's relu_.
    x = torch.randn(5, requires_grad=True)
    y = mF.relu(x * 1, inplace=True)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_module_like_torchvision_basic_block():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    outs = []
    for relu in (torch.nn.ReLU(inplace=True), manual_ops.nn.ReLU(inplace=True)):
        conv.zero_grad()
        out = conv(x)
        out += x.mean(1, keepdim=True)  # residual add, then in-place ReLU, as in BasicBlock
        out = relu(out)
        out.square().sum().backward()
        outs.append((out.detach(), conv.weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=0, rtol=0)
    assert repr(manual_ops.nn.ReLU(inplace=True)) == repr(torch.nn.ReLU(inplace=True))


def test_opcheck():
    for layout in ("contiguous", "channels_last", "transposed"):
        x = _make(layout, torch.float32).requires_grad_()
        torch.library.opcheck(torch.ops.manual_ops.relu_forward, (x,))
        torch.library.opcheck(torch.ops.manual_ops.relu_backward, (torch.randn(x.shape), torch.relu(x.detach())))
        # relu_ mutates its argument, so it gets a non-leaf that requires grad.
        torch.library.opcheck(torch.ops.manual_ops.relu_, (x.detach() * 1,))


def test_torch_compile_fullgraph():
    torch.manual_seed(3)
    x = torch.randn(4, 6, requires_grad=True)

    def f(x):
        h = mF.relu(x * 3.0, inplace=True)
        return mF.relu(h - 1.0).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (g_eager,) = torch.autograd.grad(f(x), x)
    loss = compiled(x)
    (g_compiled,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(loss, f(x))
    torch.testing.assert_close(g_compiled, g_eager)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 5), max_size=4), inplace=st.booleans(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_matches_torch(shape, inplace, seed, dtype):
    torch.manual_seed(seed)
    x = torch.randn(shape, dtype=dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = mF.relu(a * 1, inplace=inplace), torch.relu(b * 1)
    assert torch.equal(y_ours, y_ref)
    g = torch.randn_like(y_ref)
    y_ours.backward(g)
    y_ref.backward(g)
    assert torch.equal(a.grad, b.grad)


def test_errors():
    with pytest.raises(RuntimeError, match="relu: expected input to be float32, float64, bfloat16 or float16, but got Long"):
        mF.relu(torch.tensor([1, -2]))
    with pytest.raises(RuntimeError, match="relu_: expected self to be float32, float64, bfloat16 or float16, but got Int"):
        mF.relu(torch.tensor([1, -2], dtype=torch.int32), inplace=True)
    with pytest.raises(RuntimeError, match=r"relu_backward: expected grad_output of size \[3\], but got grad_output "
                                           r"of size \[4\]"):
        torch.ops.manual_ops.relu_backward(torch.randn(4), torch.randn(3))
    with pytest.raises(RuntimeError, match="relu_backward: expected result and grad_output to have the same dtype"):
        torch.ops.manual_ops.relu_backward(torch.randn(3).double(), torch.randn(3))
