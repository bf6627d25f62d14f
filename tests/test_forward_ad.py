"""Forward-mode AD (the hand-written jvp of every Function): gradcheck(check_forward_ad=True) over the
option grids, and torch.func.jvp / torch.autograd.forward_ad against the built-ins."""
import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from test_batch_norm import CLAMP_BETA, LAYOUTS as BN_LAYOUTS, _input, _params, _stats
from test_conv2d import GRAD_CASES
from test_cross_entropy import REDUCTIONS, SHAPES as CE_SHAPES, SMOOTHING, _index_target, _weight
from test_pooling import ADAPTIVE_SIZES, AVG_GRID, MAX_GRID, distinct, layout
from test_second_order import PARITY_CASES

from manual_ops import functional as mF

f64 = torch.float64


def forward_gradcheck(fn, inputs, fast_mode=False):
    """gradcheck of forward mode (and reverse mode, as gradcheck does) in float64; ``fast_mode`` checks
    random projections of the Jacobian (for conv and pooling, whose full Jacobians are large)."""
    return torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, fast_mode=fast_mode)


@pytest.mark.parametrize("shapes", GRAD_CASES, ids=str)
def test_conv2d(shapes):
    x_shape, w_shape, kw = shapes
    x = torch.randn(x_shape, dtype=f64, requires_grad=True)
    w = torch.randn(w_shape, dtype=f64, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=f64, requires_grad=True)
    assert forward_gradcheck(lambda x, w, b: mF.conv2d(x, w, b, **kw), (x, w, b), fast_mode=True)


@pytest.mark.parametrize("x_shape", [(3, 5), (2, 3, 5), (5,)])
def test_linear(x_shape):
    x = torch.randn(x_shape, dtype=f64, requires_grad=True)
    w = torch.randn(4, 5, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True)
    assert forward_gradcheck(mF.linear, (x, w, b))
    assert forward_gradcheck(mF.linear, (x, w, None))


@pytest.mark.parametrize("inplace", [False, True])
def test_relu(inplace):
    x = torch.randn(3, 4, 5, dtype=f64, requires_grad=True)
    assert forward_gradcheck(lambda x: mF.relu(x * 1.0, inplace=inplace), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
def test_max_pool2d(k, s, p, d, ceil, kind):
    x = layout(distinct(2, 3, 7, 8), kind).requires_grad_()
    assert forward_gradcheck(lambda x: mF.max_pool2d(x, k, s, p, d, ceil), (x,), fast_mode=True)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
def test_avg_pool2d(k, s, p, ceil, cip, div, kind):
    x = layout(torch.randn(2, 3, 7, 8, dtype=f64), kind).requires_grad_()
    assert forward_gradcheck(lambda x: mF.avg_pool2d(x, k, s, p, ceil, cip, div), (x,), fast_mode=True)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_avg_pool2d(size, kind):
    x = layout(torch.randn(2, 3, 7, 8, dtype=f64), kind).requires_grad_()
    assert forward_gradcheck(lambda x: mF.adaptive_avg_pool2d(x, size), (x,), fast_mode=True)


@pytest.mark.parametrize("shape,layout_", BN_LAYOUTS, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(shape, layout_, training, affine):
    x = _input(shape, layout_, f64).requires_grad_()
    w, b = _params(shape[1], f64, affine)
    rm, rv = _stats(shape[1], f64)
    assert forward_gradcheck(lambda x, w, b: mF.batch_norm(x, rm.clone(), rv.clone(), w, b, training), (x, w, b))


@pytest.mark.parametrize("scale", ["sigma", "gamma"])
@pytest.mark.parametrize("training", [True, False])
def test_clamped_batch_norm(scale, training):
    x = _input((3, 4, 3, 3), "contiguous", f64, scale=1.5, shift=0.3).requires_grad_()
    w = torch.tensor([1.2, -0.7, 0.8, 1.5], dtype=f64, requires_grad=True)
    b = torch.tensor(CLAMP_BETA, dtype=f64, requires_grad=True)
    rm, rv = _stats(4, f64)
    assert forward_gradcheck(
        lambda x, w, b: mF.clamped_batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 1.3, scale),
        (x, w, b))


@pytest.mark.parametrize("shape,reduction,ls,weighted,ignore",
                         list(itertools.product(CE_SHAPES, REDUCTIONS, SMOOTHING, [False, True], [False, True])))
def test_cross_entropy_class_indices(shape, reduction, ls, weighted, ignore):
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    t, w = _index_target(shape, ignore), _weight(shape, weighted, f64)
    assert forward_gradcheck(lambda x: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x,))


@pytest.mark.parametrize("shape,reduction,ls,weighted",
                         list(itertools.product(CE_SHAPES, REDUCTIONS, SMOOTHING, [False, True])))
def test_cross_entropy_class_probabilities(shape, reduction, ls, weighted):
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    t = torch.rand(*shape, dtype=f64, requires_grad=True)
    w = _weight(shape, weighted, f64)
    assert forward_gradcheck(lambda x, t: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x, t))


# ------------------------------------------------------------------ against the built-ins


@pytest.mark.parametrize("name", list(PARITY_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_func_jvp_matches_builtin(name, dtype):
    """torch.func.jvp and the forward_ad dual-number API, ours against the built-in, for tangents of
    every floating input."""
    torch.manual_seed(0)
    inputs, ours, builtin = PARITY_CASES[name](dtype)
    tangents = tuple(torch.randn_like(t) for t in inputs)
    out_ours, jvp_ours = torch.func.jvp(ours, inputs, tangents)
    out_ref, jvp_ref = torch.func.jvp(builtin, inputs, tangents)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out_ours, out_ref, **tol)
    torch.testing.assert_close(jvp_ours, jvp_ref, **tol)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(inputs, tangents)]
        torch.testing.assert_close(fwAD.unpack_dual(ours(*duals)).tangent, jvp_ref, **tol)


def test_indices_and_statistics_have_no_tangent():
    x, v = torch.randn(2, 3, 6, 6, dtype=f64), torch.randn(2, 3, 6, 6, dtype=f64)
    with fwAD.dual_level():
        out, indices = mF.max_pool2d(fwAD.make_dual(x, v), 2, return_indices=True)
        assert fwAD.unpack_dual(indices).tangent is None and fwAD.unpack_dual(out).tangent is not None


def test_forward_over_reverse_is_not_needed_for_jvp_of_a_network():
    """A small converted-style network through torch.func.jvp equals the built-in one."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 8, 8, dtype=f64), torch.randn(4, 3, 3, 3, dtype=f64)
    dx, dw = torch.randn_like(x), torch.randn_like(w)
    rm, rv = torch.zeros(4, dtype=f64), torch.ones(4, dtype=f64)

    def net(conv, bn, relu, pool, x, w):
        return pool(relu(bn(conv(x, w, padding=1), rm.clone(), rv.clone(), training=True)), 2)

    ours = torch.func.jvp(lambda x, w: net(mF.conv2d, mF.batch_norm, mF.relu, mF.max_pool2d, x, w), (x, w), (dx, dw))
    ref = torch.func.jvp(lambda x, w: net(F.conv2d, F.batch_norm, F.relu, F.max_pool2d, x, w), (x, w), (dx, dw))
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", ["batch_norm", "group_norm", "cross_entropy_target", "cross_entropy_input", "conv2d",
                                  "linear"])
def test_forward_over_reverse_with_an_output_that_has_no_tangent(case):
    """Every backward Function with several outputs gives a zero tangent, not None, for a gradient that has none
    (the bias's, or the input's when only the target has a tangent): torch 2.13 fails an internal assert on None."""
    f64 = torch.float64
    x = torch.randn(2, 6, 3, 2, dtype=f64, requires_grad=True)
    w, b = torch.randn(6, dtype=f64, requires_grad=True), torch.randn(6, dtype=f64, requires_grad=True)
    logits = torch.randn(4, 3, dtype=f64, requires_grad=True)
    conv_w = torch.randn(4, 6, 3, 3, dtype=f64, requires_grad=True)
    linear_w = torch.randn(6, 2, dtype=f64, requires_grad=True)
    probs = torch.randn(4, 3, dtype=f64).softmax(1).requires_grad_()
    calls = {
        "batch_norm": (lambda fn, x: fn.batch_norm(x, None, None, w, b, True), x),
        "conv2d": (lambda fn, x: fn.conv2d(x, conv_w, b[:4], padding=1), x),
        "linear": (lambda fn, x: fn.linear(x, linear_w, b), x),
        "group_norm": (lambda fn, x: fn.group_norm(x, 3, w, b), x),
        "cross_entropy_target": (lambda fn, p: fn.cross_entropy(logits, p), probs),
        "cross_entropy_input": (lambda fn, z: fn.cross_entropy(z, probs), logits),
    }
    call, primal = calls[case]
    tangent = torch.randn_like(primal)
    results = []
    for fn in (mF, F):
        with fwAD.dual_level():
            dual = fwAD.make_dual(primal, tangent)
            out = call(fn, dual)
            (grad,) = torch.autograd.grad(out, logits if case == "cross_entropy_target" else dual,
                                          torch.ones_like(out), create_graph=True)
            got = fwAD.unpack_dual(grad).tangent  # None is zero: torch's for the bilinear ops, whose input grad
            results.append(torch.zeros_like(grad) if got is None else got)  # is constant in the input
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)
