"""manual_ops linear: gradcheck, parity with torch, opcheck, torch.compile, properties, errors."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_ops
from manual_ops import functional as mF

# float32 parity: each output element is one dot product of length in_features (<= 64 here);
# ours and torch both use a BLAS GEMM but may block the sum differently, so results differ by a
# few ulps of the partial sums: 1e-5 absolute on O(1)-O(10) values, 1e-5 relative.
ATOL, RTOL = 1e-5, 1e-5

LEADING = [(), (5,), (2, 3), (2, 1, 3)]


def _args(leading, in_f, out_f, bias, dtype=torch.float64, requires_grad=True):
    x = torch.randn(*leading, in_f, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(out_f, in_f, dtype=dtype, requires_grad=requires_grad)
    b = torch.randn(out_f, dtype=dtype, requires_grad=requires_grad) if bias else None
    return x, w, b


@pytest.mark.parametrize("leading,bias,in_f,out_f", list(itertools.product(LEADING, [True, False], [1, 4], [1, 3])))
def test_gradcheck(leading, bias, in_f, out_f):
    torch.manual_seed(0)
    x, w, b = _args(leading, in_f, out_f, bias)
    assert torch.autograd.gradcheck(mF.linear, (x, w, b))


@pytest.mark.parametrize("which", [(True, False, False), (False, True, True), (False, False, True)])
def test_gradcheck_partial_grads(which):
    x, w, b = _args((4,), 3, 2, True)
    for t, flag in zip((x, w, b), which):
        t.requires_grad_(flag)
    assert torch.autograd.gradcheck(mF.linear, (x, w, b))
    # needs_input_grad is respected: no gradient is produced for what does not need one.
    mF.linear(x, w, b).sum().backward()
    assert [t.grad is not None for t in (x, w, b)] == list(which)


def _parity(x, w, b):
    ours = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y_ours, y_ref = mF.linear(*ours), F.linear(*ref)
    g = torch.randn_like(y_ref)
    y_ours.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(y_ours, y_ref, atol=ATOL, rtol=RTOL)
    for a, r in zip(ours, ref):
        if a is not None:
            torch.testing.assert_close(a.grad, r.grad, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("leading,bias", list(itertools.product([(32,), (4, 7), (2, 3, 5)], [True, False])))
def test_parity_float32(leading, bias):
    torch.manual_seed(1)
    _parity(*_args(leading, 64, 10, bias, torch.float32, False))


def test_parity_non_contiguous_inputs():
    torch.manual_seed(2)
    x = torch.randn(8, 12)[:, ::2]  # (8, 6) with strided columns
    w = torch.randn(6, 12)[:, ::2].t().t()  # weight (6, 6) with strided columns
    b = torch.randn(12)[::2]  # strided bias
    _parity(x, w, b)
    x4 = torch.randn(2, 10, 3, 5).to(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (2, 3, 5, 10), strided
    _parity(x4, torch.randn(4, 10), None)


def test_empty_batch():
    x, w, b = _args((0,), 4, 3, True)
    y = mF.linear(x, w, b)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert w.grad.abs().sum() == 0 and b.grad.abs().sum() == 0


def test_module_matches_torch_and_state_dict():
    torch.manual_seed(3)
    ref = torch.nn.Linear(7, 5)
    ours = manual_ops.nn.Linear(7, 5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert isinstance(ours, torch.nn.Linear) and repr(ours) == repr(ref)
    x = torch.randn(4, 7)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
    assert manual_ops.nn.Linear(7, 5, bias=False).bias is None


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    x, w, b = _args((3, 2), 4, 5, bias, torch.float32)
    torch.library.opcheck(torch.ops.manual_ops.linear_forward, (x, w, b))
    g = torch.randn(3, 2, 5)
    for mask in ([True, True, bias], [True, False, False], [False, True, bias]):
        torch.library.opcheck(torch.ops.manual_ops.linear_backward, (g, x.detach(), w.detach(), mask))


def test_torch_compile_fullgraph():
    torch.manual_seed(4)
    x, w, b = _args((6,), 8, 3, True, torch.float32)

    def f(x, w, b):
        return mF.relu(mF.linear(x, w, b)).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_loss = f(x, w, b)
    eager_grads = torch.autograd.grad(eager_loss, (x, w, b))
    compiled_loss = compiled(x, w, b)
    compiled_grads = torch.autograd.grad(compiled_loss, (x, w, b))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, e)


@settings(max_examples=30, deadline=None)
@given(leading=st.lists(st.integers(0, 4), max_size=3), in_f=st.integers(1, 16), out_f=st.integers(1, 16),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_property_matches_torch(leading, in_f, out_f, bias, seed):
    torch.manual_seed(seed)
    _parity(*_args(tuple(leading), in_f, out_f, bias, torch.float32, False))


@pytest.mark.parametrize("call,error,match", [
    (lambda: mF.linear(torch.randn(3, 4), torch.randn(5, 3)), RuntimeError,
     r"linear: expected the last dimension of input to be in_features=3 \(weight of size \[5, 3\]\), "
     r"but got input of size \[3, 4\]"),
    (lambda: mF.linear(torch.tensor(1.0), torch.randn(5, 1)), RuntimeError,
     r"linear: expected input to have at least 1 dimension, but got input of size \[\]"),
    (lambda: mF.linear(torch.randn(3, 4), torch.randn(2, 5, 4)), RuntimeError,
     r"linear: expected a 2-D weight \(out_features, in_features\), but got weight of size \[2, 5, 4\]"),
    (lambda: mF.linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(4)), RuntimeError,
     r"linear: expected bias to be 1-D with 5 elements \(weight of size \[5, 4\]\), but got bias of size \[4\]"),
    (lambda: mF.linear(torch.randn(3, 4), torch.randn(5, 4).double()), RuntimeError,
     r"linear: expected input and weight to have the same dtype, but got input of dtype Float and weight of dtype Double"),
    (lambda: mF.linear(torch.ones(3, 4, dtype=torch.long), torch.ones(5, 4, dtype=torch.long)), RuntimeError,
     r"linear: expected input to be float32, float64, bfloat16 or float16, but got Long"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_backward_op_checks_grad_output_size():
    with pytest.raises(RuntimeError, match=r"linear_backward: expected grad_output of size \[3, 5\], but got "
                                           r"grad_output of size \[3, 4\]"):
        torch.ops.manual_ops.linear_backward(torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4),
                                             [True, True, True])
