"""linear, relu and cross_entropy forward+backward at ResNet-head-like sizes."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward


def _step(fn, leaves, make_loss):
    # No grad given: the backward runs on the output's sum (scalar losses pass through unchanged).
    return forward_backward(lambda: make_loss(fn), leaves)


def _randn(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def cases(dtype=torch.float32):
    out = []
    x, w, b = _randn(32, 512, dtype=dtype), _randn(10, 512, dtype=dtype), _randn(10, dtype=dtype)
    g = torch.randn(32, 10, dtype=dtype)
    out.append(Case("basic", "linear (32,512)->(10)", _step(mF.linear, (x, w, b), lambda f: f(x, w, b) * g),
                    _step(F.linear, (x, w, b), lambda f: f(x, w, b) * g)))
    x2, w2 = _randn(256, 512, dtype=dtype), _randn(1000, 512, dtype=dtype)
    g2 = torch.randn(256, 1000, dtype=dtype)
    out.append(Case("basic", "linear (256,512)->(1000)", _step(mF.linear, (x2, w2), lambda f: f(x2, w2) * g2),
                    _step(F.linear, (x2, w2), lambda f: f(x2, w2) * g2)))
    a = _randn(32, 64, 32, 32, dtype=dtype)
    ga = torch.randn_like(a)
    out.append(Case("basic", "relu (32,64,32,32)", _step(mF.relu, (a,), lambda f: f(a) * ga),
                    _step(F.relu, (a,), lambda f: f(a) * ga)))
    out.append(Case("basic", "relu_ (32,64,32,32) after add",
                    _step(mF.relu, (a,), lambda f: f(a + 1.0, inplace=True) * ga),
                    _step(F.relu, (a,), lambda f: f(a + 1.0, inplace=True) * ga)))
    for n, c in ((32, 10), (256, 1000)):
        logits, target = _randn(n, c, dtype=dtype), torch.randint(c, (n,))
        out.append(Case("basic", f"cross_entropy ({n},{c})",
                        _step(mF.cross_entropy, (logits,), lambda f, l=logits, t=target: f(l, t)),
                        _step(F.cross_entropy, (logits,), lambda f, l=logits, t=target: f(l, t))))
    logits = _randn(256, 1000, dtype=dtype)
    target = torch.randint(1000, (256,))
    out.append(Case("basic", "cross_entropy (256,1000) smoothing 0.1",
                    _step(mF.cross_entropy, (logits,), lambda f: f(logits, target, label_smoothing=0.1)),
                    _step(F.cross_entropy, (logits,), lambda f: f(logits, target, label_smoothing=0.1))))
    return out
