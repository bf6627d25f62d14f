"""dropout and dropout2d: the built-in's masks, outputs and gradients bit for bit after the same seed, over p,
dtypes, layouts and in-place use; gradcheck, gradgradcheck and forward AD; opcheck; torch.compile;
torch.func; errors, empty tensors, modules and convert."""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import grad, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

ops = torch.ops.manual_ops
PS = [0.0, 0.1, 0.5, 0.9, 1.0]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]
FUNCTIONS = {"dropout": (mF.dropout, F.dropout), "dropout2d": (mF.dropout2d, F.dropout2d)}


def _make(layout, dtype=torch.float32, shape=(4, 6, 5, 7)):
    base = torch.randn(*shape).to(dtype)
    if layout == "channels_last":
        return base.to(memory_format=torch.channels_last)
    if layout == "transposed":
        return base.transpose(2, 3)
    if layout == "strided":
        return torch.randn(*shape[:-1], 2 * shape[-1]).to(dtype)[..., ::2]
    return base


def _seeded(fn, seed=0):
    def call(*args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)
    return call


def _run(fn, x, p, inplace, seed):
    leaf = x.clone().requires_grad_()
    y = _seeded(fn, seed)(leaf * 1 if inplace else leaf, p, inplace=inplace)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(y.dtype)
    (dx,) = torch.autograd.grad(y, leaf, g)
    return y.detach(), dx


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_same_seed_same_output_and_gradient_bit_for_bit(name, p, dtype, layout, inplace):
    ours, builtin = FUNCTIONS[name]
    x = _make(layout, dtype)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])  # kept, or zeroed with their signs
    for a, b in zip(_run(ours, x, p, inplace, 7), _run(builtin, x, p, inplace, 7)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.signbit() & ~a.isnan(), b.signbit() & ~b.isnan())  # -0.0 kept (a NaN's sign is not)
        assert a.stride() == b.stride()


def test_the_generator_advances_as_the_builtins():
    x = torch.randn(3, 5, 4, 4)
    torch.manual_seed(1)
    mF.dropout(x, 0.3), mF.dropout2d(x, 0.3), mF.dropout(x, 1.0)
    ours = torch.rand(4)
    torch.manual_seed(1)
    F.dropout(x, 0.3), F.dropout2d(x, 0.3), F.dropout(x, 1.0)
    assert torch.equal(ours, torch.rand(4))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_not_training_or_p_zero_returns_the_input_itself(name):
    ours, builtin = FUNCTIONS[name]
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for kwargs in (dict(training=False), dict(p=0.0)):
        assert (ours(x, **kwargs) is x) == (builtin(x, **kwargs) is x) is True


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(FUNCTIONS)), st.lists(st.integers(1, 6), min_size=2, max_size=5),
       st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_property_any_shape_and_p(name, shape, p, seed):
    ours, builtin = FUNCTIONS[name]
    x = torch.randn(shape, dtype=torch.float64)
    with pytest.warns(UserWarning) if name == "dropout2d" and len(shape) != 4 else contextlib.nullcontext():
        a = _run(ours, x, p, False, seed)
    with pytest.warns(UserWarning) if name == "dropout2d" and len(shape) != 4 else contextlib.nullcontext():
        b = _run(builtin, x, p, False, seed)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck_gradgradcheck_and_forward_ad(name, inplace):
    ours = _seeded(FUNCTIONS[name][0], seed=5)  # the same mask on every call
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x: ours(x * 1.0, 0.4, inplace=inplace)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,), check_fwd_over_rev=True)


def test_inplace_returns_the_input_and_refuses_a_leaf_before_mutating():
    x = torch.randn(4, 5, requires_grad=True)
    h = x * 2
    version = h._version
    assert mF.dropout(h, 0.5, inplace=True) is h and h._version > version
    with pytest.raises(RuntimeError, match="^a leaf Variable that requires grad is being used in an in-place"):
        mF.dropout(x, 0.5, inplace=True)
    view = torch.randn(4, 10)[:, ::2]
    expected = _seeded(F.dropout)(view.clone(), 0.5)
    assert _seeded(mF.dropout)(view, 0.5, inplace=True) is view and torch.equal(view, expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_opcheck(layout):
    x = _make(layout).requires_grad_()
    for mask in (torch.empty_like(x).bernoulli_(0.5), torch.ones(4, 6, 1, 1).bernoulli_(0.5), torch.zeros(())):
        torch.library.opcheck(ops.dropout_forward, (x, mask, 0.5))
        torch.library.opcheck(ops.dropout_backward, (torch.randn(x.shape), mask, 0.5))
        torch.library.opcheck(ops.dropout_, (x.detach() * 1, mask, 0.5))


def test_torch_compile_fullgraph():
    x = torch.randn(4, 6, requires_grad=True)
    mask = torch.empty(4, 6).bernoulli_(0.7)

    def f(x):  # the op with a given mask: random draws are compiled as torch's own
        return ops.dropout_forward(x * 3.0, mask, 0.3).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(torch.autograd.grad(compiled(x), x)[0], 3.0 * mask / 0.7)


def test_vmap_and_per_sample_gradients():
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    # randomness="same": one mask for every sample, so each slice equals its own unbatched call
    torch.manual_seed(2)
    batched = vmap(lambda t: mF.dropout(t, 0.5), randomness="same")(x)
    zeros = batched == 0
    assert torch.equal(zeros, zeros[:1].expand_as(zeros))
    # randomness="different": the per-sample gradient is each sample's mask times 1 / (1 - p)
    torch.manual_seed(3)
    g = vmap(grad(lambda t: mF.dropout(t, 0.25).sum()), randomness="different")(x)
    assert set(g.unique().tolist()) <= {0.0, 1 / 0.75} and not torch.equal(g[0], g[1])


def test_errors_name_the_argument_and_the_sizes():
    x = torch.randn(2, 3, 4, 4)
    for fn in (mF.dropout, mF.dropout2d):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
            fn(x, 1.5)
    with pytest.raises(RuntimeError, match=r"expected a mask that broadcasts to input's size \[2, 3, 4, 4\], but got "
                                           r"mask of size \[3, 1\]"):
        ops.dropout_forward(x, torch.ones(3, 1), 0.5)
    with pytest.raises(RuntimeError, match="expected grad_output and mask to have the same dtype"):
        ops.dropout_backward(x, torch.ones(2, 3, 4, 4, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="dropout_forward: dropout probability has to be between 0 and 1"):
        ops.dropout_forward(x, torch.ones_like(x), -0.1)
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions in the input"), \
            pytest.warns(UserWarning):
        mF.dropout2d(torch.randn(5), 0.5)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4, 4)])
def test_empty_tensors(shape):
    x = torch.randn(shape, requires_grad=True)
    for ours, builtin in ((mF.dropout, F.dropout), (mF.dropout2d, F.dropout2d)):
        if len(shape) < 2 and ours is mF.dropout2d:
            continue
        with pytest.warns(UserWarning) if ours is mF.dropout2d and len(shape) != 4 else contextlib.nullcontext():
            y = ours(x, 0.5)
        assert y.shape == x.shape


def test_modules_match_the_builtins_and_convert():
    for builtin, ours in ((nn.Dropout(0.3, inplace=True), mnn.Dropout(0.3, inplace=True)),
                          (nn.Dropout2d(0.2), mnn.Dropout2d(0.2))):
        assert repr(ours) == repr(builtin) and ours.state_dict().keys() == builtin.state_dict().keys()
        x = torch.randn(3, 4, 5, 5)
        torch.manual_seed(4)
        a = ours(x.clone())
        torch.manual_seed(4)
        assert torch.equal(a, builtin(x.clone()))
        ours.eval(), builtin.eval()
        assert ours(x) is x and builtin(x) is x
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        mnn.Dropout(2.0)
    model = manual_ops.convert(nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.Dropout2d()))
    assert [type(m) for m in model] == [mnn.Linear, mnn.Dropout, mnn.Dropout2d]
    assert [type(m) for m in manual_ops.revert(model)] == [nn.Linear, nn.Dropout, nn.Dropout2d]


def test_a_vgg_like_classifier_trains_with_only_our_backward():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(16, 3))
    ours = manual_ops.convert(copy.deepcopy(head))
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for model in (head, ours):
        torch.manual_seed(9)
        loss = F.cross_entropy(model(x), y) if model is head else mF.cross_entropy(model(x), y)
        loss.backward()
        losses.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert not manual_ops.builtin_backward_nodes(mF.cross_entropy(ours(x), y))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    for a, b in zip(losses[0][1], losses[1][1]):
        torch.testing.assert_close(a, b)
