"""cross_entropy's row kernels (csrc/cpu/cross_entropy_kernel.cpp): their vectorised exp (exp_lanes) against
torch.exp, rows long enough for full vectors and their tails, extreme logits, and the portable kernels
(MANUAL_OPS_CPU_CAPABILITY=default, in a subprocess) against the vectorised ones and the built-in."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import manual_ops
from manual_ops import functional as mF

_ops = torch.ops.manual_ops


def _kernel_exp(v):
    """exp(v) as the backward kernel computes it: with lse = 0 and the target in an extra column, the
    gradient of every other column is exp(x_c - lse) = exp(x_c)."""
    x = torch.cat([v, v.new_zeros(1)]).unsqueeze(0)
    lse = torch.zeros(1, dtype=torch.float64)
    grad, _ = _ops.cross_entropy_backward(torch.ones(1), x, torch.tensor([v.numel()]), None, lse, "none", -100, 0.0,
                                          [True, False])
    return grad[0, :-1]


def _exp_errors():
    """Max relative error of the kernel's float32 exp over the normal range, max absolute error over the
    subnormal results, and whether zeros, infinities and NaNs fall where torch.exp puts them."""
    special = [float("-inf"), float("inf"), float("nan"), -1e30, 1e30, -103.97, -103.98, 88.72, 88.73, 0.0, -0.0]
    v = torch.cat([torch.linspace(-110, 90, 400_001), torch.tensor(special)])
    ours, ref, exact = _kernel_exp(v), torch.exp(v), torch.exp(v.double())
    normal = (exact >= 2.0**-126) & (exact <= torch.finfo(torch.float32).max)
    rel = ((ours.double() - exact).abs() / exact)[normal].max().item()
    sub = ((ours.double() - exact).abs())[exact < 2.0**-126].max().item()
    same_specials = all(torch.equal(f(ours), f(ref)) for f in (lambda t: t == 0, torch.isinf, torch.isnan))
    return rel, sub, same_specials


def test_exp_is_float32_accurate_and_handles_extremes_like_torch():
    rel, sub, same_specials = _exp_errors()
    assert rel < 1.5 * 2.0**-23  # ~1 ulp
    assert sub <= 2.0**-149  # within one step of the subnormals
    assert same_specials  # exp(-inf) = exp(-104) = 0, exp(89) = exp(inf) = inf, NaN stays NaN


# Row lengths around the 8 lanes of a vector (tails of 1..7, none, several vectors), trailing dims
# (rows gathered from stride S), and the benchmark's sizes.
WIDE_SHAPES = [(5, 8), (6, 13), (3, 37), (4, 19, 3), (32, 10), (4, 1000)]


def _cases():
    """(name, input, target, kwargs) over WIDE_SHAPES, options and extreme logits, deterministic."""
    g = torch.Generator().manual_seed(11)
    out = []
    for shape in WIDE_SHAPES:
        C, row = shape[1], (shape[0], *shape[2:])
        x = torch.randn(*shape, generator=g) * 4
        y = torch.randint(C, row, generator=g)
        y.view(-1)[::4] = -100
        w = torch.rand(C, generator=g) + 0.5
        w[1] = 0.0  # a class of weight 0, with a -inf logit below
        probs = torch.softmax(torch.randn(*shape, generator=g), 1)
        for ls in (0.0, 0.2):
            for weight in (None, w):
                for red in ("none", "mean", "sum"):
                    kw = dict(weight=weight, label_smoothing=ls, reduction=red)
                    out.append((f"{shape} idx {ls} {weight is not None} {red}", x, y, kw))
                    out.append((f"{shape} prob {ls} {weight is not None} {red}", x, probs, kw))
        extreme = x.clone()
        extreme[:, 1] = float("-inf")  # a logit of -inf (not a target's: its loss would be inf)
        extreme[:, 2] = -1e4
        extreme[0, 0] = 3e4
        y_ok = torch.where(y == 1, 0, y)
        for ls in (0.0, 0.2):
            out.append((f"{shape} extreme idx {ls}", extreme, y_ok, dict(label_smoothing=ls)))
        out.append((f"{shape} extreme bf16", x.bfloat16(), y, dict(label_smoothing=0.1, weight=w.bfloat16())))
    return out


def _results(fn):
    """{name: (loss, grad of the input)} of ``fn`` (mF or F.cross_entropy) over _cases()."""
    out = {}
    for name, x, t, kw in _cases():
        x = x.clone().requires_grad_()
        loss = fn(x, t, **kw)
        (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
        out[name] = (loss.detach(), grad)
    return out


def _assert_close(got, ref, name):
    loss, grad = got
    tol = dict(atol=2e-2, rtol=2e-2) if loss.dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref[0], equal_nan=True, msg=lambda m: f"{name} loss: {m}", **tol)
    torch.testing.assert_close(grad, ref[1], equal_nan=True, msg=lambda m: f"{name} grad: {m}", **tol)


def test_wide_rows_and_extreme_logits_match_torch():
    ref = _results(F.cross_entropy)
    for name, got in _results(mF.cross_entropy).items():
        _assert_close(got, ref[name], name)


_CHILD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import test_cross_entropy_kernels as k
from manual_ops import functional as mF
torch.save({"results": k._results(mF.cross_entropy), "exp": k._exp_errors()}, sys.argv[2])
"""


def test_portable_kernels_match_the_avx2_ones_and_torch(tmp_path):
    home = os.path.dirname(os.path.dirname(os.path.abspath(manual_ops.__file__)))
    env = dict(os.environ, MANUAL_OPS_CPU_CAPABILITY="default",
               PYTHONPATH=os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")])))
    out = tmp_path / "portable.pt"
    subprocess.run([sys.executable, "-c", _CHILD, os.path.dirname(__file__), str(out)], env=env, check=True,
                   timeout=300)
    child = torch.load(out)
    rel, sub, same_specials = child["exp"]
    assert rel < 1.5 * 2.0**-23 and sub <= 2.0**-149 and same_specials
    ref, here = _results(F.cross_entropy), _results(mF.cross_entropy)
    for name, got in child["results"].items():
        _assert_close(got, ref[name], name)
        _assert_close(got, here[name], name)
