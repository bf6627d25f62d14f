"""Double backward of every op: gradgradcheck (float64) over the first-order option grids, parity
with the built-ins' double backward (float32 and float64), third order where it composes, and a
converted ResNet's gradient penalty and Hessian-vector product."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from test_batch_norm import CLAMP_BETA, LAYOUTS as BN_LAYOUTS, _clamped_reference, _input, _params, _stats
from test_conv2d import GRAD_CASES
from test_cross_entropy import REDUCTIONS, SHAPES as CE_SHAPES, SMOOTHING, _index_target, _weight
from test_pooling import ADAPTIVE_SIZES, AVG_GRID, MAX_GRID, distinct, layout

import manual_ops
from manual_ops import functional as mF
from manual_ops import models

f64 = torch.float64
gradgradcheck = torch.autograd.gradgradcheck


def fast_gradgradcheck(fn, inputs):
    """gradgradcheck on random projections of the Jacobian (fast_mode): conv and pooling have Jacobians
    of ~10^5 entries, whose full numerical form (one backward per entry) takes a minute per case."""
    return torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


# ------------------------------------------------------------------ gradgradcheck (float64)


@pytest.mark.parametrize("shapes", GRAD_CASES, ids=str)
def test_conv2d_gradgradcheck(shapes):
    x_shape, w_shape, kw = shapes
    x = torch.randn(x_shape, dtype=f64, requires_grad=True)
    w = torch.randn(w_shape, dtype=f64, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=f64, requires_grad=True)
    assert fast_gradgradcheck(lambda x, w, b: mF.conv2d(x, w, b, **kw), (x, w, b))
    assert fast_gradgradcheck(lambda x, w: mF.conv2d(x, w, None, **kw), (x, w))


@pytest.mark.parametrize("x_shape", [(3, 5), (2, 3, 5), (5,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradgradcheck(x_shape, bias):
    x = torch.randn(x_shape, dtype=f64, requires_grad=True)
    w = torch.randn(4, 5, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True) if bias else None
    assert gradgradcheck(mF.linear, (x, w, b))


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_gradgradcheck(inplace):
    x = torch.randn(3, 4, 5, dtype=f64, requires_grad=True)
    assert gradgradcheck(lambda x: mF.relu(x * 1.0, inplace=inplace), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
def test_max_pool2d_gradgradcheck(k, s, p, d, ceil, kind):
    x = layout(distinct(2, 3, 7, 8), kind).requires_grad_()
    assert fast_gradgradcheck(lambda x: mF.max_pool2d(x, k, s, p, d, ceil), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
def test_avg_pool2d_gradgradcheck(k, s, p, ceil, cip, div, kind):
    x = layout(torch.randn(2, 3, 7, 8, dtype=f64), kind).requires_grad_()
    assert fast_gradgradcheck(lambda x: mF.avg_pool2d(x, k, s, p, ceil, cip, div), (x,))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_avg_pool2d_gradgradcheck(size, kind):
    x = layout(torch.randn(2, 3, 7, 8, dtype=f64), kind).requires_grad_()
    assert fast_gradgradcheck(lambda x: mF.adaptive_avg_pool2d(x, size), (x,))


def test_pooling_gradgradcheck_unbatched_and_return_indices():
    x = distinct(3, 7, 8).requires_grad_()
    assert fast_gradgradcheck(lambda x: mF.max_pool2d(x, 3, 2, 1, return_indices=True)[0], (x,))
    assert fast_gradgradcheck(lambda x: mF.avg_pool2d(x, 3, 2, 1), (x,))
    assert fast_gradgradcheck(lambda x: mF.adaptive_avg_pool2d(x, (3, 5)), (x,))


@pytest.mark.parametrize("shape,layout_", BN_LAYOUTS, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_gradgradcheck(shape, layout_, training, affine):
    x = _input(shape, layout_, f64).requires_grad_()
    w, b = _params(shape[1], f64, affine)
    rm, rv = _stats(shape[1], f64)
    assert gradgradcheck(lambda x, w, b: mF.batch_norm(x, rm.clone(), rv.clone(), w, b, training), (x, w, b))


@pytest.mark.parametrize("scale", ["sigma", "gamma"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout_", ["contiguous", "channels_last"])
def test_clamped_batch_norm_gradgradcheck_and_reference(scale, training, layout_):
    """Floor active on channels 0 and 2; also equal to autograd's double backward through max(beta, -k*s)."""
    x = _input((3, 4, 3, 3), layout_, f64, scale=1.5, shift=0.3).requires_grad_()
    w = torch.tensor([1.2, -0.7, 0.8, 1.5], dtype=f64, requires_grad=True)
    b = torch.tensor(CLAMP_BETA, dtype=f64, requires_grad=True)
    rm, rv = _stats(4, f64)
    fn = lambda x, w, b: mF.clamped_batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 1.3, scale)  # noqa: E731
    assert gradgradcheck(fn, (x, w, b))
    ref = lambda x, w, b: _clamped_reference(x, w, b, rm, rv, training, 1e-5, 1.3, scale)  # noqa: E731
    for a, r in zip(second_order(fn, (x, w, b)), second_order(ref, (x, w, b))):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape,reduction,ls,weighted,ignore",
                         list(itertools.product(CE_SHAPES, REDUCTIONS, SMOOTHING, [False, True], [False, True])))
def test_cross_entropy_gradgradcheck_class_indices(shape, reduction, ls, weighted, ignore):
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    t, w = _index_target(shape, ignore), _weight(shape, weighted, f64)
    assert gradgradcheck(lambda x: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x,))


@pytest.mark.parametrize("shape,reduction,ls,weighted",
                         list(itertools.product(CE_SHAPES, REDUCTIONS, SMOOTHING, [False, True])))
def test_cross_entropy_gradgradcheck_class_probabilities(shape, reduction, ls, weighted):
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    t = torch.rand(*shape, dtype=f64, requires_grad=True)
    w = _weight(shape, weighted, f64)
    assert gradgradcheck(lambda x, t: mF.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x, t))


def test_cross_entropy_all_rows_ignored_has_zero_second_order():
    x = torch.randn(3, 4, dtype=f64, requires_grad=True)
    t = torch.full((3,), -100)
    (gx,) = torch.autograd.grad(mF.cross_entropy(x, t), x, create_graph=True)
    (ggx,) = torch.autograd.grad((gx * torch.randn_like(gx)).sum(), x)
    assert torch.equal(ggx, torch.zeros_like(x))


def test_direct_op_calls_differentiate_twice():
    """The register_autograd kernels of the forward ops use the same differentiable backward."""
    ops = torch.ops.manual_ops
    x = torch.randn(1, 2, 4, 4, dtype=f64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=f64, requires_grad=True)
    assert fast_gradgradcheck(lambda x, w: ops.conv2d_forward(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1), (x, w))
    assert gradgradcheck(lambda x: ops.avg_pool2d_forward(x, [2, 2], [2, 2], [0, 0], False, True, None), (x,))
    assert gradgradcheck(ops.relu_forward, (x,))
    xl, wl = torch.randn(3, 5, dtype=f64, requires_grad=True), torch.randn(2, 5, dtype=f64, requires_grad=True)
    assert gradgradcheck(lambda x, w: ops.linear_forward(x, w, None), (xl, wl))


# ------------------------------------------------------------------ third order


def test_third_order_composes_for_bilinear_pooling_and_relu():
    """Their double backward is made of our differentiable Functions, so it differentiates again."""
    x = torch.randn(1, 2, 5, 5, dtype=f64, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, dtype=f64, requires_grad=True)

    def net(x, w):
        return mF.adaptive_avg_pool2d(mF.max_pool2d(mF.relu(mF.conv2d(x, w, padding=1)) ** 2, 2), 2)

    def grads(x, w):
        y = net(x, w)
        return torch.autograd.grad((y * y).sum(), (x, w), create_graph=True)

    assert fast_gradgradcheck(grads, (x, w))


@pytest.mark.parametrize("op", ["batch_norm", "cross_entropy"])
def test_third_order_raises_for_batch_norm_and_cross_entropy(op):
    x = torch.randn(4, 3, dtype=f64, requires_grad=True)
    y = mF.batch_norm(x, None, None, training=True) if op == "batch_norm" else mF.cross_entropy(x, torch.tensor([0, 1, 2, 0]))
    (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad((gx ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        ggx.sum().backward()


# ------------------------------------------------------------------ parity with the built-ins


def second_order(fn, inputs, seed=0):
    """Grads w.r.t. (inputs..., grad_output) of ``<v, grad of <g, fn(inputs)>>`` for random g and v:
    every block of the double backward (inputs x inputs and grad_output x inputs) in one vector."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t for t in inputs]
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    y = fn(*inputs)
    y = y[0] if isinstance(y, tuple) else y
    g = torch.randn(y.shape, generator=gen, dtype=y.dtype).requires_grad_()
    grads = torch.autograd.grad(y, leaves, g, create_graph=True)
    total = sum((gr * torch.randn(gr.shape, generator=gen, dtype=gr.dtype)).sum() for gr in grads)
    return torch.autograd.grad(total, leaves + [g], allow_unused=True, materialize_grads=True)


def _conv_case(dtype):
    x, w, b = torch.randn(2, 4, 9, 8, dtype=dtype), torch.randn(6, 2, 3, 3, dtype=dtype), torch.randn(6, dtype=dtype)
    kw = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    return (x, w, b), (lambda x, w, b: mF.conv2d(x, w, b, **kw)), (lambda x, w, b: F.conv2d(x, w, b, **kw))


def _linear_case(dtype):
    x, w, b = torch.randn(3, 4, 6, dtype=dtype), torch.randn(5, 6, dtype=dtype), torch.randn(5, dtype=dtype)
    return (x, w, b), mF.linear, F.linear


def _bn_case(training, scale=None):
    def case(dtype):
        x = torch.randn(4, 3, 5, 5, dtype=dtype) * 1.5 + 0.3
        w, b = torch.rand(3, dtype=dtype) + 0.5, torch.randn(3, dtype=dtype)
        rm, rv = torch.randn(3, dtype=dtype) * 0.1, torch.rand(3, dtype=dtype) + 0.5
        if scale is None:
            return ((x, w, b), lambda x, w, b: mF.batch_norm(x, rm.clone(), rv.clone(), w, b, training),
                    lambda x, w, b: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training))
        b = torch.tensor([-6.0, 0.5, -5.0], dtype=dtype)  # floor active on channels 0 and 2
        return ((x, w, b), lambda x, w, b: mF.clamped_batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, 1.3, scale),
                lambda x, w, b: _clamped_reference(x, w, b, rm, rv, training, 1e-5, 1.3, scale))
    return case


def _pool_case(ours, builtin, distinct_values=False):
    def case(dtype):
        x = distinct(2, 3, 9, 8, dtype=dtype) if distinct_values else torch.randn(2, 3, 9, 8, dtype=dtype)
        return (x,), ours, builtin
    return case


def _relu_case(inplace):
    def case(dtype):
        return ((torch.randn(3, 4, 5, dtype=dtype),), lambda x: mF.relu(x * 1.0, inplace=inplace),
                lambda x: F.relu(x * 1.0, inplace=inplace))
    return case


def _ce_case(probabilities, reduction, ls, weighted, ignore=False):
    def case(dtype):
        shape = (4, 5, 2)
        x, w = torch.randn(*shape, dtype=dtype), _weight(shape, weighted, dtype)
        t = torch.rand(*shape, dtype=dtype) if probabilities else _index_target(shape, ignore)
        kw = dict(weight=w, reduction=reduction, label_smoothing=ls)
        if probabilities:
            return (x, t), lambda x, t: mF.cross_entropy(x, t, **kw), lambda x, t: F.cross_entropy(x, t, **kw)
        return (x,), lambda x: mF.cross_entropy(x, t, **kw), lambda x: F.cross_entropy(x, t, **kw)
    return case


PARITY_CASES = {
    "conv2d": _conv_case,
    "linear": _linear_case,
    "relu": _relu_case(False),
    "relu_": _relu_case(True),
    "max_pool2d": _pool_case(lambda x: mF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                             lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), True),
    "avg_pool2d": _pool_case(lambda x: mF.avg_pool2d(x, 3, 2, 1, True, False),
                             lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
    "avg_pool2d divisor": _pool_case(lambda x: mF.avg_pool2d(x, 2, 1, divisor_override=3),
                                     lambda x: F.avg_pool2d(x, 2, 1, divisor_override=3)),
    "adaptive_avg_pool2d": _pool_case(lambda x: mF.adaptive_avg_pool2d(x, (4, 3)),
                                      lambda x: F.adaptive_avg_pool2d(x, (4, 3))),
    "batch_norm train": _bn_case(True),
    "batch_norm eval": _bn_case(False),
    **{f"clamped {s} {'train' if t else 'eval'}": _bn_case(t, s) for s in ("sigma", "gamma") for t in (True, False)},
    **{f"cross_entropy indices {r} ls={ls} w={wt}": _ce_case(False, r, ls, wt, True)
       for r, ls, wt in itertools.product(REDUCTIONS, [0.0, 0.2], [False, True])},
    **{f"cross_entropy probabilities {r} ls={ls} w={wt}": _ce_case(True, r, ls, wt)
       for r, ls, wt in itertools.product(REDUCTIONS, [0.0, 0.2], [False, True])},
}


def parity(name, dtype):
    """Largest difference between our and the built-in's second-order grads, relative to the largest grad."""
    torch.manual_seed(0)
    inputs, ours, builtin = PARITY_CASES[name](dtype)
    a, b = second_order(ours, inputs), second_order(builtin, inputs)
    scale = max(t.abs().max().item() for t in b)
    return max((p - q).abs().max().item() for p, q in zip(a, b)) / scale


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_second_order_parity(name):
    """float32: both sides round differently in sums of O(100) terms (~1e-6 relative), so 1e-4
    has a wide margin yet catches any missing term; float64: the same down to ~1e-15."""
    assert parity(name, torch.float32) < 1e-4
    assert parity(name, f64) < 1e-10


# ------------------------------------------------------------------ a converted network


@pytest.fixture(scope="module")
def resnet_pair():
    torch.manual_seed(0)
    builtin = models.build("resnet-small", 1, 10, 8).double()
    manual = manual_ops.convert(copy.deepcopy(builtin))
    x = torch.randn(6, 1, 8, 8, dtype=f64)
    y = torch.randint(10, (6,))
    return builtin, manual, x, y


def _relative(a, b):
    return max((p - q).abs().max().item() / q.abs().max().item() for p, q in zip(a, b))


@pytest.mark.parametrize("train", [True, False])
def test_resnet_gradient_penalty_matches_builtin(resnet_pair, train):
    """WGAN-GP style: parameter grads of loss + (|d loss / d x| - 1)^2, within 1e-9 relative."""
    builtin, manual, x, y = resnet_pair
    grads = []
    for model, ce in ((builtin, F.cross_entropy), (manual, mF.cross_entropy)):
        model.train(train)
        state = copy.deepcopy(model.state_dict())
        xi = x.clone().requires_grad_()
        loss = ce(model(xi), y)
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()
        grads.append(torch.autograd.grad(loss + 10 * penalty, list(model.parameters())))
        model.load_state_dict(state)  # undo the running-stat updates
    assert _relative(grads[1], grads[0]) < 1e-9


@pytest.mark.parametrize("train", [True, False])
def test_resnet_hessian_vector_product_matches_builtin(resnet_pair, train):
    builtin, manual, x, y = resnet_pair
    gen = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=gen, dtype=f64) for p in builtin.parameters()]
    hvps = []
    for model, ce in ((builtin, F.cross_entropy), (manual, mF.cross_entropy)):
        model.train(train)
        state = copy.deepcopy(model.state_dict())
        params = list(model.parameters())
        grads = torch.autograd.grad(ce(model(x), y), params, create_graph=True)
        hvps.append(torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params))
        model.load_state_dict(state)
    assert _relative(hvps[1], hvps[0]) < 1e-9
