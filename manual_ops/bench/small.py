"""Small tensors: every layer of the main job's network (resnet-small on scikit-learn's 8x8 digits,
batch 64), forward+backward, and its whole training step. Here the per-call cost of the Python
wrappers and the autograd wiring weighs as much as the kernels."""
import copy

import torch
import torch.nn.functional as F

from .. import functional as mF
from ..convert import convert
from ..models import build
from . import Case, forward_backward
from . import batch_norm as bn_bench
from . import conv as conv_bench
from . import pooling as pool_bench
from . import train_step

BATCH = 64
# resnet-small's convs on 1x8x8 input: (name, C_in, C_out, H=W, kernel, stride, padding)
CONVS = [
    ("stem 1->16 3x3 @8", 1, 16, 8, 3, 1, 1),
    ("16->16 3x3 @8", 16, 16, 8, 3, 1, 1),
    ("16->32 3x3 s2 @8", 16, 32, 8, 3, 2, 1),
    ("16->32 1x1 s2 @8", 16, 32, 8, 1, 2, 0),
    ("32->32 3x3 @4", 32, 32, 4, 3, 1, 1),
    ("32->64 3x3 s2 @4", 32, 64, 4, 3, 2, 1),
    ("64->64 3x3 @2", 64, 64, 2, 3, 1, 1),
]
BATCH_NORMS = [("bn C16 @8", 16, 8), ("bn C32 @4", 32, 4), ("bn C64 @2", 64, 2)]


def _randn(*shape, dtype):
    return torch.randn(*shape).to(dtype).requires_grad_()


def cases(dtype=torch.float32):
    out = []
    for name, cin, cout, hw, k, s, p in CONVS:
        ours, builtin = conv_bench._case(name, cin, cout, hw, k, s, p, BATCH, torch.contiguous_format, dtype)
        out.append(Case("small", f"conv {name}", ours, builtin, flops=conv_bench.flops(BATCH, cin, cout, hw, k, s, p)))
    for name, c, hw in BATCH_NORMS:
        x = _randn(BATCH, c, hw, hw, dtype=dtype)
        weight, bias = torch.rand(c).add_(0.5).requires_grad_(), torch.randn(c).requires_grad_()
        grad = torch.randn_like(x)
        out.append(Case("small", name, bn_bench._step(mF.batch_norm, x, weight, bias, torch.zeros(c), torch.ones(c), grad),
                        bn_bench._step(F.batch_norm, x, weight, bias, torch.zeros(c), torch.ones(c), grad)))
    a = _randn(BATCH, 16, 8, 8, dtype=dtype)
    ga = torch.randn_like(a)
    out.append(Case("small", f"relu {tuple(a.shape)}", forward_backward(lambda: mF.relu(a), (a,), ga),
                    forward_backward(lambda: F.relu(a), (a,), ga)))
    adaptive = lambda f: lambda x: f.adaptive_avg_pool2d(x, 1)  # noqa: E731
    out.append(pool_bench._case("adaptive avg ->1x1", adaptive, (BATCH, 64, 2, 2), torch.contiguous_format, dtype,
                                family="small"))
    x, w, b = _randn(BATCH, 64, dtype=dtype), _randn(10, 64, dtype=dtype), _randn(10, dtype=dtype)
    g = torch.randn(BATCH, 10).to(dtype)
    out.append(Case("small", "linear (64,64)->(10)", forward_backward(lambda: mF.linear(x, w, b), (x, w, b), g),
                    forward_backward(lambda: F.linear(x, w, b), (x, w, b), g)))
    logits, target = _randn(BATCH, 10, dtype=dtype), torch.randint(10, (BATCH,))
    out.append(Case("small", "cross_entropy (64,10)", forward_backward(lambda: mF.cross_entropy(logits, target), (logits,)),
                    forward_backward(lambda: F.cross_entropy(logits, target), (logits,))))
    torch.manual_seed(0)
    builtin = build("resnet-small", in_channels=1, num_classes=10, input_size=8)
    ours = convert(copy.deepcopy(builtin))
    images, labels = torch.randn(BATCH, 1, 8, 8), torch.randint(0, 10, (BATCH,))
    out.append(Case("small", f"resnet-small step, batch {BATCH}, 1x8x8",
                    train_step._step(ours, mF.cross_entropy, images, labels, dtype),
                    train_step._step(builtin, F.cross_entropy, images, labels, dtype)))
    return out
