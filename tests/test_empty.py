"""Zero-element inputs: every op accepts those its built-in twin accepts, with the same output
shape, values and grads, and rejects those it rejects with the same error type."""
import pytest
import torch
import torch.nn.functional as F

from manual_ops import functional as mF

_ops = torch.ops.manual_ops


def _run(fn, tensors, grads):
    """fn's output and the grads of its sum w.r.t. the floating tensors (when ``grads``)."""
    leaves = [t.clone().requires_grad_(grads and t.is_floating_point()) for t in tensors]
    out = fn(*leaves)
    if not grads:
        return out, []
    wrt = [t for t in leaves if t.requires_grad]
    return out, list(torch.autograd.grad(out.sum(), wrt, allow_unused=True, materialize_grads=True))


def _bn(f, training, affine):
    def run(x, *wb):
        C = x.shape[1] if x.dim() > 1 else 0
        rm, rv = torch.zeros(C), torch.ones(C)
        return f(x, rm, rv, *(wb if affine else ()), training=training)
    return run


def _ce(**kw):
    return (lambda x, t: F.cross_entropy(x, t, **kw)), (lambda x, t: mF.cross_entropy(x, t, **kw))


CASES = {
    # conv2d: zero batch or zero channels (torch gives zero output channels then), and unbatched.
    "conv N=0": (F.conv2d, mF.conv2d, [torch.randn(0, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)]),
    "conv N=0 channels_last": (F.conv2d, mF.conv2d, [torch.randn(0, 3, 8, 8).to(memory_format=torch.channels_last),
                                                     torch.randn(4, 3, 3, 3)]),
    "conv C=0": (F.conv2d, mF.conv2d, [torch.randn(2, 0, 8, 8), torch.randn(4, 0, 3, 3), torch.randn(4)]),
    "conv N=0 C=0": (F.conv2d, mF.conv2d, [torch.randn(0, 0, 8, 8), torch.randn(4, 0, 3, 3)]),
    "conv C=0 strided": (lambda x, w: F.conv2d(x, w, stride=2, padding=1),
                         lambda x, w: mF.conv2d(x, w, stride=2, padding=1), [torch.randn(2, 0, 8, 8), torch.randn(4, 0, 3, 3)]),
    "conv C=0 unbatched": (F.conv2d, mF.conv2d, [torch.randn(0, 8, 8), torch.randn(4, 0, 3, 3)]),
    "conv H=0 padded (rejected)": (lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: mF.conv2d(x, w, padding=1),
                                   [torch.randn(2, 3, 0, 8), torch.randn(4, 3, 1, 1)]),
    "conv W=0 (rejected)": (F.conv2d, mF.conv2d, [torch.randn(2, 3, 8, 0), torch.randn(4, 3, 1, 1)]),
    "conv N=0 kernel too big (rejected)": (F.conv2d, mF.conv2d, [torch.randn(0, 3, 2, 2), torch.randn(4, 3, 3, 3)]),
    "conv Cout=0 (rejected)": (F.conv2d, mF.conv2d, [torch.randn(2, 3, 8, 8), torch.randn(0, 3, 3, 3)]),
    # linear: any zero size.
    "linear N=0": (F.linear, mF.linear, [torch.randn(0, 5), torch.randn(3, 5), torch.randn(3)]),
    "linear in=0": (F.linear, mF.linear, [torch.randn(4, 0), torch.randn(3, 0), torch.randn(3)]),
    "linear out=0": (F.linear, mF.linear, [torch.randn(4, 5), torch.randn(0, 5), torch.randn(0)]),
    "linear 3-D, middle 0": (F.linear, mF.linear, [torch.randn(2, 0, 5), torch.randn(3, 5)]),
    "linear 1-D in=0": (F.linear, mF.linear, [torch.randn(0), torch.randn(3, 0), torch.randn(3)]),
    "linear in=0 bfloat16": (F.linear, mF.linear, [torch.randn(4, 0).bfloat16(), torch.randn(3, 0).bfloat16()]),
    # relu
    "relu (0, 3)": (F.relu, mF.relu, [torch.randn(0, 3)]),
    "relu 1-D 0": (F.relu, mF.relu, [torch.randn(0)]),
    # pooling
    "max_pool N=0": (lambda x: F.max_pool2d(x, 2), lambda x: mF.max_pool2d(x, 2), [torch.randn(0, 3, 4, 4)]),
    "max_pool C=0": (lambda x: F.max_pool2d(x, 2), lambda x: mF.max_pool2d(x, 2), [torch.randn(2, 0, 4, 4)]),
    "max_pool unbatched C=0": (lambda x: F.max_pool2d(x, 2), lambda x: mF.max_pool2d(x, 2), [torch.randn(0, 4, 4)]),
    "max_pool H=0 (rejected)": (lambda x: F.max_pool2d(x, 1), lambda x: mF.max_pool2d(x, 1), [torch.randn(1, 2, 0, 4)]),
    "avg_pool N=0": (lambda x: F.avg_pool2d(x, 2), lambda x: mF.avg_pool2d(x, 2), [torch.randn(0, 3, 4, 4)]),
    "avg_pool C=0": (lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: mF.avg_pool2d(x, 3, 2, 1), [torch.randn(2, 0, 5, 5)]),
    "avg_pool H=0 (rejected)": (lambda x: F.avg_pool2d(x, 1), lambda x: mF.avg_pool2d(x, 1), [torch.randn(1, 2, 0, 4)]),
    "adaptive N=0": (lambda x: F.adaptive_avg_pool2d(x, 2), lambda x: mF.adaptive_avg_pool2d(x, 2),
                     [torch.randn(0, 3, 4, 4)]),
    "adaptive H=0 (rejected)": (lambda x: F.adaptive_avg_pool2d(x, 2), lambda x: mF.adaptive_avg_pool2d(x, 2),
                                [torch.randn(1, 2, 0, 4)]),
}
for training in (True, False):
    for affine in (True, False):
        tag = f"train={training} affine={affine}"
        # Zero channels with a weight: see test_batch_norm_zero_channels_with_affine_is_accepted.
        for shape in [(0, 3, 4, 4), (0, 3), (0, 3, 5)] + ([] if affine else [(0, 0), (4, 0), (0,), (2, 0, 4, 4)]):
            C = shape[1] if len(shape) > 1 else 0
            CASES[f"batch_norm {shape} {tag}"] = (_bn(F.batch_norm, training, affine), _bn(mF.batch_norm, training, affine),
                                                  [torch.randn(*shape), torch.randn(C), torch.randn(C)])
for reduction in ("mean", "sum", "none"):
    for name, kw in {"": {}, " weight": {"weight": torch.rand(5)}, " smoothing": {"label_smoothing": 0.2}}.items():
        builtin, ours = _ce(reduction=reduction, **kw)
        CASES[f"cross_entropy N=0 {reduction}{name}"] = (builtin, ours, [torch.randn(0, 5), torch.zeros(0, dtype=torch.long)])
        CASES[f"cross_entropy probs N=0 {reduction}{name}"] = (builtin, ours, [torch.randn(0, 5), torch.rand(0, 5)])
        CASES[f"cross_entropy (2, 5, 0) {reduction}{name}"] = (builtin, ours,
                                                               [torch.randn(2, 5, 0), torch.zeros(2, 0, dtype=torch.long)])
    builtin, ours = _ce(reduction=reduction)
    CASES[f"cross_entropy C=0 {reduction} (rejected)"] = (builtin, ours, [torch.randn(3, 0), torch.zeros(3, dtype=torch.long)])


@pytest.mark.parametrize("name", CASES)
def test_empty_input_matches_builtin(name):
    builtin, ours, tensors = CASES[name]
    try:
        expected, expected_grads = _run(builtin, tensors, grads=True)
    except Exception as e:  # torch rejects it: so must we, with the same error type
        with pytest.raises(type(e)):
            _run(ours, tensors, grads=True)
        return
    got, got_grads = _run(ours, tensors, grads=True)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert len(got_grads) == len(expected_grads)
    for g, e in zip(got_grads, expected_grads):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, equal_nan=True)


def test_empty_training_batch_leaves_running_stats_as_torch_does():
    for f in (F.batch_norm, mF.batch_norm):
        rm, rv = torch.full((3,), 0.5), torch.full((3,), 2.0)
        f(torch.randn(0, 3, 4, 4), rm, rv, training=True)
        assert torch.equal(rm, torch.full((3,), 0.5)) and torch.equal(rv, torch.full((3,), 2.0))


def test_zero_channel_conv_grads_are_zero_not_missing():
    x = torch.randn(2, 0, 8, 8, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    mF.conv2d(x, w, b).sum().backward()
    assert torch.equal(b.grad, torch.zeros(4)) and w.grad.shape == (4, 0, 3, 3)


# Inputs that torch rejects only through a bug of its own, which we accept with the plain answer.
def test_batch_norm_zero_channels_with_affine_is_accepted():
    # torch raises IndexError ("select(): index 0 out of range") here, from inside its kernel.
    x = torch.randn(2, 0, 4, 4, requires_grad=True)
    w, b = torch.randn(0, requires_grad=True), torch.randn(0, requires_grad=True)
    y = mF.batch_norm(x, torch.zeros(0), torch.ones(0), w, b, training=True)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape and w.grad.shape == (0,)


@pytest.mark.parametrize("size", [(2, 0, 4, 4), (1, 2, 4, 4)])
def test_adaptive_avg_pool_empty_backward_is_accepted(size):
    # torch's forward accepts these, and its backward then refuses the empty grad_output.
    out_size = 2 if size[1] == 0 else (0, 2)
    x = torch.randn(*size, requires_grad=True)
    y = mF.adaptive_avg_pool2d(x, out_size)
    assert y.shape == F.adaptive_avg_pool2d(x, out_size).shape
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(size))


@pytest.mark.parametrize("op, args", [
    (_ops.conv2d_forward, (torch.randn(0, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), [1, 1], [1, 1, 1, 1], [1, 1], 1)),
    (_ops.conv2d_forward, (torch.randn(2, 0, 8, 8), torch.randn(4, 0, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)),
    (_ops.linear_forward, (torch.randn(4, 0), torch.randn(3, 0), torch.randn(3))),
])
def test_opcheck_on_empty_inputs(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_opcheck_on_empty_batch_norm():
    # The saved mean/invstd of no values are NaN, which the AOT comparison does not take as equal.
    args = (torch.randn(0, 3, 2, 2), None, None, None, None, None, True, 0.1, 1e-5, None, "sigma")
    torch.library.opcheck(_ops.batch_norm_forward, args, test_utils=("test_schema", "test_faketensor"))
