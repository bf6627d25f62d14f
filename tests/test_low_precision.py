"""bfloat16 and float16: accuracy against float64 (within 2x the built-in's own error), dtypes of outputs, grads
and saved tensors as the built-in's, batch_norm's mixed dtypes, opcheck, autocast and GradScaler."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manual_ops
from manual_ops import functional as mF
from manual_ops import models

LOW = [torch.bfloat16, torch.float16]
ops = torch.ops.manual_ops

# Errors are max |value - reference| / max |reference| over each output and gradient. Ours must be within
# 2x the built-in's error in the same dtype, plus this floor (relative to max |reference|) for the cases
# where the built-in's error is exactly zero (relu, max pooling): 2^-16, a 256th of a bfloat16 ulp
# and a 64th of a float16 ulp at the largest value.
FLOOR = 2.0**-16


def _relative_error(value, reference):
    return ((value.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def _run(fn, inputs, dtypes, grad):
    """fn(*leaves) for the inputs cast to dtypes (floating inputs requiring grad become such leaves),
    backpropagating `grad` (cast to the output's dtype): [output, grads...]."""
    leaves = [x.detach().to(d).requires_grad_(x.requires_grad) if x.is_floating_point() else x
              for x, d in zip(inputs, dtypes)]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out] + [leaf.grad for leaf in leaves if leaf.requires_grad]


def check_accuracy(ours, builtin, inputs, dtypes):
    """Ours and the built-in in `dtypes` against the built-in in float64 on the same (rounded) values:
    the same dtypes, and our error within 2x the built-in's. Returns (our errors, built-in errors)."""
    rounded = [x.detach().to(d).double().requires_grad_(x.requires_grad) if x.is_floating_point() else x
               for x, d in zip(inputs, dtypes)]
    reference_out = builtin(*rounded)
    low = next(d for d in dtypes if d in LOW)
    grad = torch.randn_like(reference_out).to(low).double()
    reference = _run(builtin, rounded, [torch.float64] * len(inputs), grad)
    got, theirs = _run(ours, inputs, dtypes, grad), _run(builtin, inputs, dtypes, grad)
    assert [t.dtype for t in got] == [t.dtype for t in theirs]
    ours_err = [_relative_error(a, r) for a, r in zip(got, reference)]
    builtin_err = [_relative_error(b, r) for b, r in zip(theirs, reference)]
    for i, (e, b) in enumerate(zip(ours_err, builtin_err)):
        assert e <= 2 * b + FLOOR, f"{'output' if i == 0 else f'grad {i}'}: ours {e:.3g}, built-in {b:.3g}"
    return ours_err, builtin_err


def _x(*shape, channels_last=False, offset=0.0):
    x = (torch.randn(*shape, dtype=torch.float64) + offset)
    return (x.to(memory_format=torch.channels_last) if channels_last else x).requires_grad_()


# (stride, padding, dilation, groups, bias, kernel, channels_last): a subset of test_conv2d's grid.
CONV_GRID = [(1, 1, 1, 1, True, 3, False), (2, 0, 1, 1, False, 3, False), (1, (1, 2), 2, 1, True, 3, False),
             (2, 1, 1, 2, True, 3, True), (1, 0, 1, 1, False, 1, True), (3, 2, 1, 4, True, 3, False)]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("stride,padding,dilation,groups,bias,k,cl", CONV_GRID)
def test_conv2d(dtype, stride, padding, dilation, groups, bias, k, cl):
    x = _x(2, 8, 9, 9, channels_last=cl)
    w = (torch.randn(8, 8 // groups, k, k, dtype=torch.float64) / 3).requires_grad_()
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    inputs = [x, w, b] if bias else [x, w]

    def conv(f):
        return lambda *a: f(*a, stride=stride, padding=padding, dilation=dilation, groups=groups)
    check_accuracy(conv(mF.conv2d), conv(F.conv2d), inputs, [dtype] * len(inputs))


# Wide enough (16+ input channels per group) that, at stride 1 on oneDNN's path, dX is the full correlation
# itself (conv2d.cpp: grad_input_by_correlation); padding above (k - 1) * dilation falls back to col2im.
WIDE_GRID = [(1, 1, 1, 3, False), (0, 1, 1, 3, True), ((2, 0), 1, 1, 3, False), (2, 2, 1, 3, True),
             (3, 1, 2, 3, False), ("same", 1, 1, 4, True), ("same", 2, 2, 4, False), (2, 1, 1, 3, False),
             (1, 1, 1, 5, True), (0, 1, 1, 1, False)]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("padding,dilation,groups,k,cl", WIDE_GRID)
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_conv2d_wide(dtype, padding, dilation, groups, k, cl):
    x = _x(2, 32, 10, 9, channels_last=cl)
    w = (torch.randn(24, 32 // groups, k, k, dtype=torch.float64) / 8).requires_grad_()

    def conv(f):
        return lambda *a: f(*a, padding=padding, dilation=dilation, groups=groups)
    check_accuracy(conv(mF.conv2d), conv(F.conv2d), [x, w], [dtype, dtype])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("stride,groups,cl", [(2, 1, False), (2, 2, True), (3, 1, True)])
def test_conv2d_strided_pointwise(dtype, stride, groups, cl):
    """A 1x1 strided conv over evenly spaced rows (H = 12): strided views instead of im2col, dX rounded once
    straight into the input's dtype."""
    x = _x(2, 8, 12, 11, channels_last=cl)
    w = (torch.randn(8, 8 // groups, 1, 1, dtype=torch.float64) / 3).requires_grad_()
    check_accuracy(lambda *a: mF.conv2d(*a, stride=stride, groups=groups),
                   lambda *a: F.conv2d(*a, stride=stride, groups=groups), [x, w], [dtype, dtype])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("k,groups", [(3, 1), (1, 1), (3, 2)])
def test_conv2d_small_image_many_channels(dtype, k, groups):
    """grad_weight by one GEMM over the batch, rounded straight into the dtype (conv2d.cpp: its column
    matrix is no larger than a float32 sum of grad_weight would be)."""
    x = _x(3, 40, 3, 3)
    w = (torch.randn(48, 40 // groups, k, k, dtype=torch.float64) / 6).requires_grad_()
    conv = lambda f: lambda *a: f(*a, padding=k // 2, groups=groups)  # noqa: E731
    check_accuracy(conv(mF.conv2d), conv(F.conv2d), [x, w], [dtype, dtype])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n,hw", [(4, 12), (4, 16), (4, 17), (3, 17)])
def test_conv2d_long_sums(dtype, n, hw):
    """Sums longer than one of the GEMMs' depth blocks (256 in ours, 1024 around oneDNN's micro-kernel):
    grad_input over 300 output channels, grad_weight over n * hw * hw pixels (rounded from one GEMM at hw=12,
    summed in float32 at hw=16; 867 = 3 * 17 * 17 is odd, which oneDNN's VNNI pairs pad with a zero)."""
    x = _x(n, 16, hw, hw)
    w = (torch.randn(300, 16, 1, 1, dtype=torch.float64) / 4).requires_grad_()
    check_accuracy(mF.conv2d, F.conv2d, [x, w], [dtype, dtype])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape,bias", [((5, 16), True), ((2, 3, 16), False), ((16,), True), ((300, 16), True)])
def test_linear(dtype, shape, bias):
    inputs = [_x(*shape), _x(7, 16), _x(7)][:3 if bias else 2]
    check_accuracy(mF.linear, F.linear, inputs, [dtype] * len(inputs))


def _bn(f, training):
    def run(x, w, b):  # fresh running stats of the parameters' dtype
        C = x.shape[1]
        var = torch.rand(C, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
        return f(x, torch.zeros(C, dtype=w.dtype), var.to(w.dtype), w, b, training=training)
    return run


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mixed", [True, False], ids=["float32-params", "low-params"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (4, 27, 3, 3), (2, 3, 20, 20)], ids=str)
def test_batch_norm(dtype, training, mixed, cl, shape):
    """Shapes with rows (NCHW: H*W values, NHWC: C) of under one vector, of vectors and remainders, and of
    more than one 256-value chunk."""
    x = _x(*shape, channels_last=cl, offset=3.0)  # a mean far from 0 tests the shifted sums
    w, b = (torch.rand(shape[1], dtype=torch.float64) + 0.5).requires_grad_(), _x(shape[1])
    params = torch.float32 if mixed else dtype
    check_accuracy(_bn(mF.batch_norm, training), _bn(F.batch_norm, training),
                   [x, w, b], [dtype, params, params])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_norm_rounds_like_torch(dtype, cl):
    """Rounding to bfloat16/float16 exactly as torch's: in eval with running mean 0 and bias 0 the output is
    the float32 product x * scale (scale = weight / sqrt(running_var + eps), in float32) rounded once, which
    torch computes the same way. Scales 1 + 2^-8 and 1 - 2^-9 put products of powers of two exactly halfway
    between two bfloat16 values (ties to even); inf, -inf, NaN and values that round to inf are included."""
    C = 5
    x = torch.randn(3, C, 7, 9) * 100
    x.view(-1)[:60] = torch.ldexp(torch.ones(60), torch.arange(-30, 30))
    x.view(-1)[60:64] = torch.tensor([float("inf"), -float("inf"), float("nan"), 3.3e38 if dtype == torch.bfloat16 else 65519.0])
    x = x.to(dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.tensor([1 + 2.0**-8, 1 - 2.0**-9, 3.0, 0.7, 1.0])
    running_var, eps = torch.tensor([1.0, 1.0, 1.0, 2.5, 0.1]), 0.0
    y = mF.batch_norm(x, torch.zeros(C), running_var, weight, torch.zeros(C), False, 0.1, eps)
    scale = weight * (1 / torch.sqrt(running_var + eps))
    expected = (x.float() * scale.view(1, C, 1, 1)).to(dtype)
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y.nan_to_num(), expected.nan_to_num())


POOLS = [
    ("max 3x3 s2 p1", lambda f: lambda x: f.max_pool2d(x, 3, 2, 1)),
    ("max 2x2 ceil", lambda f: lambda x: f.max_pool2d(x, 2, 2, ceil_mode=True)),
    ("avg 3x3 s2 p1 excl", lambda f: lambda x: f.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("avg 3x3 s1 p1", lambda f: lambda x: f.avg_pool2d(x, 3, 1, 1)),
    ("avg 2x2 ceil div3", lambda f: lambda x: f.avg_pool2d(x, 2, 2, ceil_mode=True, divisor_override=3)),
    ("adaptive 1", lambda f: lambda x: f.adaptive_avg_pool2d(x, 1)),
    ("adaptive 3x4", lambda f: lambda x: f.adaptive_avg_pool2d(x, (3, 4))),
]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name,make", POOLS, ids=[p[0] for p in POOLS])
def test_pooling(dtype, cl, name, make):
    check_accuracy(make(mF), make(F), [_x(2, 8, 7, 9, channels_last=cl)], [dtype])


@pytest.mark.parametrize("dtype", LOW)
def test_relu(dtype):
    check_accuracy(mF.relu, F.relu, [_x(4, 5, 6)], [dtype])
    check_accuracy(lambda x: mF.relu(x * 1, inplace=True), lambda x: F.relu(x * 1, inplace=True), [_x(4, 5, 6)],
                   [dtype])


CE_GRID = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.1),
           dict(ignore_index=3), dict(weight=True), dict(probabilities=True)]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("options", CE_GRID, ids=lambda o: ",".join(o) or "mean")
def test_cross_entropy(dtype, options):
    options = dict(options)
    logits = _x(16, 10) * 3
    logits = logits.detach().requires_grad_()
    inputs, dtypes = [logits], [dtype]
    if options.pop("probabilities", False):
        inputs.append(torch.softmax(torch.randn(16, 10, dtype=torch.float64), 1))
        dtypes.append(dtype)
    else:
        inputs.append(torch.arange(16) % 10)
        dtypes.append(None)
    if options.pop("weight", False):
        inputs.append(torch.rand(10, dtype=torch.float64) + 0.5)
        dtypes.append(dtype)

    def ce(f):
        return lambda x, t, *w: f(x, t, *w, **options)
    check_accuracy(ce(mF.cross_entropy), ce(F.cross_entropy), inputs, dtypes)


# --------------------------------------------------------------------------- batch_norm's mixed dtypes


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("params", ["float32", "low", "none", "stats-only"])
def test_batch_norm_saved_and_running_dtypes_match_torch(dtype, params):
    """save_mean/save_invstd in float32 for float32 parameters of a low-precision input, else the input's
    dtype; running stats updated in their own dtype, as torch's native_batch_norm."""
    x = (torch.randn(8, 4, 3, 3) + 2).to(dtype)
    p = {"float32": torch.float32, "low": dtype}.get(params, torch.float32)
    w = b = None if params in ("none", "stats-only") else (torch.rand(4, dtype=p), torch.randn(4, dtype=p))
    w, b = (None, None) if w is None else w
    has_stats = params != "none"
    ours_stats = (torch.zeros(4, dtype=p), torch.ones(4, dtype=p)) if has_stats else (None, None)
    theirs_stats = tuple(s.clone() if s is not None else None for s in ours_stats)
    y, mean, invstd = ops.batch_norm_forward(x, w, b, *ours_stats, None, True, 0.1, 1e-5, None, "sigma")
    ty, tmean, tinvstd = torch.ops.aten.native_batch_norm(x, w, b, *theirs_stats, True, 0.1, 1e-5)
    assert (y.dtype, mean.dtype, invstd.dtype) == (ty.dtype, tmean.dtype, tinvstd.dtype)
    torch.testing.assert_close(mean, tmean, rtol=1e-2, atol=1e-2)
    for ours, theirs in zip(ours_stats, theirs_stats):
        if ours is not None:
            assert ours.dtype == theirs.dtype
            torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)
    gy = torch.randn_like(y)
    grads = ops.batch_norm_backward(gy, x, w, b, mean, invstd, True, None, "sigma", [True, w is not None, w is not None])
    tgrads = torch.ops.aten.native_batch_norm_backward(gy, x, w, *theirs_stats, tmean, tinvstd, True, 1e-5,
                                                       [True, w is not None, w is not None])
    assert [g.dtype for g in grads if g is not None] == [g.dtype for g in tgrads if g is not None]


@pytest.mark.parametrize("bad", ["float64-weight", "low-bias-float32-weight", "float32-input-low-weight"])
def test_batch_norm_rejects_mixed_dtypes_torch_rejects_and_mutates_nothing(bad):
    x, p = torch.randn(4, 3, 2, 2, dtype=torch.bfloat16), torch.float32
    w, b = torch.rand(3, dtype=p), torch.randn(3, dtype=p)
    if bad == "float64-weight":
        w = w.double()
    elif bad == "low-bias-float32-weight":
        b = b.bfloat16()
    else:
        x, w, b = x.float(), w.bfloat16(), b.bfloat16()
    rm, rv, count = torch.zeros(3, dtype=p), torch.ones(3, dtype=p), torch.tensor(0)
    with pytest.raises(RuntimeError, match=r"batch_norm: expected (weight|bias|running_mean) of dtype \w+ for input "
                                           r"of dtype \w+ \(weight, bias and running stats have the input's dtype"):
        ops.batch_norm_forward(x, w, b, rm, rv, count, True, 0.1, 1e-5, None, "sigma")
    assert rm.eq(0).all() and rv.eq(1).all() and count.item() == 0
    with pytest.raises(RuntimeError):  # torch rejects these too
        torch.ops.aten.native_batch_norm(x, w, b, rm.clone(), rv.clone(), True, 0.1, 1e-5)


def test_clamped_batch_norm_low_precision_matches_its_float64_self():
    """No built-in twin: the clamped shift in bfloat16 (float32 params) against our own float64."""
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64) + 1
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.tensor([-5.0, 0.0, -5.0, 1.0], dtype=torch.float64)
    ref = mF.clamped_batch_norm(x.bfloat16().double(), None, None, w.float().double(), b.float().double(),
                                training=True, beta_floor=1.0)
    low = mF.clamped_batch_norm(x.bfloat16(), None, None, w.float(), b.float(), training=True, beta_floor=1.0)
    assert low.dtype == torch.bfloat16
    assert _relative_error(low, ref) <= 2.0**-8


# --------------------------------------------------------------------------- opcheck with bfloat16 samples


def _opcheck_samples():
    bf = torch.bfloat16
    x = torch.randn(2, 4, 6, 6, dtype=bf, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=bf, requires_grad=True)
    stride, padding, dilation = [1, 1], [1, 1, 1, 1], [1, 1]
    y = ops.conv2d_forward(x, w, None, stride, padding, dilation, 1)
    pool = ([3, 3], [2, 2], [1, 1])
    _, ind = ops.max_pool2d_forward(x, *pool, [1, 1], False)
    bn_w, bn_b = torch.rand(4, requires_grad=True), torch.randn(4, requires_grad=True)
    _, mean, invstd = ops.batch_norm_forward(x, bn_w, bn_b, None, None, None, True, 0.1, 1e-5, None, "sigma")
    logits, target = torch.randn(6, 5, dtype=bf, requires_grad=True), torch.tensor([0, 1, 2, 3, 4, 0])
    _, lse = ops.cross_entropy_forward(logits, target, None, "mean", -100, 0.0)
    lin_x, lin_w = torch.randn(3, 4, dtype=bf, requires_grad=True), torch.randn(2, 4, dtype=bf, requires_grad=True)
    d = lambda t: t.detach()  # noqa: E731
    return {
        "conv2d_forward": (x, w, torch.randn(5, dtype=bf, requires_grad=True), stride, padding, dilation, 1),
        "conv2d_backward": (torch.randn_like(y), d(x), d(w), stride, padding, dilation, 1, [True, True, True]),
        "batch_norm_forward": (x, bn_w, bn_b, torch.zeros(4), torch.ones(4), torch.tensor(0), True, 0.1, 1e-5,
                               None, "sigma"),
        "batch_norm_backward": (torch.randn_like(x), d(x), d(bn_w), d(bn_b), mean, invstd, True, None, "sigma",
                                [True, True, True]),
        "max_pool2d_forward": (x, *pool, [1, 1], False),
        "max_pool2d_backward": (torch.randn(ind.shape, dtype=bf), d(x), ind),
        "avg_pool2d_forward": (x, *pool, False, True, None),
        "avg_pool2d_backward": (torch.randn(ind.shape, dtype=bf), d(x), *pool, False, True, None),
        "adaptive_avg_pool2d_forward": (x, [2, 3]),
        "adaptive_avg_pool2d_backward": (torch.randn(2, 4, 2, 3, dtype=bf), d(x)),
        "linear_forward": (lin_x, lin_w, None),
        "linear_backward": (torch.randn(3, 2, dtype=bf), d(lin_x), d(lin_w), [True, True, True]),
        "relu_forward": (x,),
        "relu_backward": (torch.randn_like(x), torch.relu(d(x))),
        "cross_entropy_forward": (logits, target, None, "mean", -100, 0.0),
        "cross_entropy_backward": (torch.tensor(1.0, dtype=bf), d(logits), target, None, lse, "mean", -100, 0.0,
                                   [True, False]),
    }


@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")
@pytest.mark.parametrize("name", list(_opcheck_samples()))
def test_opcheck_bfloat16(name):
    torch.library.opcheck(getattr(ops, name).default, _opcheck_samples()[name])


# --------------------------------------------------------------------------- autocast


def test_autocast_policy_follows_the_builtin_twins():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True)
    logits, target = torch.randn(2, 10), torch.tensor([1, 2])
    for device_dtype in LOW:
        with torch.autocast("cpu", dtype=device_dtype):
            y = mF.conv2d(x, w, padding=1)
            assert y.dtype == F.conv2d(x, w, padding=1).dtype == device_dtype
            assert ops.conv2d_forward(x, w, None, [1, 1], [0] * 4, [1, 1], 1).dtype == device_dtype  # the op itself
            assert mF.linear(logits, torch.randn(3, 10)).dtype == device_dtype
            assert mF.batch_norm(y, None, None, training=True).dtype == device_dtype  # keeps its input's dtype
            assert mF.max_pool2d(y, 2).dtype == mF.relu(y).dtype == device_dtype
            assert mF.avg_pool2d(y, 2).dtype == mF.adaptive_avg_pool2d(y, 1).dtype == device_dtype
            loss = mF.cross_entropy(logits.to(device_dtype), target)
            assert loss.dtype == F.cross_entropy(logits.to(device_dtype), target).dtype == torch.float32
            assert mF.conv2d(x.double(), w.double()).dtype == torch.float64  # float64 is never cast
        y.float().sum().backward()
        assert w.grad.dtype == torch.float32
        w.grad = None


def _models(name="resnet-small", channels=1, size=8):
    torch.manual_seed(0)
    builtin = models.build(name, channels, 10, size)
    return builtin, manual_ops.convert(copy.deepcopy(builtin))


def _step(model, loss_fn, x, y, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x)
        loss = loss_fn(out, y)
    loss.backward()
    return out, loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", LOW)
def test_converted_model_under_autocast_matches_builtin(dtype):
    builtin, manual = _models()
    reference = copy.deepcopy(builtin).double()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(10, (16,))
    out_b, loss_b, grads_b = _step(builtin, F.cross_entropy, x, y, dtype)
    out_m, loss_m, grads_m = _step(manual, mF.cross_entropy, x, y, dtype)
    out_r, loss_r, grads_r = _step(reference, F.cross_entropy, x.double(), y, None)
    assert (out_m.dtype, loss_m.dtype) == (out_b.dtype, loss_b.dtype) == (dtype, torch.float32)
    assert {n: g.dtype for n, g in grads_m.items()} == {n: g.dtype for n, g in grads_b.items()}
    # Within the rounding of the dtype: as close to float64 as the built-in is (2x, plus the floor).
    for ours, theirs, ref in [(out_m, out_b, out_r), (loss_m, loss_b, loss_r)]:
        assert _relative_error(ours, ref) <= 2 * _relative_error(theirs, ref) + FLOOR
    ours_err = max(_relative_error(grads_m[n], grads_r[n]) for n in grads_r)
    builtin_err = max(_relative_error(grads_b[n], grads_r[n]) for n in grads_r)
    assert ours_err <= 2 * builtin_err + FLOOR


def test_backward_inside_autocast_region():
    _, manual = _models()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mF.cross_entropy(manual(x), y).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in manual.parameters())


def test_grad_scaler_float16_training_matches_builtin():
    """GradScaler('cpu') with float16 autocast: while the scale makes the float16 grads overflow, steps are
    skipped (nothing changes) and the scale backs off, exactly as for the built-in model; then both train."""
    builtin, manual = _models()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(10, (16,))
    scales, losses, skipped = {}, {}, {}
    for label, model, loss_fn in [("builtin", builtin, F.cross_entropy), ("manual", manual, mF.cross_entropy)]:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # float16 grads overflow at first
        history, skips = [], 0
        for _ in range(10):
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() < scale:  # an overflow: the step was skipped
                skips += 1
                assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
            history.append(loss.item())
        scales[label], losses[label], skipped[label] = scaler.get_scale(), history, skips
    assert scales["manual"] == scales["builtin"] and 0 < skipped["manual"] == skipped["builtin"] < 8
    assert losses["manual"][-1] < losses["manual"][0]
    torch.testing.assert_close(torch.tensor(losses["manual"]), torch.tensor(losses["builtin"]), rtol=2e-2, atol=2e-2)
