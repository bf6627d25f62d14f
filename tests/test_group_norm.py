"""group_norm against torch's: values, gradients and strides over a grid of shapes, groups and layouts (float64,
float32, bfloat16/float16 against a float64 referee); gradcheck, gradgradcheck, forward AD and forward-over-
reverse; vmap rules; opcheck; torch.compile; autocast; empty tensors; errors; the module, convert and enable()."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_low_precision import LOW, check_accuracy
from torch import nn
from torch.func import hessian, jacfwd, jacrev, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
ops = torch.ops.manual_ops

# (shape, num_groups): 2-D to 5-D inputs, one group, one channel per group, one value per group
CASES = [((2, 6, 3, 4), 3), ((3, 4, 5), 2), ((2, 6), 3), ((2, 8, 2, 2), 1), ((2, 4, 3, 3), 4), ((1, 6, 2, 3, 2), 2),
         ((4, 3, 1, 1), 3), ((2, 32, 7, 7), 8)]
LAYOUTS = ["contiguous", "channels_last", "transposed"]


def _input(shape, layout, dtype=f64, offset=0.0):
    x = torch.randn(shape, dtype=dtype) * 2 + offset
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    elif layout == "transposed" and x.dim() >= 3:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same sizes, strides of the other order
    return x


def _params(C, affine, dtype=f64):
    if affine == "none":
        return None, None
    w = torch.randn(C, dtype=dtype)
    return (w, None) if affine == "weight" else (w, torch.randn(C, dtype=dtype))


def _run(fn, x, G, w, b, grad):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(leaves[0], G, leaves[1], leaves[2], 1e-5)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], grad)
    return y, grads


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,G", CASES, ids=[f"{s}-G{g}" for s, g in CASES])
def test_parity_float64_values_gradients_and_strides(shape, G, affine, layout):
    x = _input(shape, layout, offset=3.0)  # an offset: the statistics must not cancel
    w, b = _params(shape[1], affine)
    grad = torch.randn(shape, dtype=f64)
    y, grads = _run(mF.group_norm, x, G, w, b, grad)
    y_ref, grads_ref = _run(F.group_norm, x, G, w, b, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.stride() == y_ref.stride()
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
        assert g.stride() == r.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,G", CASES[:4])
def test_float32_within_twice_the_builtins_error(shape, G, layout):
    x = _input(shape, layout, torch.float32, offset=10.0)
    w, b = _params(shape[1], "both", torch.float32)
    grad = torch.randn(shape)
    reference = _run(F.group_norm, x.double(), G, w.double(), b.double(), grad.double())
    ours, theirs = _run(mF.group_norm, x, G, w, b, grad), _run(F.group_norm, x, G, w, b, grad)
    for o, t, r in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]], [reference[0], *reference[1]]):
        scale = r.abs().max()
        err_ours, err_theirs = (o.double() - r).abs().max() / scale, (t.double() - r).abs().max() / scale
        assert err_ours <= 2 * err_theirs + 2**-22, (err_ours.item(), err_theirs.item())


@pytest.mark.parametrize("params_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_within_twice_the_builtins_error(dtype, params_dtype):
    pdtype = dtype if params_dtype == "same" else torch.float32
    x = torch.randn(4, 8, 5, 5, dtype=f64) + 1
    w, b = torch.randn(8, dtype=f64), torch.randn(8, dtype=f64)
    for t in (x, w, b):
        t.requires_grad_()
    check_accuracy(lambda x, w, b: mF.group_norm(x, 4, w, b), lambda x, w, b: F.group_norm(x, 4, w, b),
                   [x, w, b], [dtype, pdtype, pdtype])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", ["both", "none"])
def test_gradcheck_gradgradcheck_and_forward_ad(affine, layout):
    x = _input((2, 6, 3, 2), layout).requires_grad_()
    w, b = _params(6, affine)
    params = [t.requires_grad_() for t in (w, b) if t is not None]

    def f(x, *p):
        return mF.group_norm(x, 3, *p)

    assert torch.autograd.gradcheck(f, (x, *params), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, *params), check_fwd_over_rev=True, check_batched_grad=True)


def test_backward_op_gradcheck_with_every_output_mask():
    x = torch.randn(2, 4, 3, dtype=f64, requires_grad=True)
    w = torch.randn(4, dtype=f64, requires_grad=True)
    _, mean, rstd = ops.group_norm_forward(x.detach(), 2, w.detach(), None, 1e-5)
    g = torch.randn(2, 4, 3, dtype=f64, requires_grad=True)
    for mask in ([True, True, True], [True, False, False], [False, True, True], [False, False, True]):
        def f(g, w):
            return tuple(t for t in ops.group_norm_backward(g, x.detach(), 2, mean, rstd, w, mask) if t is not None)
        assert torch.autograd.gradcheck(f, (g, w))


def test_hessian_and_jacobians_like_the_builtin():
    x = torch.randn(2, 6, 3, dtype=f64)
    w, b = torch.randn(6, dtype=f64), torch.randn(6, dtype=f64)

    def loss(fn):
        return lambda x, w: fn(x, 3, w, b).pow(3).sum()

    for transform in (hessian, lambda f, argnums: jacfwd(jacrev(f, argnums), argnums)):
        ours = transform(loss(mF.group_norm), argnums=(0, 1))(x, w)
        theirs = transform(loss(F.group_norm), argnums=(0, 1))(x, w)
        for a, t in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
            torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10)
    ours = jacrev(lambda x: mF.group_norm(x, 3, w, b))(x)
    torch.testing.assert_close(ours, jacrev(lambda x: F.group_norm(x, 3, w, b))(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, 0), (0, 0, 0), (2, 1, None), (1, None, 0)])
def test_vmap_equals_stacked_slices(in_dims):
    B, shape, G = 3, (2, 6, 4), 3
    per = [shape, (6,), (6,)]
    args = []
    for s, d in zip(per, in_dims):
        t = torch.randn(s, dtype=f64)
        args.append(t if d is None else torch.stack([torch.randn(s, dtype=f64) for _ in range(B)], d))

    def f(x, w, b):
        return mF.group_norm(x, G, w, b)

    out = vmap(f, in_dims=in_dims, out_dims=1)(*args)
    slices = [f(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims))) for i in range(B)]
    torch.testing.assert_close(out, torch.stack(slices, 1), rtol=1e-12, atol=1e-12)


def test_per_sample_gradients_of_a_vmapped_grad():
    x = torch.randn(5, 6, 3, 4, dtype=f64)
    w, b = torch.randn(6, dtype=f64), torch.randn(6, dtype=f64)

    def loss(fn):
        return lambda w, b, xi: fn(xi.unsqueeze(0), 2, w, b).pow(2).sum()

    ours = vmap(torch.func.grad(loss(mF.group_norm), argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)
    theirs = vmap(torch.func.grad(loss(F.group_norm), argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    x = _input((2, 6, 3, 2), layout, torch.float32).requires_grad_()
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    torch.library.opcheck(ops.group_norm_forward, (x, 3, w, b, 1e-5))
    torch.library.opcheck(ops.group_norm_forward, (x, 2, None, None, 1e-3))
    _, mean, rstd = ops.group_norm_forward(x.detach(), 3, w.detach(), b.detach(), 1e-5)
    g = torch.randn(x.shape)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.group_norm_backward, (g, x, 3, mean, rstd, w, mask))


def test_torch_compile_fullgraph():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)

    def f(fn):
        return lambda x, w, b: fn(x * 2.0, 3, w, b).sin().sum()

    compiled = torch.compile(f(mF.group_norm), fullgraph=True, backend="aot_eager")
    ours = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    theirs = torch.autograd.grad(f(F.group_norm)(x, w, b), (x, w, b))
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t)


def test_autocast_keeps_the_dtype_as_the_builtin():
    """torch's CPU autocast leaves group_norm alone: a bfloat16 input (from a conv) stays bfloat16, with the
    module's float32 weight and bias, and a float32 one stays float32."""
    w, b = torch.randn(8), torch.randn(8)
    for x in (torch.randn(2, 8, 3, 3, dtype=torch.bfloat16), torch.randn(2, 8, 3, 3)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = mF.group_norm(x, 4, w, b), F.group_norm(x, 4, w, b)
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(0, 4, 3), (0, 4), (2, 4, 0), (0, 4, 0, 2)])
def test_empty_tensors(shape):
    x = torch.randn(shape, dtype=f64, requires_grad=True)
    w, b = torch.randn(4, dtype=f64, requires_grad=True), torch.randn(4, dtype=f64, requires_grad=True)
    y, y_ref = mF.group_norm(x, 2, w, b), F.group_norm(x, 2, w, b)
    assert y.shape == y_ref.shape
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    grads_ref = torch.autograd.grad(y_ref.sum(), (x, w, b))
    if shape[0] > 0:  # samples with no values: torch's grad_weight is rstd * (empty sum) = NaN * 0; ours the
        assert torch.isnan(grads_ref[1]).all() and torch.equal(grads[1], torch.zeros(4, dtype=f64))  # empty sum
        grads, grads_ref = (grads[0], grads[2]), (grads_ref[0], grads_ref[2])
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r)


def test_errors_are_torchs():
    cases = [
        ((torch.randn(2, 5, 3), 2), RuntimeError, "divisible by num_groups"),
        ((torch.randn(2, 6, 3), 2, torch.randn(4)), RuntimeError, r"weight of shape \[4\] and input of shape"),
        # (torch's message names the weight's shape here, [0] for none; ours the bias's, [5])
        ((torch.randn(2, 6, 3), 2, None, torch.randn(5)), RuntimeError, "Expected bias to be a vector of size equal"),
        ((torch.randn(6), 6), RuntimeError, "Expected at least 2 dimensions"),
        ((torch.randn(1, 6), 6), ValueError, "Expected more than 1 value per channel"),
        ((torch.randn(2, 6, 3), 0), ZeroDivisionError, ""),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            F.group_norm(*args)
        with pytest.raises(error, match=message):
            mF.group_norm(*args)
    with pytest.raises(RuntimeError, match=r"bias of shape \[5\] and input of shape \[2, 6, 3\]"):
        mF.group_norm(torch.randn(2, 6, 3), 2, None, torch.randn(5))
    with pytest.raises(RuntimeError, match="expected weight of dtype Double for input of dtype Double"):
        mF.group_norm(torch.randn(2, 6, 3, dtype=f64), 2, torch.randn(6))
    with pytest.raises(RuntimeError, match="expected num_groups to be positive"):
        ops.group_norm_forward(torch.randn(2, 6, 3), -2, None, None, 1e-5)
    with pytest.raises(RuntimeError, match=r"expected save_mean of 4 elements \(one per \(sample, group\)\)"):
        ops.group_norm_backward(torch.randn(2, 6, 3), torch.randn(2, 6, 3), 2, torch.zeros(3), torch.ones(2, 2), None,
                                [True, True, True])
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        ops.group_norm_backward(torch.randn(2, 6, 4), torch.randn(2, 6, 3), 2, torch.zeros(2, 2), torch.ones(2, 2),
                                None, [True, True, True])


@given(n=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3), h=st.integers(1, 4),
       w=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_property_matches_the_builtin(n, groups, per_group, h, w, seed):
    torch.manual_seed(seed)
    C = groups * per_group
    if n * per_group * h * w == 1:
        return  # one value per group: both raise (test_errors_are_torchs)
    x = torch.randn(n, C, h, w, dtype=f64, requires_grad=True)
    wt, b = torch.randn(C, dtype=f64, requires_grad=True), torch.randn(C, dtype=f64, requires_grad=True)
    grad = torch.randn(n, C, h, w, dtype=f64)
    y, y_ref = mF.group_norm(x, groups, wt, b), F.group_norm(x, groups, wt, b)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(torch.autograd.grad(y, (x, wt, b), grad), torch.autograd.grad(y_ref, (x, wt, b), grad)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("args", [(3, 6), (2, 8, 1e-3, False), (1, 4)])
def test_module_matches_the_builtin(args):
    torch.manual_seed(0)
    builtin = nn.GroupNorm(*args)
    ours = mnn.GroupNorm(*args)
    assert repr(ours) == repr(builtin) and isinstance(ours, nn.GroupNorm)
    assert ours.state_dict().keys() == builtin.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), builtin.state_dict().values()):
        assert torch.equal(a, b)  # torch's init: ones and zeros
    if builtin.affine:
        with torch.no_grad():
            builtin.weight.normal_(), builtin.bias.normal_()
    ours.load_state_dict(builtin.state_dict(), strict=True)
    x = torch.randn(3, args[1], 4, 5)
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(leaf) for m, leaf in zip((builtin, ours), leaves)]
    torch.testing.assert_close(outs[1], outs[0])
    for out in outs:
        out.pow(2).sum().backward()
    torch.testing.assert_close(leaves[1].grad, leaves[0].grad)
    for p, q in zip(ours.parameters(), builtin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_module_constructor_errors_are_torchs():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        mnn.GroupNorm(4, 6)


def test_convert_enable_and_no_builtin_backward_left():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = manual_ops.convert(model)
    assert type(converted[1]) is mnn.GroupNorm and converted[1].weight is model[1].weight
    out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert type(manual_ops.revert(converted)[1]) is nn.GroupNorm

    w, b = torch.randn(8), torch.randn(8)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    with manual_ops.enable():
        y = F.group_norm(x, 2, w, b)
    assert not manual_ops.builtin_backward_nodes(y)
    torch.testing.assert_close(y, F.group_norm(x, 2, w, b))
