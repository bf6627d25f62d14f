"""torch.func composed over our ops and converted networks: per-sample gradients (vmap(grad)), jacrev,
jacfwd and hessian against the built-ins', and forward-mode AD under autocast (never a dropped tangent)."""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from test_pooling import distinct
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops.models import build

f64 = torch.float64


def assert_close(actual, expected, tol=1e-10):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------ per op: jacrev, jacfwd, hessian

def _bn_reference(x, w, b):
    """Training-mode batch norm in plain torch ops: torch.func's Hessian of F.batch_norm in training is wrong in
    its (weight, input) block (torch 2.13: it disagrees with torch.autograd's double backward of the same call)."""
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


_m, _v = torch.randn(3, dtype=f64), torch.rand(3, dtype=f64) + 0.5
_target, _probs = torch.tensor([0, 2, 1]), torch.randn(3, 4, dtype=f64).softmax(1)
# name -> (ours, reference, argument shapes or tensors)
OPS = {
    "conv2d": (lambda x, w, b: mF.conv2d(x, w, b, stride=2, padding=1, groups=2),
               lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), [(2, 4, 5, 5), (4, 2, 3, 3), (4,)]),
    "linear": (mF.linear, F.linear, [(2, 3, 5), (4, 5), (4,)]),
    "relu": (mF.relu, F.relu, [(2, 3, 4)]),
    "max_pool2d": (lambda x: mF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [distinct(2, 2, 5, 5)]),
    "avg_pool2d": (lambda x: mF.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                   lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [(2, 2, 5, 5)]),
    "adaptive_avg_pool2d": (lambda x: mF.adaptive_avg_pool2d(x, (2, 3)), lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
                            [(2, 2, 5, 5)]),
    "batch_norm_eval": (lambda x, w, b: mF.batch_norm(x, _m, _v, w, b), lambda x, w, b: F.batch_norm(x, _m, _v, w, b),
                        [(4, 3, 2, 2), (3,), (3,)]),
    "batch_norm_train": (lambda x, w, b: mF.batch_norm(x, None, None, w, b, True), _bn_reference,
                         [(4, 3, 2, 2), (3,), (3,)]),
    "cross_entropy": (lambda x: mF.cross_entropy(x, _target, label_smoothing=0.1),
                      lambda x: F.cross_entropy(x, _target, label_smoothing=0.1), [(3, 4)]),
    "cross_entropy_probabilities": (lambda x, p: mF.cross_entropy(x, p, reduction="sum"),
                                    lambda x, p: F.cross_entropy(x, p, reduction="sum"), [(3, 4), _probs]),
}


def _args(specs):
    return [s if isinstance(s, torch.Tensor) else torch.randn(s, dtype=f64) for s in specs]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_jacobian_per_op(name, transform):
    ours, reference, specs = OPS[name]
    args = _args(specs)
    argnums = tuple(range(len(args)))
    expected = jacrev(reference, argnums)(*args)
    assert_close(transform(ours, argnums)(*args), expected)


@pytest.mark.parametrize("name", OPS)
def test_hessian_per_op(name):
    ours, reference, specs = OPS[name]
    args = _args(specs)
    argnums = tuple(range(len(args)))
    y = torch.randn_like(reference(*args))

    def scalar(op):
        return lambda *a: (op(*a) * y).tanh().sum()  # tanh: a non-zero second derivative of the output
    expected = hessian(scalar(reference), argnums)(*args)
    actual = hessian(scalar(ours), argnums)(*args)
    for i in argnums:
        for j in argnums:
            assert_close(actual[i][j], expected[i][j])


# ------------------------------------------------------------------ converted networks


def _small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding="same", bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).to(f64)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval statistics and affine parameters
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 2)
            nn.init.normal_(m.bias)
    net.eval()
    return net, manual_ops.convert(copy.deepcopy(net))


def test_converted_cnn_jacobians_and_hessian_equal_builtin():
    builtin, ours = _small_cnn()
    params = {k: v.detach() for k, v in builtin.named_parameters()}
    x, y = torch.randn(2, 2, 6, 6, dtype=f64), torch.tensor([0, 2])
    for transform in (jacrev, jacfwd):
        actual = transform(lambda p: functional_call(ours, p, (x,)))(params)
        expected = transform(lambda p: functional_call(builtin, p, (x,)))(params)
        for k in params:
            assert_close(actual[k], expected[k])
        assert_close(transform(ours)(x), transform(builtin)(x))
    actual = hessian(lambda p: mF.cross_entropy(functional_call(ours, p, (x,)), y))(params)
    expected = hessian(lambda p: F.cross_entropy(functional_call(builtin, p, (x,)), y))(params)
    for a in params:
        for b in params:
            assert_close(actual[a][b], expected[a][b])
    assert_close(hessian(lambda x: mF.cross_entropy(ours(x), y))(x),
                 hessian(lambda x: F.cross_entropy(builtin(x), y))(x))


def test_per_sample_grads_of_converted_resnet_small_equal_a_loop():
    torch.manual_seed(0)
    model = manual_ops.convert(build("resnet-small", in_channels=3, num_classes=10, input_size=8)).to(f64).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = torch.randn(4, 3, 8, 8, dtype=f64), torch.randint(0, 10, (4,))

    def loss(params, xi, yi):
        return mF.cross_entropy(functional_call(model, (params, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        mF.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()  # eager autograd, one sample at a time
        for k, p in model.named_parameters():
            expected = p.grad
            assert (per_sample[k][i] - expected).norm() <= 1e-12 * expected.norm(), k


# ------------------------------------------------------------------ forward-mode AD under autocast

_w, _W = torch.randn(4, 3, 3, 3), torch.randn(5, 48)
AUTOCAST_OPS = {
    "conv2d": (lambda x: mF.conv2d(x, _w), lambda x: F.conv2d(x, _w)),
    "linear": (lambda x: mF.linear(x.flatten(1), _W), lambda x: F.linear(x.flatten(1), _W)),
    "cross_entropy": (lambda x: mF.cross_entropy(x.flatten(1)[:, :10], _target[:2]),
                      lambda x: F.cross_entropy(x.flatten(1)[:, :10], _target[:2])),
    "batch_norm": (lambda x: mF.batch_norm(x, torch.zeros(3), torch.ones(3)),
                   lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3))),
    "max_pool2d": (lambda x: mF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
}


@pytest.mark.parametrize("name", AUTOCAST_OPS)
def test_forward_ad_under_autocast_has_the_builtins_tangent(name):
    ours, builtin = AUTOCAST_OPS[name]
    x, dx = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with fwAD.dual_level():
            actual = fwAD.unpack_dual(ours(fwAD.make_dual(x, dx)))
            expected = fwAD.unpack_dual(builtin(fwAD.make_dual(x, dx)))
        func_primal, func_tangent = jvp(ours, (x,), (dx,))
    assert actual.tangent is not None
    assert actual.primal.dtype == expected.primal.dtype and actual.tangent.dtype == expected.tangent.dtype
    torch.testing.assert_close(actual.primal, expected.primal)
    torch.testing.assert_close(actual.tangent, expected.tangent)
    torch.testing.assert_close(func_tangent, expected.tangent)


def test_vmap_under_autocast_equals_its_per_sample_calls():
    """Each slice runs in the autocast dtype, as the call on one sample does (torch's built-in conv2d under vmap
    and autocast stays in float32: autocast does not reach it below vmap)."""
    x = torch.randn(3, 2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vmap(lambda x: mF.conv2d(x, _w))(x)
        expected = torch.stack([F.conv2d(xi, _w) for xi in x])
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)


def test_wrappers_route_to_the_functions_under_torch_func(monkeypatch):
    """The public wrappers' fast paths (the C++ autograd kernels, the operators) step aside under torch.func:
    the Functions' vmap rules run (here, Conv2dFunction's and LinearFunction's, counted)."""
    calls = []
    for function in (mF.Conv2dFunction, mF.LinearFunction):
        rule = function.vmap
        monkeypatch.setattr(function, "vmap", staticmethod(
            lambda *a, rule=rule, name=function.__name__: calls.append(name) or rule(*a)))
    x, w, W = torch.randn(2, 1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(2, 36)
    vmap(lambda x: mF.linear(mF.conv2d(x, w).flatten(1), W))(x)
    assert calls == ["Conv2dFunction", "LinearFunction"]
