"""vmap rules of every Function, forward and backward (manual_ops/ops/*.py, docs/derivations.md "vmap rules"):
each vmapped call equals the stack of its per-slice results (the built-in op's for the forward ops, our
unvmapped Function's for the backward ones), over in_dims on every tensor argument, non-zero in_dims and
out_dims, and the ops' option grids; plus gradcheck's batched-grad check (vmap over the backward)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_pooling import ADAPTIVE_SIZES, AVG_GRID, MAX_GRID, distinct
from torch.func import vmap

from manual_ops import functional as mF
from manual_ops.ops.batch_norm import BatchNormBackward
from manual_ops.ops.conv2d import Conv2dBackward
from manual_ops.ops.cross_entropy import CrossEntropyBackward
from manual_ops.ops.linear import LinearBackward
from manual_ops.ops.pooling import AdaptiveAvgPool2dBackward, AvgPool2dBackward, MaxPool2dBackward
from manual_ops.ops.relu import ReLUBackward

f64 = torch.float64
B = 3  # the vmapped size


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def vmapped(t, bdim):
    """A B-slice version of ``t`` with its vmapped dimension at ``bdim`` (``t`` itself when None)."""
    if bdim is None:
        return t
    return torch.stack([t * (1 + 0.25 * b) if t.is_floating_point() else t for b in range(B)], bdim)


def check(ours, reference, args, in_dims, out_dims=0):
    """vmap(ours) over ``args`` (vmapped as in_dims by :func:`vmapped`) equals ``reference`` on each slice, stacked
    at out_dims; ``ours`` and ``reference`` return a tensor or a tuple (Nones allowed: the same ones)."""
    args = [vmapped(a, d) if isinstance(a, torch.Tensor) else a for a, d in zip(args, in_dims)]
    dims = tuple(d if isinstance(a, torch.Tensor) else None for a, d in zip(args, in_dims))
    slices = [reference(*(a.select(d, b) if d is not None else a for a, d in zip(args, dims))) for b in range(B)]
    if not isinstance(slices[0], tuple):
        assert_close(vmap(ours, in_dims=dims, out_dims=out_dims)(*args), torch.stack(slices, out_dims))
        return
    present = [s is not None for s in slices[0]]
    actual = vmap(lambda *a: tuple(o for o in ours(*a) if o is not None), in_dims=dims, out_dims=out_dims)(*args)
    assert len(actual) == sum(present)
    out_dims = out_dims if isinstance(out_dims, tuple) else (out_dims,) * len(actual)
    expected = [torch.stack([s[i] for s in slices]) for i, p in enumerate(present) if p]
    for a, e, o in zip(actual, expected, out_dims):
        assert_close(a, e.movedim(0, o))


# in_dims of (input, weight, bias), out_dims
BILINEAR_DIMS = [((0, None, None), 0), ((None, 0, None), 0), ((0, 0, 0), 0), ((None, None, 0), 1),
                 ((0, 0, None), 1), ((2, 1, 0), 2), ((None, 1, 0), 0)]
BACKWARD_DIMS = [d for d in itertools.product([None, 0, 1], repeat=3) if d != (None, None, None)]
MASKS = [[True, False, False], [False, True, True], [True, True, True], [False, True, False]]

# ------------------------------------------------------------------ conv2d

CONV_OPTIONS = [dict(), dict(stride=2, padding=1), dict(padding=(1, 2), dilation=(2, 1)), dict(padding="same"),
                dict(padding="same", dilation=2), dict(groups=2, stride=(1, 2)), dict(padding="valid", groups=2)]


@pytest.mark.parametrize("kw", CONV_OPTIONS, ids=str)
@pytest.mark.parametrize("in_dims,out_dims", BILINEAR_DIMS)
def test_conv2d(kw, in_dims, out_dims):
    kernel = (2, 3) if kw.get("padding") == "same" else (3, 3)  # an even kernel: 'same' is asymmetric
    x, w, b = torch.randn(2, 4, 7, 6, dtype=f64), torch.randn(6, 4 // kw.get("groups", 1), *kernel, dtype=f64), \
        torch.randn(6, dtype=f64)
    check(lambda x, w, b: mF.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw), (x, w, b), in_dims,
          out_dims)


def test_conv2d_unbatched_input_and_no_bias():
    x, w = torch.randn(4, 6, 6, dtype=f64), torch.randn(5, 4, 3, 3, dtype=f64)
    for in_dims in [(0, None), (None, 0), (1, 0)]:
        check(lambda x, w: mF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), (x, w), in_dims)


@pytest.mark.parametrize("kw", [dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1),
                                dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)], ids=str)
@pytest.mark.parametrize("in_dims", BACKWARD_DIMS)
@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_conv2d_backward(kw, in_dims, mask):
    x, w = torch.randn(2, 4, 7, 6, dtype=f64), torch.randn(6, 4 // kw["groups"], 3, 3, dtype=f64)
    gy = torch.randn_like(F.conv2d(F.pad(x, (kw["padding"][1], kw["padding"][3], kw["padding"][0],
                                              kw["padding"][2])), w, None, kw["stride"], 0, kw["dilation"],
                                   kw["groups"]))
    args = tuple(kw.values())

    def backward(gy, x, w):
        return Conv2dBackward.apply(gy, x, w, *args, mask)
    check(backward, backward, (gy, x, w), in_dims)


@given(n=st.integers(1, 3), c=st.integers(1, 3), o=st.integers(1, 3), hw=st.integers(3, 6),
       dims=st.tuples(*[st.sampled_from([None, 0, 1, 2])] * 3), out_dim=st.integers(0, 2),
       stride=st.integers(1, 2), padding=st.integers(0, 1))
def test_conv2d_property(n, c, o, hw, dims, out_dim, stride, padding):
    if dims[:2] == (None, None):
        dims = (0, *dims[1:])
    x, w, b = torch.randn(n, c, hw, hw, dtype=f64), torch.randn(o, c, 3, 3, dtype=f64), torch.randn(o, dtype=f64)
    dims = tuple(min(d, t.dim()) if d is not None else None for d, t in zip(dims, (x, w, b)))
    check(lambda x, w, b: mF.conv2d(x, w, b, stride, padding), lambda x, w, b: F.conv2d(x, w, b, stride, padding),
          (x, w, b), dims, out_dim)


# ------------------------------------------------------------------ linear


@pytest.mark.parametrize("x_shape", [(2, 5), (2, 3, 5), (5,)])
@pytest.mark.parametrize("in_dims,out_dims", BILINEAR_DIMS)
def test_linear(x_shape, in_dims, out_dims):
    x, w, b = torch.randn(x_shape, dtype=f64), torch.randn(4, 5, dtype=f64), torch.randn(4, dtype=f64)
    in_dims = (min(in_dims[0], len(x_shape)) if in_dims[0] is not None else None, *in_dims[1:])
    check(mF.linear, F.linear, (x, w, b), in_dims, min(out_dims, len(x_shape)))


@pytest.mark.parametrize("in_dims", BACKWARD_DIMS)
@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_linear_backward(in_dims, mask):
    gy, x, w = torch.randn(2, 3, 4, dtype=f64), torch.randn(2, 3, 5, dtype=f64), torch.randn(4, 5, dtype=f64)

    def backward(gy, x, w):
        return LinearBackward.apply(gy, x, w, mask)
    check(backward, backward, (gy, x, w), in_dims)


# ------------------------------------------------------------------ relu


@pytest.mark.parametrize("bdim,out_dims", [(0, 0), (2, 1), (1, 3)])
def test_relu(bdim, out_dims):
    x = torch.randn(2, 3, 4, dtype=f64)
    check(mF.relu, F.relu, (x,), (bdim,), out_dims)
    check(lambda x: mF.relu(x * 1.0, inplace=True), F.relu, (x,), (bdim,), out_dims)


@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (1, 2), (0, 0)])
def test_relu_backward(in_dims):
    gy, y = torch.randn(2, 3, 4, dtype=f64), F.relu(torch.randn(2, 3, 4, dtype=f64))
    check(ReLUBackward.apply, ReLUBackward.apply, (gy, y), in_dims)


# ------------------------------------------------------------------ pooling

POOL_DIMS = [(0, 0), (1, 0), (2, 1), (4, 4)]


@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
@pytest.mark.parametrize("bdim,out_dims", POOL_DIMS)
def test_max_pool2d(k, s, p, d, ceil, bdim, out_dims):
    x = distinct(2, 3, 7, 8)
    check(lambda x: mF.max_pool2d(x, k, s, p, d, ceil, return_indices=True),
          lambda x: F.max_pool2d(x, k, s, p, d, ceil, return_indices=True), (x,), (bdim,), out_dims)


@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
@pytest.mark.parametrize("bdim,out_dims", POOL_DIMS[:3])
def test_avg_pool2d(k, s, p, ceil, cip, div, bdim, out_dims):
    x = torch.randn(2, 3, 7, 8, dtype=f64)
    check(lambda x: mF.avg_pool2d(x, k, s, p, ceil, cip, div), lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div),
          (x,), (bdim,), out_dims)


@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (3, 9, 5)], ids=str)  # batched and unbatched inputs
def test_adaptive_avg_pool2d(size, shape):
    x = torch.randn(shape, dtype=f64)
    for bdim, out_dims in POOL_DIMS[:3]:
        check(lambda x: mF.adaptive_avg_pool2d(x, size), lambda x: F.adaptive_avg_pool2d(x, size), (x,), (bdim,),
              out_dims)


@pytest.mark.parametrize("in_dims", [d for d in itertools.product([None, 0, 2], repeat=2) if d != (None, None)])
def test_pool_backwards(in_dims):
    x = distinct(2, 3, 7, 8)
    out, indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    gy = torch.randn_like(out)
    for indices_dim in (None, in_dims[1]):
        check(MaxPool2dBackward.apply, MaxPool2dBackward.apply, (gy, x, indices), (*in_dims, indices_dim))
    options = ((3, 2), (2, 1), (1, 0), True, False, None)
    gy = torch.randn_like(F.avg_pool2d(x, *options))

    def avg_backward(gy, x):
        return AvgPool2dBackward.apply(gy, x, *options)
    check(avg_backward, avg_backward, (gy, x), in_dims)
    gy = torch.randn(2, 3, 3, 5, dtype=f64)
    check(AdaptiveAvgPool2dBackward.apply, AdaptiveAvgPool2dBackward.apply, (gy, x), in_dims)


# ------------------------------------------------------------------ batch_norm

# in_dims of (input, weight, bias, running_mean, running_var)
BN_DIMS = [(0, None, None, None, None), (None, 0, None, None, None), (0, 0, 0, None, None), (2, 0, None, 0, 0),
           (None, None, None, 0, 0), (1, None, 0, 0, None)]


def _bn_args():
    c = 3
    return (torch.randn(4, c, 3, 2, dtype=f64), torch.rand(c, dtype=f64) + 0.5, torch.randn(c, dtype=f64),
            torch.randn(c, dtype=f64), torch.rand(c, dtype=f64) + 0.5)


@pytest.mark.parametrize("in_dims", BN_DIMS)
@pytest.mark.parametrize("out_dims", [0, 2])
def test_batch_norm_eval(in_dims, out_dims):
    check(lambda x, w, b, m, v: mF.batch_norm(x, m, v, w, b, False, 0.1, 1e-3),
          lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, False, 0.1, 1e-3), _bn_args(), in_dims, out_dims)


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, 0), (1, 0, None), (2, None, 0)])
def test_batch_norm_train_without_running_stats(in_dims):
    """Statistics per slice (track_running_stats off): the fold into channels."""
    x, w, b, _, _ = _bn_args()
    check(lambda x, w, b: mF.batch_norm(x, None, None, w, b, True),
          lambda x, w, b: F.batch_norm(x, None, None, w, b, True), (x, w, b), in_dims)


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (2, 1, 0), (None, 0, 0), (0, 0, 0, 0)])
def test_batch_norm_train_updates_vmapped_running_stats(in_dims):
    """Each slice's running stats get that slice's update: against a loop over the slices (torch's own vmap
    rule loses the update of a running_mean vmapped at a non-zero dimension: (2, 1, 0))."""
    x, w, _, m, v = _bn_args()
    args = [vmapped(t, d) for t, d in zip((x, m, v, w), in_dims)] + [w] * (4 - len(in_dims))
    theirs = [t.clone() for t in args]
    dims = (*in_dims, None)[:4]
    out = vmap(lambda x, m, v, w: mF.batch_norm(x, m, v, w, None, True, 0.3), in_dims=dims)(*args)
    expected = [F.batch_norm(*(t.select(d, b) if d is not None else t for t, d in zip(theirs, dims)), None, True, 0.3)
                for b in range(B)]
    assert_close(out, torch.stack(expected))
    assert_close(args[1], theirs[1])
    assert_close(args[2], theirs[2])


def test_batch_norm_train_unvmapped_stats_updated_once_as_torch():
    """Only the weight vmapped: every slice sees the same batch, so the running stats get one update."""
    x, w, _, m, v = _bn_args()
    ws, ours, theirs = vmapped(w, 0), (m.clone(), v.clone()), (m.clone(), v.clone())
    vmap(lambda w: mF.batch_norm(x, *ours, w, None, True, 0.3))(ws)
    vmap(lambda w: F.batch_norm(x, *theirs, w, None, True, 0.3))(ws)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])


@pytest.mark.parametrize("stats", ["both", "mean", "var"])
def test_batch_norm_train_with_unvmapped_running_stats_raises_as_torch(stats):
    x, _, _, m, v = _bn_args()
    m, v = (m if stats != "var" else vmapped(m, 0)), (v if stats != "mean" else vmapped(v, 0))
    in_dims = (0, None if stats != "var" else 0, None if stats != "mean" else 0)
    with pytest.raises(RuntimeError) as theirs:
        vmap(lambda x, m, v: F.batch_norm(x, m, v, training=True), in_dims=in_dims)(vmapped(x, 0), m, v)
    with pytest.raises(type(theirs.value)) as ours:
        vmap(lambda x, m, v: mF.batch_norm(x, m, v, training=True), in_dims=in_dims)(vmapped(x, 0), m, v)
    assert str(ours.value) == str(theirs.value)


def test_batch_norm_module_train_under_vmap_as_torch():
    """A module in training: tracked running stats raise as torch's; track_running_stats=False folds into channels."""
    import copy

    from manual_ops import convert
    x = vmapped(torch.randn(4, 3, 2, 2, dtype=f64), 0)
    for track in (True, False):
        builtin = torch.nn.BatchNorm2d(3, track_running_stats=track).to(f64)
        ours = convert(copy.deepcopy(builtin))
        if track:
            with pytest.raises(RuntimeError, match="Batch norm got a batched tensor as input"):
                vmap(ours)(x)
        else:
            assert_close(vmap(ours)(x), vmap(builtin)(x))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("in_dims", [d for d in itertools.product([None, 0, 1], repeat=3) if d != (None, None, None)])
def test_batch_norm_backward(training, in_dims):
    x, w, b, m, v = _bn_args()
    _, save_mean, save_invstd = torch.ops.manual_ops.batch_norm_forward(x, w, b, m, v, None, training, 0.1, 1e-3,
                                                                         1.0, "sigma")
    gy = torch.randn_like(x)
    for mask in MASKS:
        def backward(gy, x, w):
            return BatchNormBackward.apply(gy, x, w, b, save_mean, save_invstd, training, 1.0, "sigma", mask)
        check(backward, backward, (gy, x, w), in_dims)


# ------------------------------------------------------------------ cross_entropy

CE_OPTIONS = [dict(reduction=r, ignore_index=i, label_smoothing=s, weight=w)
              for r, i, s, w in itertools.product(["none", "mean", "sum"], [-100, 1], [0.0, 0.3], [False, True])]


def _ce_args(probabilities, spatial):
    x = torch.randn(4, 5, *((2,) if spatial else ()), dtype=f64)
    if probabilities:
        return x, torch.randn_like(x).softmax(1)
    target = torch.randint(0, 5, (4, *((2,) if spatial else ())))
    target[:2] = 1  # with ignore_index=1: half the rows ignored (all of a slice's, for slice 0 of vmapped() below)
    return x, target


@pytest.mark.parametrize("kw,probabilities,spatial", [
    (kw, p, s) for kw in CE_OPTIONS for p, s in [(False, False), (False, True), (True, True)]
    if not (p and kw["ignore_index"] != -100)], ids=str)  # ignore_index is for class indices
@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (0, 0), (1, 1)])
def test_cross_entropy(kw, in_dims, probabilities, spatial):
    kw = dict(kw, weight=torch.rand(5, dtype=f64) + 0.5 if kw["weight"] else None)
    check(lambda x, t: mF.cross_entropy(x, t, **kw), lambda x, t: F.cross_entropy(x, t, **kw),
          _ce_args(probabilities, spatial), in_dims)


def test_cross_entropy_all_rows_of_a_slice_ignored_is_nan_as_torch():
    x, t = torch.randn(3, 4, 5, dtype=f64), torch.randint(0, 5, (3, 4))
    t[1] = 2
    out = vmap(lambda x, t: mF.cross_entropy(x, t, ignore_index=2))(x, t)
    assert_close(out, torch.stack([F.cross_entropy(x[b], t[b], ignore_index=2) for b in range(3)]))
    assert out[1].isnan() and not out[[0, 2]].isnan().any()


def test_cross_entropy_vmapped_class_weight():
    x, t = _ce_args(False, True)
    w = torch.rand(5, dtype=f64) + 0.5
    for reduction in ("none", "mean"):
        check(lambda x, t, w: mF.cross_entropy(x, t, w, reduction=reduction),
              lambda x, t, w: F.cross_entropy(x, t, w, reduction=reduction), (x, t, w), (None, 0, 0))


@pytest.mark.parametrize("kw", [k for k in CE_OPTIONS if k["ignore_index"] == -100], ids=str)
@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_backward(kw, probabilities):
    x, t = _ce_args(probabilities, True)
    weight = torch.rand(5, dtype=f64) + 0.5 if kw["weight"] else None
    options = (kw["reduction"], kw["ignore_index"], kw["label_smoothing"])
    loss, lse = torch.ops.manual_ops.cross_entropy_forward(x, t, weight, *options)
    gl = torch.randn_like(loss)
    mask = [True, probabilities]
    for in_dims in [(0, None, None, None), (None, 0, None, 0), (0, 0, 0, 0), (None, None, 0, None), (0, 1, 1, 1)]:
        if in_dims[2] is not None and not probabilities:
            continue  # a vmapped class-index target comes with its vmapped input (its lse): below

        def backward(gl, x, t, lse):
            return CrossEntropyBackward.apply(gl, x, t, weight, lse, *options, mask)
        check(backward, backward, (gl, x, t, lse), in_dims)


# ------------------------------------------------------------------ gradcheck's batched grads (vmap over backward)


def batched_gradcheck(fn, inputs, **kw):
    return torch.autograd.gradcheck(fn, inputs, check_batched_grad=True, **kw) and \
        torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True, **kw)


def _leaf(*shape):
    return torch.randn(*shape, dtype=f64, requires_grad=True)


def test_gradcheck_batched_grad_every_op():
    x, w, b = _leaf(1, 2, 5, 5), _leaf(3, 2, 3, 3), _leaf(3)
    assert batched_gradcheck(lambda x, w, b: mF.conv2d(x, w, b, stride=2, padding=1), (x, w, b), fast_mode=True)
    assert batched_gradcheck(mF.linear, (_leaf(2, 4), _leaf(3, 4), _leaf(3)))
    assert batched_gradcheck(lambda x: mF.relu(x), (_leaf(2, 3),))
    xp = distinct(1, 2, 5, 5).requires_grad_()
    assert batched_gradcheck(lambda x: mF.max_pool2d(x, 3, 2, 1, ceil_mode=True), (xp,), fast_mode=True)
    assert batched_gradcheck(lambda x: mF.avg_pool2d(x, 2, 1, 1, count_include_pad=False), (_leaf(1, 2, 4, 4),),
                             fast_mode=True)
    assert batched_gradcheck(lambda x: mF.adaptive_avg_pool2d(x, (3, 2)), (_leaf(1, 2, 5, 5),), fast_mode=True)
    m, v = torch.randn(2, dtype=f64), torch.rand(2, dtype=f64) + 0.5
    for training in (False, True):
        assert batched_gradcheck(lambda x, w, b: mF.batch_norm(x, None if training else m, None if training else v,
                                                               w, b, training),
                                 (_leaf(3, 2, 2, 2), _leaf(2), _leaf(2)), fast_mode=True)
    t = torch.tensor([0, 2, 1])
    for reduction in ("none", "mean", "sum"):
        assert batched_gradcheck(lambda x: mF.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
                                 (_leaf(3, 4),))
    assert batched_gradcheck(lambda x, p: mF.cross_entropy(x, p), (_leaf(3, 4), _leaf(3, 4).softmax(1).detach()
                                                                  .requires_grad_()))
