"""The activations' forward+backward at a ResNet-stage-like size (32, 64, 32, 32), and their in-place forms."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward

# name -> (ours, built-in, has an in-place form)
ACTIVATIONS = {
    "sigmoid": (mF.sigmoid, torch.sigmoid, False),
    "tanh": (mF.tanh, torch.tanh, False),
    "silu": (mF.silu, F.silu, True),
    "gelu": (mF.gelu, F.gelu, False),
    "gelu tanh": (lambda x: mF.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), False),
    "leaky_relu": (mF.leaky_relu, F.leaky_relu, True),
    "elu": (mF.elu, F.elu, True),
    "relu6": (mF.relu6, F.relu6, True),
    "hardswish": (mF.hardswish, F.hardswish, True),
    "hardsigmoid": (mF.hardsigmoid, F.hardsigmoid, True),
    "softplus": (mF.softplus, F.softplus, False),
}


def cases(dtype=torch.float32):
    a = torch.randn(32, 64, 32, 32, dtype=dtype, requires_grad=True)
    ga = torch.randn_like(a)
    out = []
    for name, (ours, builtin, inplace) in ACTIVATIONS.items():
        out.append(Case("act", f"{name} {tuple(a.shape)}", forward_backward(lambda f=ours: f(a), (a,), ga),
                        forward_backward(lambda f=builtin: f(a), (a,), ga)))
        if inplace:
            out.append(Case("act", f"{name}_ after add", forward_backward(lambda f=ours: f(a + 1.0, inplace=True), (a,), ga),
                            forward_backward(lambda f=builtin: f(a + 1.0, inplace=True), (a,), ga)))
    return out
