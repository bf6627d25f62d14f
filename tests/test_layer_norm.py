"""layer_norm against torch's: values, gradients and strides over a grid of shapes, normalized shapes and layouts
(float64, float32, bfloat16/float16 against a float64 referee); gradcheck, gradgradcheck, forward AD and
forward-over-reverse; vmap rules and per-sample gradients; opcheck; torch.compile; compiled autograd; autocast;
empty tensors; errors; hypothesis; the module, convert and enable() (torchvision's LayerNorm2d spelling)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_low_precision import LOW, check_accuracy
from torch import nn
from torch.func import grad, hessian, jacfwd, jacrev, vmap

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
ops = torch.ops.manual_ops

# (input shape, normalized_shape): one to all dims normalised, rows shorter and longer than a vector, odd sizes
CASES = [((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((6,), (6,)), ((3, 100), (100,)), ((2, 3, 37), (37,)),
         ((2, 4, 3, 3), (3, 3)), ((2, 4, 3, 3), (4, 3, 3)), ((4, 1), (1,)), ((2, 5, 768), (768,))]
LAYOUTS = ["contiguous", "transposed", "channels_last"]


def _input(shape, layout, dtype=f64, offset=3.0):
    x = torch.randn(shape, dtype=dtype) * 2 + offset  # an offset: the statistics must not cancel
    if layout == "channels_last" and x.dim() == 4:
        return x.to(memory_format=torch.channels_last)
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    return x


def _params(shape, affine, dtype=f64):
    w = torch.randn(shape, dtype=dtype) if affine != "none" else None
    b = torch.randn(shape, dtype=dtype) if affine == "both" else None
    return w, b


def _run(fn, x, shape, w, b, grad_output):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(leaves[0], shape, leaves[1], leaves[2], 1e-5)
    return y, torch.autograd.grad(y, [t for t in leaves if t is not None], grad_output)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,ns", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_parity_float64_values_gradients_and_strides(shape, ns, affine, layout):
    x = _input(shape, layout)
    w, b = _params(ns, affine)
    grad_output = torch.randn(shape, dtype=f64)
    y, grads = _run(mF.layer_norm, x, ns, w, b, grad_output)
    y_ref, grads_ref = _run(F.layer_norm, x, ns, w, b, grad_output)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert y.stride() == y_ref.stride()
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
        assert g.stride() == r.stride()


@pytest.mark.parametrize("shape,ns", [CASES[0], CASES[3], CASES[-1]])
def test_float32_within_twice_the_builtins_error(shape, ns):
    x = _input(shape, "contiguous", torch.float32, offset=30.0)
    w, b = _params(ns, "both", torch.float32)
    grad_output = torch.randn(shape)
    reference = _run(F.layer_norm, x.double(), ns, w.double(), b.double(), grad_output.double())
    ours, theirs = _run(mF.layer_norm, x, ns, w, b, grad_output), _run(F.layer_norm, x, ns, w, b, grad_output)
    for o, t, r in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]], [reference[0], *reference[1]]):
        scale = r.abs().max()
        err_ours, err_theirs = (o.double() - r).abs().max() / scale, (t.double() - r).abs().max() / scale
        assert err_ours <= 2 * err_theirs + 2**-22, (err_ours.item(), err_theirs.item())


@pytest.mark.parametrize("params_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_within_twice_the_builtins_error(dtype, params_dtype):
    pdtype = dtype if params_dtype == "same" else torch.float32
    x = torch.randn(4, 16, 96, dtype=f64) + 1
    w, b = torch.randn(96, dtype=f64), torch.randn(96, dtype=f64)
    for t in (x, w, b):
        t.requires_grad_()
    check_accuracy(lambda x, w, b: mF.layer_norm(x, (96,), w, b), lambda x, w, b: F.layer_norm(x, (96,), w, b),
                   [x, w, b], [dtype, pdtype, pdtype])


@pytest.mark.parametrize("ns", [(4,), (3, 4)])
@pytest.mark.parametrize("affine", ["both", "none"])
def test_gradcheck_gradgradcheck_and_forward_ad(affine, ns):
    x = _input((2, 3, 4), "transposed").requires_grad_()
    params = [t.requires_grad_() for t in _params(ns, affine) if t is not None]

    def f(x, *p):
        return mF.layer_norm(x, ns, *p)

    assert torch.autograd.gradcheck(f, (x, *params), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, *params), check_fwd_over_rev=True, check_batched_grad=True)


def test_hessian_and_jacobians_like_the_builtin():
    x = torch.randn(2, 3, 5, dtype=f64)
    w, b = torch.randn(5, dtype=f64), torch.randn(5, dtype=f64)

    def loss(fn):
        return lambda x, w: fn(x, (5,), w, b).pow(3).sum()

    for transform in (hessian, lambda f, argnums: jacfwd(jacrev(f, argnums), argnums)):
        ours = transform(loss(mF.layer_norm), argnums=(0, 1))(x, w)
        theirs = transform(loss(F.layer_norm), argnums=(0, 1))(x, w)
        for a, t in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
            torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_dims", [(0, None, None), (1, None, None), (None, 0, 0), (0, 0, None), (2, None, 0)])
def test_vmap_equals_stacked_slices(in_dims):
    B, shape, ns = 3, (2, 4, 5), (5,)
    per = [shape, ns, ns]
    args = []
    for s, d in zip(per, in_dims):
        args.append(torch.randn(s, dtype=f64) if d is None
                    else torch.stack([torch.randn(s, dtype=f64) for _ in range(B)], d))

    def f(x, w, b):
        return mF.layer_norm(x, ns, w, b)

    out = vmap(f, in_dims=in_dims, out_dims=1)(*args)
    slices = [f(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims))) for i in range(B)]
    torch.testing.assert_close(out, torch.stack(slices, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_sample_shape", [(5,), (3, 5)])
def test_per_sample_gradients_of_a_vmapped_grad(per_sample_shape):
    """vmap(grad) over samples, the grads of gamma and beta per sample (LayerNormBackward's vmap rule, which sums
    each slice's rows on its own)."""
    x = torch.randn(6, *per_sample_shape, dtype=f64)
    w, b = torch.randn(5, dtype=f64), torch.randn(5, dtype=f64)

    def loss(fn):
        return lambda w, b, xi: fn(xi, (5,), w, b).pow(3).sum()

    ours = vmap(grad(loss(mF.layer_norm), argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)
    theirs = vmap(grad(loss(F.layer_norm), argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-10)


def test_opcheck():
    x = torch.randn(2, 3, 4, requires_grad=True)
    w, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    for args in ((x, [3, 4], w, b, 1e-5), (x, [4], None, None, 1e-3), (x.transpose(0, 2), [2], None, None, 1e-5)):
        torch.library.opcheck(ops.layer_norm_forward, args)
    _, mean, rstd = ops.layer_norm_forward(x.detach(), [3, 4], w.detach(), b.detach(), 1e-5)
    g = torch.randn(x.shape)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.layer_norm_backward, (g, x, [3, 4], mean, rstd, w, mask))


def test_torch_compile_fullgraph_and_compiled_autograd():
    x = torch.randn(4, 6, 8, requires_grad=True)
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)

    def f(fn):
        return lambda x, w, b: fn(x * 2.0, (8,), w, b).sin().sum()

    compiled = torch.compile(f(mF.layer_norm), fullgraph=True, backend="aot_eager")
    ours = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    theirs = torch.autograd.grad(f(F.layer_norm)(x, w, b), (x, w, b))
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t)
    loss = f(mF.layer_norm)(x, w, b)
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        ours = torch.autograd.grad(loss, (x, w, b))
    torch._dynamo.reset()
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t)


def test_autocast_keeps_the_dtype_as_the_builtin():
    w, b = torch.randn(8), torch.randn(8)
    for x in (torch.randn(2, 3, 8, dtype=torch.bfloat16), torch.randn(2, 3, 8)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = mF.layer_norm(x, (8,), w, b), F.layer_norm(x, (8,), w, b)
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape,ns", [((0, 4), (4,)), ((2, 0), (0,)), ((0, 3, 0), (3, 0))])
def test_empty_tensors(shape, ns):
    x = torch.randn(shape, dtype=f64, requires_grad=True)
    w, b = torch.randn(ns, dtype=f64, requires_grad=True), torch.randn(ns, dtype=f64, requires_grad=True)
    y, y_ref = mF.layer_norm(x, ns, w, b), F.layer_norm(x, ns, w, b)
    assert y.shape == y_ref.shape
    for g, r in zip(torch.autograd.grad(y.sum(), (x, w, b)), torch.autograd.grad(y_ref.sum(), (x, w, b))):
        torch.testing.assert_close(g, r)


def test_errors_are_torchs():
    x = torch.randn(2, 3, 4)
    cases = [
        ((x, ()), "Expected normalized_shape to be at least 1-dimensional"),
        ((x, (5,)), r"Given normalized_shape=\[5\], expected input with shape \[\*, 5\], but got input of size"),
        ((x, (3, 4, 5)), r"expected input with shape \[\*, 3, 4, 5\]"),
        ((x, (4,), torch.randn(3)), r"Expected weight to be of same shape as normalized_shape, but got weight of "
                                    r"shape \[3\] and normalized_shape = \[4\]"),
        ((x, (4,), None, torch.randn(3)), r"Expected bias to be of same shape as normalized_shape"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            F.layer_norm(*args)
        with pytest.raises(RuntimeError, match=message):
            mF.layer_norm(*args)
    with pytest.raises(RuntimeError, match="expected weight of dtype Double for input of dtype Double"):
        mF.layer_norm(x.double(), (4,), torch.randn(4))
    with pytest.raises(RuntimeError, match=r"expected save_rstd of 6 elements \(one per row\) and dtype Float"):
        ops.layer_norm_backward(torch.randn(2, 3, 4), x, [4], torch.zeros(2, 3, 1), torch.ones(2, 3, 1).double(), None,
                                [True, True, True])
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        ops.layer_norm_backward(torch.randn(2, 3, 5), x, [4], torch.zeros(2, 3, 1), torch.ones(2, 3, 1), None,
                                [True, True, True])


@given(lead=st.lists(st.integers(0, 3), max_size=2), trail=st.lists(st.integers(1, 9), min_size=1, max_size=2),
       seed=st.integers(0, 2**16))
def test_property_matches_the_builtin(lead, trail, seed):
    torch.manual_seed(seed)
    x = torch.randn(*lead, *trail, dtype=f64, requires_grad=True)
    w, b = torch.randn(trail, dtype=f64, requires_grad=True), torch.randn(trail, dtype=f64, requires_grad=True)
    grad_output = torch.randn(x.shape, dtype=f64)
    y, y_ref = mF.layer_norm(x, trail, w, b), F.layer_norm(x, trail, w, b)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(torch.autograd.grad(y, (x, w, b), grad_output), torch.autograd.grad(y_ref, (x, w, b), grad_output)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("args,kwargs", [((8,), {}), (((3, 8),), dict(eps=1e-3)), ((8,), dict(bias=False)),
                                         ((8,), dict(elementwise_affine=False))])
def test_module_matches_the_builtin(args, kwargs):
    torch.manual_seed(0)
    builtin, ours = nn.LayerNorm(*args, **kwargs), mnn.LayerNorm(*args, **kwargs)
    assert repr(ours) == repr(builtin) and isinstance(ours, nn.LayerNorm)
    assert ours.state_dict().keys() == builtin.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), builtin.state_dict().values()):
        assert torch.equal(a, b)  # torch's init: ones and zeros
    with torch.no_grad():
        for p in builtin.parameters():
            p.normal_()
    ours.load_state_dict(builtin.state_dict(), strict=True)
    x = torch.randn(2, 3, 8)
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(leaf) for m, leaf in zip((builtin, ours), leaves)]
    torch.testing.assert_close(outs[1], outs[0])
    for out in outs:
        out.pow(2).sum().backward()
    torch.testing.assert_close(leaves[1].grad, leaves[0].grad)
    for p, q in zip(ours.parameters(), builtin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d (convnext), spelled as torchvision spells it: a LayerNorm subclass over the channel
    dim of an NCHW tensor, through F.layer_norm on the NHWC permutation."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def test_convert_enable_and_no_builtin_backward_left():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8), nn.GELU(), nn.Flatten(), nn.LayerNorm(8 * 4 * 4),
                          nn.Linear(8 * 4 * 4, 3))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = manual_ops.convert(model)
    assert type(converted[4]) is mnn.LayerNorm and converted[4].weight is model[4].weight
    assert type(converted[1]) is LayerNorm2d  # a subclass: convert leaves it, enable() routes its F.layer_norm
    with manual_ops.enable():
        out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert type(manual_ops.revert(converted)[4]) is nn.LayerNorm


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_one_value_per_row_has_an_exactly_zero_input_gradient(dtype):
    """y = beta whatever x is: the input gradient is 0 exactly, not rounding noise times rstd = 1/sqrt(eps)."""
    x = torch.randn(7, 1, dtype=dtype, requires_grad=True)
    w, b = torch.randn(1, dtype=dtype, requires_grad=True), torch.randn(1, dtype=dtype)
    (gx, gw) = torch.autograd.grad(mF.layer_norm(x, (1,), w, b), (x, w), torch.randn(7, 1, dtype=dtype))
    assert torch.equal(gx, torch.zeros_like(x)) and torch.equal(gw, torch.zeros_like(w))


def _torchvision_layer_norm2d():
    """torchvision's LayerNorm2d: the real class where torchvision imports, else the same code under its module
    name (convert recognises the class by module and name, never importing torchvision)."""
    try:
        from torchvision.models.convnext import LayerNorm2d as real
        return real
    except Exception:  # not installed, or a build for another torch (CI's torch 2.13 has none)
        return type("LayerNorm2d", (LayerNorm2d,), {"__module__": "torchvision.models.convnext"})


def test_convert_takes_torchvisions_layer_norm2d_and_revert_gives_it_back():
    tv_cls = _torchvision_layer_norm2d()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), tv_cls(8, eps=1e-6), nn.GELU())
    with torch.no_grad():
        model[1].weight.normal_(), model[1].bias.normal_()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = manual_ops.convert(model)
    ours = converted[1]
    assert type(ours) is not tv_cls and isinstance(ours, tv_cls) and repr(ours) == repr(tv_cls(8, eps=1e-6))
    assert ours.weight is model[1].weight
    out = converted(x)
    torch.testing.assert_close(out, expected)
    assert not manual_ops.builtin_backward_nodes(out)
    assert "1" in manual_ops.converted_modules(converted)
    reverted = manual_ops.revert(converted)
    assert type(reverted[1]) is tv_cls
    reverted.load_state_dict(state, strict=True)


def test_a_vit_encoder_block_leaves_only_the_attention_builtin():
    """A ViT-B-style pre-norm encoder block (torch's TransformerEncoderLayer, GELU, dropout) after a patch-embedding
    conv, converted and run inside enable(): every backward node but the attention's is ours. What is left is
    F.multi_head_attention_forward's body, which torch hands to a function mode as one call (so its linears are not
    routed either): its in/out projections (addmm, mm), the two batched products and the softmax."""
    from collections import Counter
    torch.manual_seed(0)
    embed = manual_ops.convert(nn.Sequential(nn.Conv2d(3, 64, 4, stride=4), nn.Flatten(2)))
    block = manual_ops.convert(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, activation="gelu",
                                                          batch_first=True, norm_first=True))
    assert {type(m) for m in block.modules()} >= {mnn.LayerNorm, mnn.Linear, mnn.Dropout}
    with manual_ops.enable():
        out = block(embed(torch.randn(2, 3, 16, 16)).transpose(1, 2))
    assert manual_ops.builtin_backward_nodes(out) == Counter(
        {"BmmBackward0": 2, "SafeSoftmaxBackward0": 1, "AddmmBackward0": 1, "MmBackward0": 1})
