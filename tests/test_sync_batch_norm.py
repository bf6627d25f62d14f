"""SyncBatchNorm: single-process math (gradcheck, opcheck, errors, module, conversions) and real 2-rank runs
over gloo on 127.0.0.1 (parity with one BatchNorm2d over the whole batch, uneven and empty shards, DDP
training, a failing rank). The multi-process tests run their ranks as spawned processes with bounded
timeouts; each rank always destroys its process group."""
import copy
import os
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import manual_ops
from manual_ops import functional as mF
from manual_ops import nn as mnn
from manual_ops.ops.sync_batch_norm import SyncBatchNormFunction, combine_stats

f64 = torch.float64
ops = torch.ops.manual_ops

# --------------------------------------------------------------------------- running ranks


def _rank_main(rank, world, fn, tmp, args):
    """One rank: join the gloo group (file rendezvous, loopback sockets), run fn, save its result or traceback."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                                timeout=timedelta(seconds=30))
        try:
            result = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(tmp, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1)


def _launch(fn, tmp_path, *args, world=2, timeout=120):
    """Runs fn(rank, world, *args) on ``world`` spawned ranks; returns (exit codes, error texts, seconds).
    A rank still running after ``timeout`` seconds is killed and reported with exit code None."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, world, fn, str(tmp_path), args)) for r in range(world)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(0.0, start + timeout - time.monotonic()))
    codes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    errors = [(tmp_path / f"rank{r}.err").read_text() if (tmp_path / f"rank{r}.err").exists() else ""
              for r in range(world)]
    return codes, errors, time.monotonic() - start


def _run_ranks(fn, tmp_path, *args, world=2):
    codes, errors, _ = _launch(fn, tmp_path, *args, world=world)
    assert codes == [0] * world, f"exit codes {codes}:\n" + "\n".join(errors)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


# --------------------------------------------------------------------------- 2 ranks vs one BatchNorm2d

# Each case: per-rank batch sizes (global batch = their concatenation), layer options, memory format.
CASES = [
    dict(sizes=(3, 3)),
    dict(sizes=(5, 2), memory_format=torch.channels_last),
    dict(sizes=(4, 0)),                                   # a rank with no samples
    dict(sizes=(1, 1), hw=(1, 1)),                        # one value per channel per rank: fine when synchronised
    dict(sizes=(2, 3), momentum=None),
    dict(sizes=(3, 2), affine=False),
    dict(sizes=(2, 2), track_running_stats=False),
    dict(sizes=(3, 1), beta_floor=0.8, floor_scale="sigma"),
    dict(sizes=(2, 3), beta_floor=0.8, floor_scale="gamma", memory_format=torch.channels_last),
]
C = 4
STEPS = 2  # training steps, then one in eval mode


def _case_data(case, step):
    """The global batch of one step of a case and its output gradient, the same in every process."""
    g = torch.Generator().manual_seed(1000 * CASES.index(case) + step)
    h, w = case.get("hw", (3, 2))
    n = sum(case["sizes"])
    x = torch.randn(n, C, h, w, generator=g, dtype=f64) * (step + 1.5) + 3.0
    return x, torch.randn(n, C, h, w, generator=g, dtype=f64)


def _make_layer(case, cls_plain, cls_clamped, **extra):
    kw = {k: case[k] for k in ("momentum", "affine", "track_running_stats") if k in case}
    if "beta_floor" in case:
        layer = cls_clamped(C, case["beta_floor"], floor_scale=case["floor_scale"], dtype=f64, **kw, **extra)
    else:
        layer = cls_plain(C, dtype=f64, **kw, **extra)
    if layer.affine:  # channels 0 and 2 clamped (beta far below -k*s), 1 and 3 not
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([1.2, -0.7, 0.8, 1.5]))
            layer.bias.copy_(torch.tensor([-6.0, 0.5, -5.0, 2.0]))
    return layer


def _step(layer, case, x, grad):
    """(output, grad_input, grad_weight, grad_bias) of one call."""
    x = x.contiguous(memory_format=case.get("memory_format", torch.contiguous_format)).requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(grad)
    return (y.detach(), x.grad, *(p.grad.clone() for p in (layer.weight, layer.bias) if p is not None))


def _steps(layer, case, parts):
    """Runs the steps, in training and then in eval mode, on the global batch cut by ``parts`` (a list of
    slices: the parts are one batch; a rank passes its own alone); returns per step (output, grad_input,
    grad_weight, grad_bias), and the buffers at the end."""
    out = []
    for step in range(STEPS + 1):
        layer.train(step < STEPS)
        x, grad = _case_data(case, step)
        if layer.training or layer.track_running_stats:
            out.append(_step(layer, case, torch.cat([x[p] for p in parts]), torch.cat([grad[p] for p in parts])))
        else:  # eval without running stats: batch statistics of each rank's own batch, no communication
            per_rank = [_step(layer, case, x[p], grad[p]) for p in parts]
            out.append((torch.cat([r[0] for r in per_rank]), torch.cat([r[1] for r in per_rank]),
                        *(sum(r[k] for r in per_rank) for k in range(2, len(per_rank[0])))))
    return out, {k: v.clone() for k, v in layer.state_dict().items() if "running" in k or "num_batches" in k}


def _shards(case):
    starts = [sum(case["sizes"][:r]) for r in range(len(case["sizes"]))]
    return [slice(lo, lo + n) for lo, n in zip(starts, case["sizes"])]


def _parity_rank(rank, world):
    results = []
    for case in CASES:
        layer = _make_layer(case, mnn.SyncBatchNorm, mnn.ClampedSyncBatchNorm)
        results.append(_steps(layer, case, [_shards(case)[rank]]))
    # One value per channel over both ranks (rank 1 has none): every rank raises, nothing is mutated.
    layer = mnn.SyncBatchNorm(3).double()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    try:
        layer(torch.randn(1 - rank, 3, 1, 1, dtype=f64))
        one_value = None
    except ValueError as e:
        one_value = str(e), all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    # Running stats that require grad: every rank raises as torch does, before any collective.
    try:
        mF.sync_batch_norm(torch.randn(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True), torch.ones(3))
        no_grad_stats = None
    except RuntimeError as e:
        no_grad_stats = str(e)
    return results, (one_value, no_grad_stats)


def test_two_ranks_equal_one_batch_norm_over_the_whole_batch(tmp_path):
    """Uneven, empty and one-value shards, both layouts, clamped, momentum=None, no running stats."""
    ranks, errors = zip(*_run_ranks(_parity_rank, tmp_path))
    for (message, untouched), no_grad_stats in errors:
        assert message.startswith("Expected more than 1 value per channel when training, got 1 over the 2 ranks")
        assert untouched
        assert no_grad_stats == ("The function 'sync_batch_norm' is not differentiable with respect to argument "
                                 "'running_mean'. This input cannot have requires_grad True.")
    worst = 0.0
    for i, case in enumerate(CASES):
        # The reference: one layer over the whole batch (torch's BatchNorm2d; for the clamped shift,
        # our single-process ClampedBatchNorm2d, checked against autograd in test_batch_norm.py).
        ref_layer = _make_layer(case, nn.BatchNorm2d, mnn.ClampedBatchNorm2d)
        ref_steps, ref_buffers = _steps(ref_layer, case, _shards(case))
        for step, ref in enumerate(ref_steps):
            parts = [r[i][0][step] for r in ranks]
            checks = [("output", torch.cat([p[0] for p in parts]), ref[0]),
                      ("grad_input", torch.cat([p[1] for p in parts]), ref[1])]
            # weight and bias: each rank's share; DDP would average them, so their sum is the whole gradient.
            checks += [(name, sum(p[k] for p in parts), ref[k]) for k, name in ((2, "grad_weight"), (3, "grad_bias"))
                       if k < len(ref)]
            for name, got, want in checks:
                err = (got - want).abs().max().item()
                worst = max(worst, err)
                assert err < 1e-10, f"case {case}, step {step}, {name}: max error {err}"
        for r in ranks:
            assert r[i][1].keys() == ref_buffers.keys()
            for k, v in ref_buffers.items():
                err = (r[i][1][k].double() - v.double()).abs().max().item()
                assert err < 1e-10, f"case {case}, {k}: {r[i][1][k]} vs {v}"
    print(f"largest difference from one BatchNorm2d over the whole batch: {worst:.2e}")


# --------------------------------------------------------------------------- DDP training


def _net(bn_cls=nn.BatchNorm2d):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), bn_cls(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), bn_cls(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).double()


def _train(model, batches, part=lambda t: t, loss_fn=F.cross_entropy):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(part(x)), part(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _train_batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(8, 2, 6, 6, generator=g, dtype=f64), torch.randint(0, 3, (8,), generator=g))
            for _ in range(3)]


def _ddp_rank(rank, world):
    model = manual_ops.convert(_net(), sync_bn=True)
    assert {type(m) for m in model.modules()} >= {mnn.SyncBatchNorm, mnn.Conv2d}
    ddp = nn.parallel.DistributedDataParallel(model)
    per = 8 // world
    _train(ddp, _train_batches(), lambda t: t[rank * per:(rank + 1) * per], mnn.CrossEntropyLoss())
    return model.state_dict()


def test_ddp_training_of_a_converted_network_equals_one_process_on_the_global_batch(tmp_path):
    states = _run_ranks(_ddp_rank, tmp_path)
    reference = _net()  # torch's own layers, one process, the whole batch
    _train(reference, _train_batches())
    for k, v in reference.state_dict().items():
        for s in states:
            err = (s[k].double() - v.double()).abs().max().item()
            assert err < 1e-10, f"{k}: max error {err}"


# --------------------------------------------------------------------------- failures


def _failing_rank(rank, world):
    layer = mnn.SyncBatchNorm(3).double()
    if rank == 1:
        raise RuntimeError("rank 1 fails before its first collective")
    layer(torch.randn(4, 3, 2, 2, dtype=f64))  # waits in the all_gather for rank 1, which is gone


def test_a_failing_rank_makes_the_other_fail_not_hang(tmp_path):
    codes, errors, seconds = _launch(_failing_rank, tmp_path, timeout=90)
    assert codes == [1, 1], (codes, errors)
    assert "rank 1 fails before its first collective" in errors[1]
    assert "SyncBatchNorm" in errors[0] or "all_gather" in errors[0], errors[0]
    assert seconds < 90


# --------------------------------------------------------------------------- one process


def _x(shape=(3, 4, 3, 2), layout="contiguous", scale=1.5, shift=0.3):
    x = torch.randn(shape, dtype=f64) * scale + shift
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("floor", [None, (1.3, "sigma"), (1.3, "gamma")], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_equals_batch_norm_in_one_process(layout, floor, affine):
    """group=None is the same computation without communication: it must be batch norm exactly."""
    if floor is not None and not affine:
        return
    x = _x(layout=layout).requires_grad_()
    w = torch.tensor([1.2, -0.7, 0.8, 1.5], dtype=f64, requires_grad=True) if affine else None
    b = torch.tensor([-6.0, 0.5, -5.0, 2.0], dtype=f64, requires_grad=True) if affine else None
    k, scale = floor or (None, "sigma")
    rm, rv, nbt = torch.zeros(4, dtype=f64), torch.ones(4, dtype=f64), torch.tensor(0)

    def sync(x, w, b):
        return SyncBatchNormFunction.apply(x, w, b, rm, rv, nbt, 0.1, 1e-5, k, scale, None)

    inputs = tuple(t for t in (x, w, b) if t is not None)
    fn = sync if affine else (lambda x: sync(x, None, None))
    assert torch.autograd.gradcheck(fn, inputs)
    rm2, rv2, nbt2 = torch.zeros(4, dtype=f64), torch.ones(4, dtype=f64), torch.tensor(0)
    rm.zero_(), rv.fill_(1), nbt.zero_()
    grad = torch.randn(x.shape, dtype=f64)
    ours = torch.autograd.grad(fn(*inputs), inputs, grad)
    plain = torch.autograd.grad(mF.BatchNormFunction.apply(x, w, b, rm2, rv2, nbt2, True, 0.1, 1e-5, k, scale)[0],
                                inputs, grad)
    for a, r in zip(ours, plain):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=0)
    torch.testing.assert_close((rm, rv, nbt), (rm2, rv2, nbt2), atol=1e-12, rtol=0)


def test_combine_stats_is_chans_formula_with_empty_groups():
    x = torch.randn(20, 3, dtype=f64) * 4 + 1e3
    groups = [x[:7], x[7:7], x[7:19], x[19:]]
    counts = torch.tensor([[float(len(g))] for g in groups], dtype=f64)
    means = torch.stack([g.mean(0) if len(g) else torch.zeros(3, dtype=f64) for g in groups])
    m2s = torch.stack([((g - g.mean(0)) ** 2).sum(0) if len(g) else torch.zeros(3, dtype=f64) for g in groups])
    n, mean, m2 = combine_stats(counts, means, m2s)
    assert n == 20
    torch.testing.assert_close(mean, x.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(m2 / n, x.var(0, unbiased=False), atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape,layout", [((3, 4, 3, 2), "contiguous"), ((3, 4, 3, 2), "channels_last"),
                                          ((5, 3), "contiguous"), ((2, 3, 5), "contiguous"), ((0, 3, 2, 2), "contiguous")],
                         ids=str)
def test_stats_and_reduce_ops(shape, layout):
    x = _x(shape, layout, scale=1e-2, shift=1e4).float()  # large mean: the shifted sums must not cancel
    stats = ops.batch_norm_stats(x)
    dims = [0] + list(range(2, x.dim()))
    assert stats.dtype == f64 and stats.shape == (2, shape[1])
    if x.numel():
        xd = x.double()
        torch.testing.assert_close(stats[0], xd.mean(dims), atol=1e-9, rtol=0)
        torch.testing.assert_close(stats[1], ((xd - xd.mean(dims, keepdim=True)) ** 2).sum(dims), rtol=1e-6, atol=0)
    else:
        assert stats.eq(0).all()
    mean, invstd = torch.randn(shape[1]), torch.rand(shape[1]) + 0.5
    dy = torch.randn_like(x)
    sums = ops.batch_norm_backward_reduce(dy, x, mean, invstd)
    view = [1, -1] + [1] * (x.dim() - 2)
    xhat = (x.double() - mean.double().view(view)) * invstd.double().view(view)
    torch.testing.assert_close(sums, torch.stack([dy.double().sum(dims), (dy.double() * xhat).sum(dims)]),
                               atol=1e-2, rtol=1e-6)  # |x - mean| ~ 1e4: float32 products round at ~1e-3


def _backward_samples():
    x = torch.randn(3, 4, 5, 4)
    xcl = x.to(memory_format=torch.channels_last)
    w, b, mean, invstd = torch.randn(4), torch.randn(4), torch.randn(4), torch.rand(4) + 0.5
    local = torch.randn(2, 4, dtype=f64)
    total = local + torch.randn(2, 4, dtype=f64)
    return [
        (torch.randn_like(x), x, w, b, mean, invstd, local, total, 200, None, "sigma", [True, True, True]),
        (torch.randn_like(xcl), xcl, w, b, mean, invstd, local, total, 60, 1.0, "sigma", [True, False, True]),
        (torch.randn_like(x), x, w, b, mean, invstd, local, total, 60, 0.5, "gamma", [False, True, True]),
        (torch.randn(6, 4), torch.randn(6, 4), None, None, mean, invstd, local, total, 9, None, "sigma",
         [True, False, False]),
    ]


@pytest.mark.parametrize("sample", range(4))
def test_opcheck(sample):
    args = _backward_samples()[sample]
    torch.library.opcheck(ops.sync_batch_norm_backward.default, args)
    torch.library.opcheck(ops.batch_norm_stats.default, (args[1],))
    torch.library.opcheck(ops.batch_norm_backward_reduce.default, args[:2] + args[4:6])


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.batch_norm_stats(torch.randn(3)), RuntimeError,
     r"batch_norm_stats: expected input of size \(N, C, \*\), but got input of size \[3\]"),
    (lambda: ops.batch_norm_stats(torch.ones(2, 3, dtype=torch.long)), RuntimeError,
     r"expected input to be float32, float64, bfloat16 or float16, but got Long"),
    (lambda: ops.batch_norm_backward_reduce(torch.randn(2, 3), torch.randn(2, 4), torch.zeros(4), torch.ones(4)),
     RuntimeError, r"expected grad_output of size \[2, 4\], but got grad_output of size \[2, 3\]"),
    (lambda: ops.batch_norm_backward_reduce(torch.randn(2, 4), torch.randn(2, 4), torch.zeros(3), torch.ones(4)),
     RuntimeError, r"mean should contain 4 elements not 3"),
    (lambda: ops.sync_batch_norm_backward(torch.randn(2, 4), torch.randn(2, 4), None, None, torch.zeros(4),
                                          torch.ones(4), torch.zeros(2, 4), torch.zeros(2, 4), 4, None, "sigma",
                                          [True, False, False]),
     RuntimeError, r"expected local_sums to be a float64 tensor of size \[2, 4\], but got one of size \[2, 4\] and "
                   r"dtype Float"),
    (lambda: ops.sync_batch_norm_backward(torch.randn(2, 4), torch.randn(2, 4), None, None, torch.zeros(4),
                                          torch.ones(4), torch.zeros(2, 4, dtype=f64), torch.zeros(3, dtype=f64), 4,
                                          None, "sigma", [True, False, False]),
     RuntimeError, r"expected global_sums to be a float64 tensor of size \[2, 4\], but got one of size \[3\]"),
    (lambda: ops.sync_batch_norm_backward(torch.randn(5, 4), torch.randn(5, 4), None, None, torch.zeros(4),
                                          torch.ones(4), torch.zeros(2, 4, dtype=f64), torch.zeros(2, 4, dtype=f64),
                                          3, None, "sigma", [True, False, False]),
     ValueError, r"count \(values per channel over all ranks\) must be at least this rank's 5, but got 3"),
], ids=["stats-rank", "stats-dtype", "reduce-grad", "reduce-mean", "sums-dtype", "sums-shape", "count"])
def test_op_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_module_is_a_drop_in_for_torch_sync_batch_norm():
    kw = dict(eps=1e-3, momentum=None, affine=True, track_running_stats=True)
    ours, ref = mnn.SyncBatchNorm(5, **kw, bias=False), nn.SyncBatchNorm(5, **kw, bias=False)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(ours, nn.modules.batchnorm._BatchNorm) and not isinstance(ours, nn.SyncBatchNorm)
    clamped = mnn.ClampedSyncBatchNorm(5, 0.5, floor_scale="gamma", process_group=None)
    assert repr(clamped).endswith("beta_floor=0.5, floor_scale='gamma')")
    nn.SyncBatchNorm(5).load_state_dict(clamped.state_dict(), strict=True)
    with pytest.raises(ValueError, match=r"ClampedSyncBatchNorm: beta_floor must be a non-negative number"):
        mnn.ClampedSyncBatchNorm(5, -1.0)


@pytest.mark.parametrize("training,track", [(True, True), (False, True), (True, False), (False, False)])
def test_module_without_process_group_is_batch_norm(training, track):
    """No initialised process group: plain batch norm, on any (N, C, +) input, as torch's SyncBatchNorm."""
    assert not dist.is_initialized()
    for shape in ((4, 3, 5, 5), (6, 3), (2, 3, 7)):
        ours = mnn.SyncBatchNorm(3, track_running_stats=track)
        ref_cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
        ref = ref_cls(3, track_running_stats=track)
        ours.train(training), ref.train(training)
        x = torch.randn(shape) * 2 + 1
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        torch.testing.assert_close(yo, yr, atol=1e-5, rtol=1e-5)
        yo.sum().backward(), yr.sum().backward()
        torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=1e-5)
        for bo, br in zip(ours.buffers(), ref.buffers()):
            torch.testing.assert_close(bo, br, atol=1e-5, rtol=1e-5)


def test_module_input_errors_mutate_nothing():
    m = mnn.SyncBatchNorm(3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"^expected at least 2D input \(got 1D input\)$"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match=r"^SyncBatchNorm number of input channels should be non-zero$"):
        m(torch.randn(2, 0, 3))
    with pytest.raises(RuntimeError, match=r"running_mean should contain 4 elements not 3"):
        m(torch.randn(2, 4, 3))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_function_errors_mutate_nothing():
    rm, rv, nbt = torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64), torch.tensor(0)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got 1 over the 1 rank"):
        SyncBatchNormFunction.apply(torch.randn(1, 3, dtype=f64), None, None, rm, rv, nbt, 0.1, 1e-5, None, "sigma",
                                    None)
    with pytest.raises(ValueError, match=r"^batch_norm eps must be positive during training, but got 0"):
        SyncBatchNormFunction.apply(torch.randn(2, 3, dtype=f64), None, None, rm, rv, nbt, 0.1, 0.0, None, "sigma",
                                    None)
    with pytest.raises(RuntimeError, match=r"weight should contain 3 elements not 2"):
        SyncBatchNormFunction.apply(torch.randn(2, 3, dtype=f64), torch.ones(2, dtype=f64), None, rm, rv, nbt, 0.1,
                                    1e-5, None, "sigma", None)
    assert rm.eq(0).all() and rv.eq(1).all() and nbt.item() == 0


# --------------------------------------------------------------------------- conversions


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 4),
                         nn.BatchNorm1d(4), mnn.ClampedBatchNorm2d(4, 0.7, floor_scale="gamma"))


def test_convert_sync_batchnorm_keeps_state_and_floor():
    model = _model()
    bn = model[1]
    pg = object()  # any process group object: it is only stored
    converted = mnn.SyncBatchNorm.convert_sync_batchnorm(model, pg)
    assert converted is model
    assert [type(m) for m in model] == [nn.Conv2d, mnn.SyncBatchNorm, nn.ReLU, nn.Flatten, nn.Linear,
                                        mnn.SyncBatchNorm, mnn.ClampedSyncBatchNorm]
    assert model[1].weight is bn.weight and model[1].running_var is bn.running_var
    assert all(model[i].process_group is pg for i in (1, 5, 6))
    assert (model[6].beta_floor, model[6].floor_scale) == (0.7, "gamma")
    single = mnn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3))
    assert type(single) is mnn.SyncBatchNorm and single.process_group is None
    # convert(sync_bn=True): the rest converted too; revert gives torch's layers, SyncBatchNorm for ours.
    model = manual_ops.convert(_model(), sync_bn=True)
    assert [type(m) for m in model] == [mnn.Conv2d, mnn.SyncBatchNorm, mnn.ReLU, nn.Flatten, mnn.Linear,
                                        mnn.SyncBatchNorm, mnn.ClampedSyncBatchNorm]
    clamped = manual_ops.convert(_model(), sync_bn=True, clamped_beta=0.25)
    assert [(m.beta_floor, m.floor_scale) for m in clamped if isinstance(m, mnn.ClampedSyncBatchNorm)] == [
        (0.25, "sigma"), (0.25, "sigma"), (0.7, "gamma")]
    manual_ops.revert(model)
    assert [type(m) for m in model] == [nn.Conv2d, nn.SyncBatchNorm, nn.ReLU, nn.Flatten, nn.Linear,
                                        nn.SyncBatchNorm, nn.SyncBatchNorm]
    assert not hasattr(model[6], "beta_floor")
    # torch's SyncBatchNorm (e.g. from torch's convert_sync_batchnorm) is converted to ours by convert().
    assert type(manual_ops.convert(nn.Sequential(nn.SyncBatchNorm(3)))[0]) is mnn.SyncBatchNorm


def test_torch_convert_sync_batchnorm_keeps_manual_ops_layers():
    """torch's convert_sync_batchnorm turns ours into ours (hand-written backward kept), torch's into torch's."""
    model = manual_ops.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model.append(nn.BatchNorm2d(4))
    model.append(mnn.ClampedBatchNorm2d(4, 0.5))
    out = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(m) for m in out] == [mnn.Conv2d, mnn.SyncBatchNorm, nn.SyncBatchNorm, mnn.ClampedSyncBatchNorm]
    again = nn.SyncBatchNorm.convert_sync_batchnorm(out, "group")
    assert [type(m) for m in again][1:] == [mnn.SyncBatchNorm, nn.SyncBatchNorm, mnn.ClampedSyncBatchNorm]
    assert again[1].process_group == "group" and again[3].beta_floor == 0.5
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(mnn.BatchNorm2d(4))) is mnn.SyncBatchNorm


def test_copy_keeps_working():
    m = manual_ops.convert(_model(), sync_bn=True)
    copy.deepcopy(m)(torch.randn(2, 3, 3, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("param_dtype", ["input", "float32"])
def test_low_precision_function_equals_batch_norm_in_one_process(dtype, param_dtype):
    # The function path with group=None: what every rank computes, minus the collectives.
    pdt = dtype if param_dtype == "input" else torch.float32
    x = torch.randn(4, 3, 5, 5).to(dtype)
    w, b = torch.rand(3).add(0.5).to(pdt), torch.randn(3).to(pdt)
    stats = [(torch.zeros(3, dtype=pdt), torch.ones(3, dtype=pdt)) for _ in range(2)]
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    y = SyncBatchNormFunction.apply(xs[0], w, b, *stats[0], None, 0.1, 1e-5, None, "sigma", None)
    ref = F.batch_norm(xs[1], *stats[1], w, b, training=True)
    assert y.dtype == ref.dtype == dtype
    # With 16-bit parameters the global statistics reach the normalisation rounded to that dtype:
    # one rounding more than torch's kernel makes, so equal within the dtype's rounding, not bitwise.
    torch.testing.assert_close(y.float(), ref.float(), atol=2e-2, rtol=2e-2)
    g = torch.randn_like(y)
    (gy,), (gr,) = torch.autograd.grad(y, xs[0], g), torch.autograd.grad(ref, xs[1], g)
    torch.testing.assert_close(gy.float(), gr.float(), atol=2e-2, rtol=2e-2)
    for ours, theirs in zip(stats[0], stats[1]):
        assert ours.dtype == pdt
        torch.testing.assert_close(ours.float(), theirs.float(), atol=1e-2, rtol=1e-2)
