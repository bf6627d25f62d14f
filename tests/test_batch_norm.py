import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn

f64 = torch.float64
ops = torch.ops.manual_ops


def _input(shape, layout, dtype=torch.float32, scale=1.0, shift=0.0):
    """A (N, C, *) input in one of the layouts the kernels handle differently."""
    if layout == "sliced":  # non-contiguous: every other column of a wider tensor
        wide = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype) * scale + shift
        return wide[..., ::2]
    x = torch.randn(shape, dtype=dtype) * scale + shift
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _params(C, dtype, affine):
    if not affine:
        return None, None
    return (torch.rand(C, dtype=dtype) + 0.5).requires_grad_(), torch.randn(C, dtype=dtype).requires_grad_()


def _stats(C, dtype):
    return torch.randn(C, dtype=dtype) * 0.1, torch.rand(C, dtype=dtype) + 0.5


LAYOUTS = [((3, 4, 3, 2), "contiguous"), ((3, 4, 3, 2), "channels_last"), ((3, 4, 3, 4), "sliced"),
           ((5, 3), "contiguous"), ((2, 3, 5), "contiguous"), ((2, 3, 2, 2, 2), "contiguous")]


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("shape,layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(shape, layout, training, affine):
    x = _input(shape, layout, f64).requires_grad_()
    w, b = _params(shape[1], f64, affine)
    rm, rv = _stats(shape[1], f64)
    fn = lambda x, w, b: mF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def _clamped_reference(x, w, b, rm, rv, training, eps, k, scale):
    """y = gamma * xhat + max(beta, -k*s) built from differentiable torch ops (autograd's gradient)."""
    dims = [0] + list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    if training:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = rm, rv
    sigma = (var + eps).sqrt()
    s = sigma if scale == "sigma" else w.abs()
    shift = torch.maximum(b, -k * s)
    return w.view(view) * (x - mean.view(view)) / sigma.view(view) + shift.view(view)


# beta per channel: channels 0 and 2 far below -k*s (floor active), 1 and 3 far above.
CLAMP_BETA = [-6.0, 0.5, -5.0, 2.0]


@pytest.mark.parametrize("scale", ["sigma", "gamma"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_clamped_gradcheck_and_reference(scale, training, layout):
    x = _input((3, 4, 3, 3), layout, f64, scale=1.5, shift=0.3).requires_grad_()
    w = torch.tensor([1.2, -0.7, 0.8, 1.5], dtype=f64, requires_grad=True)
    b = torch.tensor(CLAMP_BETA, dtype=f64, requires_grad=True)
    rm, rv = _stats(4, f64)
    k = 1.3
    fn = lambda x, w, b: mF.clamped_batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, k, scale)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    # Same values and grads as autograd through max(beta, -k*s); the floor is active on 0 and 2.
    grad = torch.randn(x.shape, dtype=f64)
    ours = torch.autograd.grad(fn(x, w, b), (x, w, b), grad)
    y_ref = _clamped_reference(x, w, b, rm, rv, training, 1e-5, k, scale)
    ref = torch.autograd.grad(y_ref, (x, w, b), grad)
    torch.testing.assert_close(fn(x, w, b), y_ref)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)
    assert ours[2][0] == 0 and ours[2][2] == 0 and ours[2][1] != 0 and ours[2][3] != 0
    # Inactive everywhere (k = 0 and beta >= 0): exactly plain batch norm.
    bp = b.detach().abs()
    plain = mF.batch_norm(x, rm.clone(), rv.clone(), w, bp, training)
    torch.testing.assert_close(mF.clamped_batch_norm(x, rm.clone(), rv.clone(), w, bp, training, beta_floor=0.0,
                                                     floor_scale=scale), plain)


# --------------------------------------------------------------------------- parity


def _run(fn, x, w, b, grad):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_() if w is not None else None
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    y.backward(grad)
    return y, x.grad, (w.grad if w is not None else None), (b.grad if b is not None else None)


# float32, values O(1), reductions over M <= 2*9*9 = 162 values per channel: both sides
# accumulate in different orders (we in float lanes flushed to double, torch in float), so
# outputs differ by a few ulps and the grads (sums of M products) by ~sqrt(M) ulps of the
# partial sums, i.e. ~1e-6. atol=rtol=1e-4 has a wide margin yet catches any missing term.
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape,layout", LAYOUTS + [((2, 6, 9, 9), "channels_last"), ((2, 6, 9, 9), "contiguous")],
                         ids=str)
@pytest.mark.parametrize("training,with_stats", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("affine", [True, False])
def test_functional_parity(shape, layout, training, with_stats, affine):
    x = _input(shape, layout, scale=2.0, shift=1.0)
    w, b = _params(shape[1], torch.float32, affine)
    stats = [_stats(shape[1], torch.float32) if with_stats else (None, None) for _ in range(2)]
    stats[1] = tuple(t.clone() if t is not None else None for t in stats[0])
    grad = torch.randn_like(x)
    ours = _run(lambda x, w, b: mF.batch_norm(x, *stats[0], w, b, training, 0.3, 1e-4), x, w, b, grad)
    ref = _run(lambda x, w, b: F.batch_norm(x, *stats[1], w, b, training, 0.3, 1e-4), x, w, b, grad)
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref):
        if r is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, r, **TOL, msg=lambda m: f"{name}: {m}")
    assert ours[0].stride() == ref[0].stride() and ours[1].stride() == ref[1].stride()
    for a, r in zip(stats[0], stats[1]):
        if r is not None:
            torch.testing.assert_close(a, r, **TOL)


def _module_pair(cls, num_features, **kw):
    ref = nn.BatchNorm2d(num_features, **kw)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.uniform_(0.5, 1.5)
        if ref.bias is not None:
            ref.bias.normal_()
    ours = cls(num_features, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


MODULE_GRID = list(itertools.product([0.1, None], [True, False], [True, False],
                                     [torch.contiguous_format, torch.channels_last]))


@pytest.mark.parametrize("momentum,affine,track,memory_format", MODULE_GRID, ids=str)
def test_module_parity_over_steps(momentum, affine, track, memory_format):
    ours, ref = _module_pair(mnn.BatchNorm2d, 5, momentum=momentum, affine=affine, track_running_stats=track)
    for step in range(4):  # three training steps, then eval
        train = step < 3
        ours.train(train), ref.train(train)
        x = (torch.randn(4, 5, 6, 7) * (step + 1) + step).to(memory_format=memory_format)
        grad = torch.randn_like(x)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        yo.backward(grad), yr.backward(grad)
        torch.testing.assert_close(yo, yr, **TOL)
        torch.testing.assert_close(xo.grad, xr.grad, **TOL)
        for (name, po), pr in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(po.grad, pr.grad, **TOL, msg=lambda m: f"{name}: {m}")
        for (name, bo), br in zip(ours.named_buffers(), ref.buffers()):
            torch.testing.assert_close(bo, br, **TOL, msg=lambda m: f"{name}: {m}")
    assert (ours.num_batches_tracked is None) == (not track)
    if track:
        assert ours.num_batches_tracked.item() == 3


def test_eval_without_running_stats_uses_batch_stats():
    ours, ref = _module_pair(mnn.BatchNorm2d, 3, track_running_stats=False)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_module_drop_in():
    ours, ref = _module_pair(mnn.BatchNorm2d, 7, eps=1e-3, momentum=None, bias=False)
    assert isinstance(ours, nn.BatchNorm2d)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "running_mean", "running_var",
                                                                 "num_batches_tracked"]
    nn.BatchNorm2d(7, eps=1e-3, momentum=None, bias=False).load_state_dict(ours.state_dict(), strict=True)
    mnn.BatchNorm2d(7, bias=False).load_state_dict(ref.state_dict(), strict=True)
    clamped = mnn.ClampedBatchNorm2d(7, 0.5, floor_scale="gamma")
    assert repr(clamped) == ("ClampedBatchNorm2d(7, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                             "track_running_stats=True, beta_floor=0.5, floor_scale='gamma')")
    assert list(clamped.state_dict()) == list(nn.BatchNorm2d(7).state_dict())
    nn.BatchNorm2d(7).load_state_dict(clamped.state_dict(), strict=True)
    clamped.load_state_dict(nn.BatchNorm2d(7).state_dict(), strict=True)


def test_empty_batch_leaves_running_stats():
    rm, rv = torch.zeros(3), torch.ones(3)
    y = mF.batch_norm(torch.randn(0, 3, 2), rm, rv, training=True)
    assert y.shape == (0, 3, 2) and rm.eq(0).all() and rv.eq(1).all()


def test_nan_propagates():
    x = torch.randn(3, 2, 4, 4)
    x[1, 0, 2, 2] = float("nan")
    for memory_format in (torch.contiguous_format, torch.channels_last):
        rm, rv = torch.zeros(2), torch.ones(2)
        xi = x.to(memory_format=memory_format).detach().requires_grad_()
        y = mF.batch_norm(xi, rm, rv, training=True)
        y.sum().backward()
        assert y[:, 0].isnan().all() and not y[:, 1].isnan().any()
        assert rm[0].isnan() and rv[0].isnan() and not rm[1].isnan()
        assert xi.grad[:, 0].isnan().all() and not xi.grad[:, 1].isnan().any()


def test_large_mean_is_stable():
    # The one-pass statistics are shifted by the channel's first value: unshifted float sums
    # of squares would lose every digit of the variance here (sigma = 1e-2 at mean 1e4) and
    # give errors of O(1) or NaN. What is left is the saved mean rounded to float, off by up to
    # half an ulp of 1e4 (4.9e-4 = 0.049 sigma), hence atol=0.06 (torch's float kernel: ~0.025).
    x = (torch.randn(8, 3, 16, 16, dtype=f64) * 1e-2 + 1e4).float()
    ref = F.batch_norm(x.double(), None, None, training=True).float()
    torch.testing.assert_close(mF.batch_norm(x, None, None, training=True), ref, atol=0.06, rtol=0)


# --------------------------------------------------------------------------- opcheck, compile, property


def _forward_samples():
    C = 4
    x = torch.randn(3, C, 5, 4, requires_grad=True)
    w, b = torch.randn(C, requires_grad=True), torch.randn(C, requires_grad=True)
    xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_()

    def stats():
        return torch.zeros(C), torch.ones(C), torch.tensor(2)

    return [
        (x, w, b, *stats(), True, 0.1, 1e-5, None, "sigma"),
        (x, w, b, *stats(), True, None, 1e-5, 1.0, "sigma"),
        (xcl, w, b, *stats(), True, 0.2, 1e-5, 0.5, "gamma"),
        (x, None, None, None, None, None, True, 0.1, 1e-5, None, "sigma"),
        (xcl, w, b, *stats()[:2], None, False, 0.1, 1e-5, 1.0, "sigma"),
        (torch.randn(6, C, requires_grad=True), w, b, *stats(), True, 0.1, 1e-5, None, "sigma"),
    ]


# batch_norm_forward mutates the running stats, and torch.library.register_autograd refuses
# mutating ops, so its autograd is BatchNormFunction alone; opcheck's registration test warns.
@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")
@pytest.mark.parametrize("sample", range(6))
def test_opcheck(sample):
    args = _forward_samples()[sample]
    torch.library.opcheck(ops.batch_norm_forward.default, args)
    y, mean, invstd = ops.batch_norm_forward(*args)
    x, w, b, *_ = args
    training, beta_floor, scale = args[6], args[9], args[10]
    detached = [t.detach() if t is not None else None for t in (x, w, b)]
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        if w is None:
            mask = [mask[0], False, False]
        torch.library.opcheck(ops.batch_norm_backward.default,
                              (torch.randn_like(y), *detached, mean, invstd, training, beta_floor, scale, mask))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = mnn.BatchNorm2d(3)
        self.b = mnn.ClampedBatchNorm2d(3, 0.5, momentum=None)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    eager_net = _Net()
    compiled_net = copy.deepcopy(eager_net)
    x = torch.randn(4, 3, 5, 5)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = eager_net(xe)
    eager_grads = torch.autograd.grad(eager.sum(), [xe, *eager_net.parameters()])
    compiled = torch.compile(compiled_net, fullgraph=True, backend="aot_eager")(xc)
    compiled_grads = torch.autograd.grad(compiled.sum(), [xc, *compiled_net.parameters()])
    torch.testing.assert_close(compiled, eager)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)
    for bc, be in zip(compiled_net.buffers(), eager_net.buffers()):  # running stats and counters mutated alike
        torch.testing.assert_close(bc, be)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       training=st.booleans(), affine=st.booleans(), channels_last=st.booleans(),
       momentum=st.floats(0.0, 1.0), eps=st.sampled_from([1e-5, 1e-3, 0.1]), seed=st.integers(0, 2**16))
def test_property_matches_torch(n, c, h, w, training, affine, channels_last, momentum, eps, seed):
    if training and n * h * w == 1:
        return
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=f64) * 3 - 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt, bs = _params(c, f64, affine)
    rm1, rv1 = _stats(c, f64)
    rm2, rv2 = rm1.clone(), rv1.clone()
    grad = torch.randn(x.shape, dtype=f64)
    ours = _run(lambda x, wt, bs: mF.batch_norm(x, rm1, rv1, wt, bs, training, momentum, eps), x, wt, bs, grad)
    ref = _run(lambda x, wt, bs: F.batch_norm(x, rm2, rv2, wt, bs, training, momentum, eps), x, wt, bs, grad)
    for a, r in zip((*ours, rm1, rv1), (*ref, rm2, rv2)):
        if r is not None:
            torch.testing.assert_close(a, r)  # float64: default tolerances (1e-7 rtol)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 40), h=st.integers(1, 20), w=st.integers(1, 20),
       training=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_property_float32_matches_torch(n, c, h, w, training, channels_last, seed):
    """float32, the dtype with vectorised kernels: channel counts and rows (L = h * w) long enough for full
    vectors, pairs of vectors and remainders, and for more than one 256-value chunk."""
    if training and n * h * w == 1:
        return
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w) * 3 - 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt, bs = _params(c, torch.float32, True)
    rm1, rv1 = _stats(c, torch.float32)
    rm2, rv2 = rm1.clone(), rv1.clone()
    grad = torch.randn(x.shape)
    ours = _run(lambda x, wt, bs: mF.batch_norm(x, rm1, rv1, wt, bs, training), x, wt, bs, grad)
    ref = _run(lambda x, wt, bs: F.batch_norm(x, rm2, rv2, wt, bs, training), x, wt, bs, grad)
    for a, r in zip((*ours, rm1, rv1), (*ref, rm2, rv2)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- errors and mutation safety


def _tracking_module():
    m = mnn.BatchNorm2d(3)
    m(torch.randn(2, 3, 4, 4))
    return m


@pytest.mark.parametrize("x,error,match", [
    (torch.randn(2, 3, 4), ValueError, r"^expected 4D input \(got 3D input\)$"),
    (torch.randn(1, 3, 1, 1), ValueError,
     r"^Expected more than 1 value per channel when training, got input size torch\.Size\(\[1, 3, 1, 1\]\)$"),
    (torch.randn(2, 4, 3, 3), RuntimeError, r"running_mean should contain 4 elements not 3.*size \[2, 4, 3, 3\]"),
    (torch.randn(2, 3, 3, 3, dtype=f64), RuntimeError, r"expected running_mean of dtype Double for input of dtype Double"),
    (torch.randint(0, 5, (2, 3, 3, 3)), RuntimeError, r"expected input to be float32, float64, bfloat16 or float16, but got Long"),
], ids=["ndim", "one-value", "channels", "dtype", "int"])
def test_module_errors_mutate_nothing(x, error, match):
    m = _tracking_module()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(error, match=match):
        m(x)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(running_mean=torch.zeros(4)), RuntimeError, r"running_mean should contain 3 elements not 4.*size \[4\]"),
    (dict(running_var=torch.ones(2)), RuntimeError, r"running_var should contain 3 elements not 2"),
    (dict(weight=torch.ones(4)), RuntimeError, r"weight should contain 3 elements not 4.*input of size \[2, 3, 4, 4\]"),
    (dict(bias=torch.ones(3, 1)), RuntimeError, r"bias should contain 3 elements not 3.*bias of size \[3, 1\]"),
    (dict(training=False, running_mean=None, running_var=None), RuntimeError,
     r"^running_mean must be defined in evaluation mode"),
    (dict(eps=0.0), ValueError, r"^batch_norm eps must be positive during training, but got 0$"),
    (dict(eps=-1.0, training=False), ValueError, r"^batch_norm eps must be non-negative, but got -1$"),
    (dict(momentum=None), TypeError, r"momentum.*must be float, not NoneType"),
], ids=["running_mean", "running_var", "weight", "bias", "eval-no-stats", "eps-train", "eps-eval", "momentum"])
def test_functional_errors_mutate_nothing(kwargs, error, match):
    args = dict(input=torch.randn(2, 3, 4, 4), running_mean=torch.zeros(3), running_var=torch.ones(3),
                training=True)
    args.update(kwargs)
    saved = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=match):
        mF.batch_norm(**args)
    for k, v in saved.items():
        assert torch.equal(args[k], v), k


def test_functional_rank_error():
    with pytest.raises(RuntimeError, match=r"expected input of size \(N, C, \*\).*got input of size \[3\]"):
        mF.batch_norm(torch.randn(3), None, None, training=True)


def test_clamped_argument_errors():
    with pytest.raises(ValueError, match=r"beta_floor must be a non-negative number, but got -0.5"):
        mnn.ClampedBatchNorm2d(3, -0.5)
    with pytest.raises(ValueError, match=r"floor_scale must be 'sigma' or 'gamma', but got 'mu'"):
        mnn.ClampedBatchNorm2d(3, floor_scale="mu")
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(0)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"beta_floor must be non-negative, but got -1"):
        ops.batch_norm_forward(x, None, None, rm, rv, nbt, True, 0.1, 1e-5, -1.0, "sigma")
    with pytest.raises(ValueError, match=r"floor_scale must be 'sigma' or 'gamma', but got 'mu'"):
        mF.clamped_batch_norm(x, rm, rv, training=True, floor_scale="mu")
    assert rm.eq(0).all() and rv.eq(1).all() and nbt.item() == 0


# --------------------------------------------------------------------------- clamped module and projection


@pytest.mark.parametrize("scale", ["sigma", "gamma"])
def test_clamped_module_eval_uses_running_sigma(scale):
    m = mnn.ClampedBatchNorm2d(4, 1.3, floor_scale=scale)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.2, -0.7, 0.8, 1.5]))
        m.bias.copy_(torch.tensor(CLAMP_BETA))
        m.running_var.copy_(torch.tensor([0.5, 2.0, 4.0, 1.0]))
        m.running_mean.normal_()
    m.eval()
    x = torch.randn(2, 4, 3, 3)
    ref = _clamped_reference(x, m.weight, m.bias, m.running_mean, m.running_var, False, m.eps, 1.3, scale)
    torch.testing.assert_close(m(x), ref, **TOL)


@pytest.mark.parametrize("scale", ["sigma", "gamma"])
def test_projection_hook_with_real_optimizer(scale):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), mnn.ClampedBatchNorm2d(4, 0.5, floor_scale=scale), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    bn = model[1]
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    handle = manual_ops.register_clamp_beta_hook(opt, model)

    def floor():
        s = (bn.running_var + bn.eps).sqrt() if scale == "sigma" else bn.weight.abs()
        return -0.5 * s

    x, target = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    for _ in range(3):
        with torch.no_grad():
            bn.bias.fill_(-10.0)  # far below the floor: the step alone cannot bring it back
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
        torch.testing.assert_close(bn.bias.detach(), floor().detach())  # projected exactly onto the floor
    handle.remove()
    with torch.no_grad():
        bn.bias.fill_(-10.0)
    opt.zero_grad()
    F.cross_entropy(model(x), target).backward()
    opt.step()
    assert (bn.bias < floor()).all()  # hook removed: no projection

    with torch.no_grad():  # above the floor: the projection changes nothing
        bn.bias.fill_(3.0)
    assert manual_ops.clamp_beta_(model) is model
    assert bn.bias.eq(3.0).all()
