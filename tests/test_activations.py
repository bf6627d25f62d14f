"""The activation family (sigmoid, tanh, silu, gelu, leaky_relu, elu, hardtanh, relu6, hardswish, hardsigmoid,
softplus): gradcheck, gradgradcheck and forward AD in float64; parity with the built-ins in every dtype and
layout, special values and kinks; in-place use; opcheck; torch.compile; torch.func; errors; modules, convert."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_low_precision import LOW, check_accuracy
from torch import nn
from torch.func import grad, hessian, jacfwd, jacrev, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

ops = torch.ops.manual_ops
f64 = torch.float64


class Case:
    """One activation with one set of options: ``ours`` / ``builtin`` take (x, inplace); ``kinks`` are the
    points where f' (or f'') jumps, which finite differences must keep away from."""

    def __init__(self, ours, builtin, inplace, kinks=(), reference64=None):
        self.ours, self.builtin, self.inplace, self.kinks = ours, builtin, inplace, kinks
        self.reference64 = reference64 or builtin  # float64 parity: the built-in, unless it is less exact

    def call(self, fn, x, inplace=False):
        return fn(x, inplace=inplace) if self.inplace else fn(x)


def _with(fn, **options):
    return lambda x, inplace=False: fn(x, **options, inplace=inplace)


CASES = {
    "sigmoid": Case(mF.sigmoid, torch.sigmoid, False),
    "tanh": Case(mF.tanh, torch.tanh, False),
    "silu": Case(mF.silu, F.silu, True),
    "gelu": Case(mF.gelu, F.gelu, False),
    "gelu tanh": Case(lambda x: mF.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), False),
    "leaky_relu": Case(mF.leaky_relu, F.leaky_relu, True, (0.0,)),
    "leaky_relu 0.3": Case(_with(mF.leaky_relu, negative_slope=0.3), _with(F.leaky_relu, negative_slope=0.3),
                           True, (0.0,)),
    "leaky_relu -0.5": Case(_with(mF.leaky_relu, negative_slope=-0.5), _with(F.leaky_relu, negative_slope=-0.5),
                            False, (0.0,)),
    "elu": Case(mF.elu, F.elu, True, (0.0,)),
    "elu 0.5": Case(_with(mF.elu, alpha=0.5), _with(F.elu, alpha=0.5), True, (0.0,)),
    "elu -1.5": Case(lambda x: mF.elu(x, -1.5), lambda x: F.elu(x, -1.5), False, (0.0,)),
    "hardtanh": Case(mF.hardtanh, F.hardtanh, True, (-1.0, 1.0)),
    "hardtanh -2,3": Case(_with(mF.hardtanh, min_val=-2.0, max_val=3.0), _with(F.hardtanh, min_val=-2.0, max_val=3.0),
                          True, (-2.0, 3.0)),
    "relu6": Case(mF.relu6, F.relu6, True, (0.0, 6.0)),
    "hardswish": Case(mF.hardswish, F.hardswish, True, (-3.0, 3.0)),
    # torch's float64 hardsigmoid multiplies by a float32 1/6 (an error of 3e-8): the float64 reference is
    # the formula in exact float64 operations (clamp's gradient differs only at the kinks, kept away from)
    "hardsigmoid": Case(mF.hardsigmoid, F.hardsigmoid, True, (-3.0, 3.0),
                        lambda x, inplace=False: (x + 3).clamp(0, 6) / 6),
    "softplus": Case(mF.softplus, F.softplus, False),
    "softplus beta=2 threshold=5": Case(lambda x: mF.softplus(x, 2.0, 5.0), lambda x: F.softplus(x, 2.0, 5.0),
                                        False, (2.5,)),
}
INPLACE = [name for name, case in CASES.items() if case.inplace]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


def _make(layout, dtype=f64, shape=(2, 3, 4, 5), scale=4.0):
    """Values over [-3 scale, 3 scale] or so: every activation's every piece (relu6 past 6, softplus past
    its threshold) is hit."""
    base = torch.randn(*shape, dtype=dtype) * scale
    if layout == "channels_last":
        return base.to(memory_format=torch.channels_last)
    if layout == "transposed":
        return base.transpose(1, 3)
    if layout == "strided":
        return (torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype) * scale)[..., ::2]
    return base


def _away_from_kinks(x, kinks, margin=0.05):
    for k in kinks:
        x = torch.where((x - k).abs() < margin, x + 2 * margin, x)
    return x


def _input(name, layout="contiguous", dtype=f64, **kwargs):
    torch.manual_seed(sum(map(ord, name + layout)))
    return _away_from_kinks(_make(layout, dtype, **kwargs), CASES[name].kinks)


# --------------------------------------------------------------------------- derivatives in float64


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
def test_gradcheck_gradgradcheck_and_forward_ad(name, layout):
    case = CASES[name]
    x = _input(name, layout).requires_grad_()
    fn = lambda x: case.call(case.ours, x)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,), check_fwd_over_rev=True)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_gradcheck_gradgradcheck_and_forward_ad(name):
    case = CASES[name]
    x = _input(name).requires_grad_()
    fn = lambda x: case.ours(x * 1.0, inplace=True)  # noqa: E731  (in place needs a non-leaf)
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,), check_fwd_over_rev=True)


def _first_and_second_order(fn, x, inplace=False, second=True):
    """fn(x), its gradient for a fixed output gradient, and the gradient of that gradient's weighted sum."""
    leaf = x.detach().clone().requires_grad_()
    y = fn(leaf * 1.0 if inplace else leaf)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (dx,) = torch.autograd.grad(y, leaf, g, create_graph=True)
    ddx = torch.zeros_like(leaf)  # where dx does not depend on x (piecewise linear)
    if second and dx.requires_grad:
        (ddx,) = torch.autograd.grad(dx, leaf, torch.ones_like(dx), allow_unused=True, materialize_grads=True)
    return y.detach(), dx.detach(), ddx


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
def test_parity_float64_first_and_second_order_and_strides(name, layout):
    case = CASES[name]
    x = _input(name, layout)
    for inplace in ([False, True] if case.inplace else [False]):
        ours = _first_and_second_order(lambda t: case.call(case.ours, t, inplace), x, inplace)
        reference_inplace = inplace and case.reference64 is case.builtin
        ref = _first_and_second_order(lambda t: case.call(case.reference64, t, reference_inplace), x, inplace)
        builtin = ref if case.reference64 is case.builtin else \
            _first_and_second_order(lambda t: case.call(case.builtin, t, inplace), x, inplace, second=False)
        for a, b, layout in zip(ours[:2], ref[:2], builtin[:2]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
            assert a.stride() == layout.stride()
        torch.testing.assert_close(ours[2], ref[2], rtol=1e-10, atol=1e-12)


def _float32_error(fn, x, g, reference):
    leaf = x.detach().float().requires_grad_()
    y = fn(leaf)
    y.backward(g.float())
    out, dx = reference
    return [((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
            for a, r in ((y, out), (leaf.grad, dx))]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CASES)
def test_parity_float32_within_twice_the_builtins_error(name, layout):
    case = CASES[name]
    x = _input(name, layout, torch.float32).double()
    leaf = x.clone().requires_grad_()
    out = case.call(case.builtin, leaf)
    g = torch.randn_like(out).float().double()
    out.backward(g)
    reference = (out.detach(), leaf.grad)
    ours = _float32_error(lambda t: case.call(case.ours, t), x, g, reference)
    builtin = _float32_error(lambda t: case.call(case.builtin, t), x, g, reference)
    for what, e, b in zip(("output", "grad"), ours, builtin):
        assert e <= 2 * b + 2.0**-22, f"{what}: ours {e:.3g}, built-in {b:.3g}"


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", CASES)
def test_low_precision_within_twice_the_builtins_error(name, dtype):
    case = CASES[name]
    x = _input(name, dtype=torch.float32, shape=(4, 5, 6), scale=2.0).double().requires_grad_()
    check_accuracy(lambda t: case.call(case.ours, t), lambda t: case.call(case.builtin, t), [x], [dtype])
    if case.inplace:
        check_accuracy(lambda t: case.ours(t * 1, inplace=True), lambda t: case.builtin(t * 1, inplace=True), [x],
                       [dtype])


# Where torch's vectorised kernel and its scalar loop (which takes a tensor's last few elements) disagree, the
# reference is the vectorised one, except here, where ours gives the limit, as torch's scalar loop does.
SCALAR_REFERENCE = {("gelu", float("inf"))}  # torch's vectorised GELU gives NaN at +inf


def _torch_reference(case, name, values, dtype):
    """The built-in's outputs and gradients (for gradient 1, 2, ...) for ``values``, each one as its vectorised
    kernel computes it (a run of 64 copies of the value), or its scalar loop for SCALAR_REFERENCE."""
    outs, grads = [], []
    for i, v in enumerate(values):
        n = 1 if (name.split()[0], v) in SCALAR_REFERENCE else 64
        x = torch.full((n,), v, dtype=dtype, requires_grad=True)
        y = case.call(case.builtin, x)
        (g,) = torch.autograd.grad(y, x, torch.full((n,), i + 1.0, dtype=dtype))
        outs.append(y[0].detach()), grads.append(g[0])
    return torch.stack(outs), torch.stack(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CASES)
def test_special_values_and_kinks_like_the_builtin(name, dtype):
    # 35 values (full vectors of every capability's copy and a partial one; each lower capability reruns this):
    # NaN, infinities and signed zeros, the kinks exactly (where the built-in's backward picks one side).
    case = CASES[name]
    special = [float("nan"), -0.0, 0.0, -1.0, 2.0, float("-inf"), float("inf"), *case.kinks]
    values = (special * 35)[:35]
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    ours = case.call(case.ours, x)
    (g_ours,) = torch.autograd.grad(ours, x, torch.arange(1.0, 36.0, dtype=dtype))
    ref, g_ref = _torch_reference(case, name, values, dtype)
    for a, b in ((ours, ref), (g_ours, g_ref)):
        # NaN, infinities and zeros exactly where the built-in has them; other values within rounding
        for test in (torch.isnan, torch.isposinf, torch.isneginf, lambda t: t == 0):
            assert torch.equal(test(a), test(b)), (a, b)
        torch.testing.assert_close(a, b, equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(0, 7), min_size=1, max_size=4),
       st.floats(0.1, 10.0), st.integers(0, 2**31 - 1))
def test_property_float64_matches_the_builtin(name, shape, scale, seed):
    case = CASES[name]
    torch.manual_seed(seed)
    x = (torch.randn(shape, dtype=f64) * scale).requires_grad_()
    ours, ref = case.call(case.ours, x), case.call(case.reference64, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- in place


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_returns_the_input_bumps_its_version_and_matches_the_builtin(name):
    case = CASES[name]
    x = _input(name, dtype=torch.float32).requires_grad_()
    grads = []
    for fn in (case.ours, case.builtin):
        h = x * 2
        version = h._version
        y = fn(h, inplace=True)
        assert y is h and h._version > version
        torch.testing.assert_close(y, case.builtin(x.detach() * 2), rtol=0, atol=0)
        grads.append(torch.autograd.grad(y, x, torch.ones_like(y))[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_on_a_leaf_that_requires_grad_raises_before_mutating(name):
    x = torch.tensor([-1.0, 2.0, 7.0], requires_grad=True)
    for target, what in ((x, "a leaf Variable"), (x[:2], "a view of a leaf Variable")):
        with pytest.raises(RuntimeError, match=f"^{what} that requires grad is being used in an in-place operation"):
            CASES[name].ours(target, inplace=True)
    assert torch.equal(x.detach(), torch.tensor([-1.0, 2.0, 7.0]))


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_without_autograd_and_on_a_non_dense_view(name):
    case = CASES[name]
    x = _input(name, dtype=torch.float32, shape=(4, 12))
    view = x[:, ::3]
    expected = case.builtin(view.clone())
    assert case.ours(view, inplace=True) is view
    torch.testing.assert_close(view, expected)
    assert torch.equal(x[:, ::3], view)


def test_inplace_output_modified_later_is_detected():
    x = torch.randn(5, requires_grad=True)
    for name in ("hardtanh", "silu"):  # saves its output / a copy of its input
        y = CASES[name].ours(x * 1, True)
        y.add_(1)
        if name == "hardtanh":
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                y.sum().backward()
        else:  # the saved copy is untouched: the gradient is silu's at the original values
            y.sum().backward()
            torch.testing.assert_close(x.grad, torch.autograd.grad(F.silu(x).sum(), x)[0])


# --------------------------------------------------------------------------- ops, compile, torch.func


def _op_args(name):
    """(name, alpha, beta) that the functional wrapper passes for CASES[name]'s options."""
    return {"gelu tanh": ("gelu_tanh", 0.0, 0.0), "leaky_relu": ("leaky_relu", 0.01, 0.0),
            "elu": ("elu", 1.0, 0.0), "hardtanh": ("hardtanh", -1.0, 1.0), "relu6": ("hardtanh", 0.0, 6.0),
            "softplus": ("softplus", 1.0, 20.0)}.get(name, (name, 0.0, 0.0))


OP_NAMES = ["sigmoid", "tanh", "silu", "gelu", "gelu tanh", "leaky_relu", "elu", "hardtanh", "relu6", "hardswish",
            "hardsigmoid", "softplus"]


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name):
    args = _op_args(name)
    for layout in ("contiguous", "channels_last", "transposed"):
        x = _input(name, layout, torch.float32).requires_grad_()
        saved = CASES[name].builtin(x.detach()) if args[0] in ("sigmoid", "tanh", "hardtanh") else x.detach()
        g = torch.randn(x.shape)
        torch.library.opcheck(ops.activation_forward, (x, *args))
        torch.library.opcheck(ops.activation_backward, (g, saved, *args))
        torch.library.opcheck(ops.activation_double_backward, (g, saved, torch.randn(x.shape), *args))
        torch.library.opcheck(ops.activation_, (x.detach() * 1, *args))


def test_the_op_called_directly_differentiates():
    x = torch.randn(3, 4, dtype=f64, requires_grad=True)
    for name in ("sigmoid", "silu"):
        assert torch.autograd.gradcheck(lambda t: ops.activation_forward(t, name, 0.0, 0.0), (x,))


def test_torch_compile_fullgraph():
    torch.manual_seed(3)
    x = torch.randn(4, 6, requires_grad=True)

    def f(x, act):
        h = act.hardswish(act.silu(x * 3.0), inplace=True) if act is mF else F.hardswish(F.silu(x * 3.0), inplace=True)
        return act.gelu(act.sigmoid(h) + act.relu6(h, inplace=False), approximate="tanh").sum()

    compiled = torch.compile(lambda x: f(x, mF), fullgraph=True, backend="aot_eager")
    (g_ours,) = torch.autograd.grad(compiled(x), x)
    (g_ref,) = torch.autograd.grad(f(x, F), x)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("name", CASES)
def test_vmap_per_sample_gradients_and_curvature_like_the_builtin(name):
    case = CASES[name]
    x = _input(name, shape=(3, 4, 5))
    ours, ref = (lambda t: case.call(case.ours, t)), (lambda t: case.call(case.reference64, t))
    torch.testing.assert_close(vmap(ours, in_dims=1, out_dims=1)(x), ref(x), rtol=1e-12, atol=1e-13)
    loss = lambda fn: lambda t: (fn(t) * torch.arange(5.0, dtype=f64)).sum()  # noqa: E731
    torch.testing.assert_close(vmap(grad(loss(ours)))(x), vmap(grad(loss(ref)))(x), rtol=1e-12, atol=1e-13)
    v = x[0, 0]
    for transform in (jacrev, jacfwd, hessian):
        torch.testing.assert_close(transform(loss(ours))(v), transform(loss(ref))(v), rtol=1e-10, atol=1e-12)


def test_third_order_through_the_saved_tensor_raises_clearly():
    x = torch.randn(4, dtype=f64, requires_grad=True)
    (dx,) = torch.autograd.grad(mF.silu(x).sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivative of silu"):
        torch.autograd.grad(ddx.sum(), x)


def test_autocast_keeps_the_dtype_as_the_builtin():
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, case in CASES.items():
            for t in (x, x.bfloat16()):
                assert case.call(case.ours, t).dtype == case.call(case.builtin, t).dtype, name


# --------------------------------------------------------------------------- errors and empty tensors


def test_errors_name_the_argument_and_the_sizes():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="activation_forward: unknown activation 'swish'"):
        ops.activation_forward(x, "swish", 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"expected grad_output of size \[2, 3\], but got grad_output of size \[3\]"):
        ops.activation_backward(torch.randn(3), x, "silu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match="expected saved and grad_grad_input to have the same dtype"):
        ops.activation_double_backward(x, x, x.double(), "silu", 0.0, 0.0)
    with pytest.raises(NotImplementedError, match="\"silu\" not implemented for 'Long'"):
        mF.silu(torch.tensor([1, 2]))
    with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
        ops.activation_forward(torch.tensor([1, 2]), "tanh", 0.0, 0.0)
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh"):
        mF.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        mF.hardtanh(x, 2.0, 1.0)


def test_sigmoid_and_tanh_promote_integers_like_the_builtin():
    t = torch.tensor([-2, 0, 3])
    for ours, ref in ((mF.sigmoid, torch.sigmoid), (mF.tanh, torch.tanh)):
        assert torch.equal(ours(t), ref(t)) and ours(t).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4, 4)])
@pytest.mark.parametrize("name", CASES)
def test_empty_tensors(name, shape):
    case = CASES[name]
    x = torch.randn(shape, requires_grad=True)
    y = case.call(case.ours, x)
    assert y.shape == case.call(case.builtin, x).shape
    y.sum().backward()
    assert x.grad.shape == x.shape


# --------------------------------------------------------------------------- modules and convert

MODULES = [
    (nn.Sigmoid(), mnn.Sigmoid()), (nn.Tanh(), mnn.Tanh()), (nn.SiLU(inplace=True), mnn.SiLU(inplace=True)),
    (nn.GELU(approximate="tanh"), mnn.GELU(approximate="tanh")), (nn.LeakyReLU(0.2), mnn.LeakyReLU(0.2)),
    (nn.ELU(0.5, inplace=True), mnn.ELU(0.5, inplace=True)), (nn.Hardtanh(-2.0, 3.0), mnn.Hardtanh(-2.0, 3.0)),
    (nn.ReLU6(inplace=True), mnn.ReLU6(inplace=True)), (nn.Hardswish(), mnn.Hardswish()),
    (nn.Hardsigmoid(inplace=True), mnn.Hardsigmoid(inplace=True)), (nn.Softplus(2.0, 5.0), mnn.Softplus(2.0, 5.0)),
]


@pytest.mark.parametrize("builtin,ours", MODULES, ids=[type(m[0]).__name__ for m in MODULES])
def test_modules_match_the_builtins(builtin, ours):
    assert repr(ours) == repr(builtin) and isinstance(ours, type(builtin))
    assert ours.state_dict().keys() == builtin.state_dict().keys()
    x = torch.randn(2, 3, 4, 5) * 4
    outs = []
    for m in (builtin, ours):
        leaf = x.clone().requires_grad_()
        y = m(leaf * 1)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), leaf.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_convert_swaps_every_activation_and_revert_restores_it():
    model = nn.Sequential(*(builtin for builtin, _ in MODULES), nn.ReLU())
    converted = manual_ops.convert(model)
    for (builtin, ours), m in zip(MODULES, converted):
        assert type(m) is type(ours) and repr(m) == repr(builtin)
    reverted = manual_ops.revert(converted)
    assert [type(m) for m in reverted] == [type(b) for b, _ in MODULES] + [nn.ReLU]
