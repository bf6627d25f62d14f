"""Pooling forward+backward on the ResNet/VGG pooling shapes, batch 32."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward

# (name, ours, built-in, input shape); each pool is called as pool(x).
POOLS = [
    ("max 3x3 s2 p1", lambda f: lambda x: f.max_pool2d(x, 3, 2, 1)),
    ("max 2x2 s2", lambda f: lambda x: f.max_pool2d(x, 2, 2)),
    ("avg 2x2 s2", lambda f: lambda x: f.avg_pool2d(x, 2, 2)),
]
FIXED_SHAPES = [(32, 64, 32, 32), (32, 128, 16, 16)]
ADAPTIVE_SHAPES = [(32, 512, 4, 4), (32, 256, 8, 8)]


def _case(name, make, shape, memory_format, dtype, family="pool"):
    x = torch.randn(shape).to(dtype=dtype, memory_format=memory_format).requires_grad_()
    ours, builtin = make(mF), make(F)
    grad = torch.randn_like(builtin(x))
    return Case(family, f"{name} {tuple(shape)}", forward_backward(lambda: ours(x), (x,), grad),
                forward_backward(lambda: builtin(x), (x,), grad))


def cases(memory_format=torch.contiguous_format, dtype=torch.float32):
    out = [_case(name, make, shape, memory_format, dtype) for name, make in POOLS for shape in FIXED_SHAPES]
    adaptive = lambda f: lambda x: f.adaptive_avg_pool2d(x, 1)  # noqa: E731
    out += [_case("adaptive avg ->1x1", adaptive, shape, memory_format, dtype) for shape in ADAPTIVE_SHAPES]
    return out
