"""manual_ops cross_entropy: gradcheck over option grids, parity with torch, opcheck, torch.compile, errors."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_ops
from manual_ops import functional as mF

REDUCTIONS = ["none", "mean", "sum"]
SMOOTHING = [0.0, 0.15, 1.0]
SHAPES = [(4, 5), (5,), (2, 3, 2, 3)]  # (N, C), unbatched (C,), (N, C, d1, d2)

# float32 parity: both accumulate in float32, in different orders and with different exps, so results
# differ by float32 rounding of O(C) terms: ~1e-6 relative on losses of O(1); gradients are O(1/N).
ATOL, RTOL = 1e-5, 1e-5


def _index_target(shape, ignore):
    C = shape[0] if len(shape) == 1 else shape[1]
    row = () if len(shape) == 1 else (shape[0], *shape[2:])
    target = torch.randint(C, row)
    if ignore and target.numel() > 1:
        target.view(-1)[::3] = -100
    return target


def _weight(shape, weighted, dtype):
    C = shape[0] if len(shape) == 1 else shape[1]
    return torch.rand(C, dtype=dtype) + 0.5 if weighted else None


@pytest.mark.parametrize("shape,reduction,ls,weighted,ignore",
                         list(itertools.product(SHAPES, REDUCTIONS, SMOOTHING, [False, True], [False, True])))
def test_gradcheck_class_indices(shape, reduction, ls, weighted, ignore):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    t, w = _index_target(shape, ignore), _weight(shape, weighted, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x,))


@pytest.mark.parametrize("shape,reduction,ls,weighted",
                         list(itertools.product(SHAPES, REDUCTIONS, SMOOTHING, [False, True])))
def test_gradcheck_class_probabilities(shape, reduction, ls, weighted):
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    t = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    w = _weight(shape, weighted, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, t: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x, t))


def _parity(x, t, **kwargs):
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ours, ref = mF.cross_entropy(a, t, **kwargs), F.cross_entropy(b, t, **kwargs)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL, equal_nan=True)
    g = torch.randn_like(ref)
    ours.backward(g)
    ref.backward(g)
    torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("shape,reduction,ls,weighted,ignore",
                         list(itertools.product(SHAPES, REDUCTIONS, SMOOTHING, [False, True], [False, True])))
def test_parity_float32_class_indices(shape, reduction, ls, weighted, ignore):
    torch.manual_seed(2)
    x = torch.randn(*shape) * 3
    _parity(x, _index_target(shape, ignore), weight=_weight(shape, weighted, torch.float32), reduction=reduction,
            label_smoothing=ls)


@pytest.mark.parametrize("shape,reduction,ls,weighted",
                         list(itertools.product(SHAPES, REDUCTIONS, SMOOTHING, [False, True])))
def test_parity_float32_class_probabilities(shape, reduction, ls, weighted):
    torch.manual_seed(3)
    x, t = torch.randn(*shape) * 3, torch.softmax(torch.randn(*shape), -1)
    _parity(x, t, weight=_weight(shape, weighted, torch.float32), reduction=reduction, label_smoothing=ls)


def test_parity_layouts_and_custom_ignore_index():
    torch.manual_seed(4)
    x = torch.randn(2, 5, 3, 4).to(memory_format=torch.channels_last)
    _parity(x, torch.randint(5, (2, 3, 4)), reduction="mean", label_smoothing=0.1)
    x2 = torch.randn(10, 16)[::2, ::3]  # (5, 6), non-contiguous
    t2 = torch.tensor([0, 5, 2, 2, 1])
    _parity(x2, t2, ignore_index=2, weight=torch.rand(6) + 0.1)
    _parity(x2, t2.to(torch.uint8), reduction="sum")


def test_extreme_logits_are_stable():
    # log-sum-exp keeps huge logits finite; torch agrees.
    x = torch.tensor([[1000.0, -1000.0, 0.0], [-5e4, 5e4, 1.0]])
    _parity(x, torch.tensor([0, 0]), reduction="none")
    assert torch.isfinite(mF.cross_entropy(x, torch.tensor([1, 0]))).all()


def test_all_ignored_gives_nan_loss_and_zero_grad_like_torch():
    x = torch.randn(3, 5, requires_grad=True)
    loss = mF.cross_entropy(x, torch.full((3,), -100), label_smoothing=0.1)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, torch.full((3,), -100)))
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(3, 5))


def test_negative_label_smoothing_is_no_smoothing_like_torch():
    x, t = torch.randn(4, 5), torch.randint(5, (4,))
    torch.testing.assert_close(mF.cross_entropy(x, t, label_smoothing=-0.1), F.cross_entropy(x, t))


def test_mixed_precision_probability_target_promotes_like_torch():
    x, t = torch.randn(3, 5, requires_grad=True), torch.softmax(torch.randn(3, 5, dtype=torch.float64), 1)
    ours = mF.cross_entropy(x, t)
    assert ours.dtype == F.cross_entropy(x, t).dtype == torch.float64
    ours.backward()
    assert x.grad.dtype == torch.float32


def test_module_matches_torch_and_state_dict():
    w = torch.rand(5) + 0.5
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.05)
    ours = manual_ops.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.05)
    assert isinstance(ours, torch.nn.CrossEntropyLoss) and repr(ours) == repr(ref)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x, t = torch.randn(6, 5), torch.randint(5, (6,))
    torch.testing.assert_close(ours(x, t), ref(x, t), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_opcheck(probabilities, reduction):
    torch.manual_seed(5)
    x = torch.randn(4, 3, 2, requires_grad=True)
    t = torch.rand(4, 3, 2) if probabilities else torch.tensor([[0, 1], [2, -100], [1, 1], [0, 2]])
    w = torch.rand(3) + 0.5
    args = (w, reduction, -100, 0.1)
    torch.library.opcheck(torch.ops.manual_ops.cross_entropy_forward, (x, t, *args))
    loss, lse = torch.ops.manual_ops.cross_entropy_forward(x.detach(), t, *args)
    mask = [True, probabilities]
    torch.library.opcheck(torch.ops.manual_ops.cross_entropy_backward,
                          (torch.randn_like(loss), x.detach(), t, w, lse, reduction, -100, 0.1, mask))


def test_torch_compile_fullgraph():
    torch.manual_seed(6)
    x, w = torch.randn(8, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    t = torch.randint(4, (8,))

    def f(x, w):
        return mF.cross_entropy(mF.linear(x, w), t, label_smoothing=0.1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_loss = f(x, w)
    eager = torch.autograd.grad(eager_loss, (x, w))
    compiled_loss = compiled(x, w)
    got = torch.autograd.grad(compiled_loss, (x, w))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, e in zip(got, eager):
        torch.testing.assert_close(a, e)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 7), spatial=st.lists(st.integers(1, 3), max_size=2),
       reduction=st.sampled_from(REDUCTIONS), ls=st.floats(0, 1), weighted=st.booleans(),
       probabilities=st.booleans(), seed=st.integers(0, 2**16))
def test_property_matches_torch(n, c, spatial, reduction, ls, weighted, probabilities, seed):
    torch.manual_seed(seed)
    shape = (n, c, *spatial)
    x = torch.randn(*shape, dtype=torch.float64) * 4
    t = torch.softmax(torch.randn(*shape, dtype=torch.float64), 1) if probabilities else torch.randint(c, (n, *spatial))
    w = torch.rand(c, dtype=torch.float64) + 0.1 if weighted else None
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = mF.cross_entropy(a, t, w, reduction=reduction, label_smoothing=ls)
    ref = F.cross_entropy(b, t, w, reduction=reduction, label_smoothing=ls)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(ref)
    ours.backward(g)
    ref.backward(g)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-10)


X, T = torch.randn(3, 5), torch.tensor([0, 1, 2])


@pytest.mark.parametrize("call,error,match", [
    (lambda: mF.cross_entropy(X, torch.tensor([0, 1, 5])), IndexError,
     r"cross_entropy: Target 5 is out of bounds for 5 classes"),
    (lambda: mF.cross_entropy(X, torch.tensor([0, -2, 1]), reduction="none"), IndexError,
     r"Target -2 is out of bounds"),
    (lambda: mF.cross_entropy(X, torch.tensor([0, 1])), ValueError,
     r"cross_entropy: expected input batch_size \(3\) to match target batch_size \(2\)"),
    (lambda: mF.cross_entropy(X, T, reduction="avg"), ValueError, r"avg is not a valid value for reduction"),
    (lambda: mF.cross_entropy(X, T, weight=torch.ones(4)), RuntimeError,
     r"cross_entropy: expected weight to be 1-D with one value for each of the 5 classes, but got weight of size \[4\]"),
    (lambda: mF.cross_entropy(X, T, weight=torch.ones(5).double()), RuntimeError,
     r"expected input and weight to have the same dtype"),
    (lambda: mF.cross_entropy(X, T, label_smoothing=1.5), RuntimeError,
     r"label_smoothing must be between 0.0 and 1.0. Got: 1.5"),
    (lambda: mF.cross_entropy(X, T.int()), RuntimeError,
     r"cross_entropy: expected target dtype to be Long for class indices, but got Int"),
    (lambda: mF.cross_entropy(X, torch.zeros(3, 5, dtype=torch.long)), RuntimeError,
     r"cross_entropy: expected a floating point target for class probabilities"),
    (lambda: mF.cross_entropy(X, torch.zeros(3, 4, dtype=torch.long)), RuntimeError,
     r"cross_entropy: expected target of size \[3\] \(class indices\) or \[3, 5\] \(class probabilities\) for "
     r"input of size \[3, 5\], but got target of size \[3, 4\]"),
    (lambda: mF.cross_entropy(torch.randn(2, 5, 3), torch.randint(5, (2, 4))), RuntimeError,
     r"expected target of size \[2, 3\] .* but got target of size \[2, 4\]"),
    (lambda: mF.cross_entropy(X, torch.rand(3, 5), ignore_index=1), RuntimeError,
     r"ignore_index is not supported for class-probability targets"),
    (lambda: mF.cross_entropy(torch.tensor(1.0), torch.tensor(0)), RuntimeError,
     r"cross_entropy: expected input of size \(C\), \(N, C\) or \(N, C, d1, ..., dk\), but got a 0-D input"),
    (lambda: mF.cross_entropy(torch.randn(5), torch.tensor([1, 2])), RuntimeError,
     r"expected a 0-D target for an unbatched input of size \[5\], but got target of size \[2\]"),
    (lambda: mF.cross_entropy(X.long(), T), RuntimeError, r"expected input to be float32, float64, bfloat16 or float16, but got Long"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
