"""batch_norm forward+backward in training mode on the ResNet-18 CIFAR shapes, batch 32."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward

# (name, C, H=W)
SHAPES = [("C64 @32", 64, 32), ("C128 @16", 128, 16), ("C256 @8", 256, 8), ("C512 @4", 512, 4)]


def _step(bn, x, weight, bias, running_mean, running_var, grad):
    return forward_backward(lambda: bn(x, running_mean, running_var, weight, bias, True), (x, weight, bias), grad)


def cases(batch: int = 32, memory_format=torch.contiguous_format, dtype=torch.float32):
    """In a low-precision dtype, the input is of that dtype and weight, bias and stats float32, as under autocast."""
    out = []
    for name, c, hw in SHAPES:
        x = torch.randn(batch, c, hw, hw).to(dtype=dtype, memory_format=memory_format).requires_grad_()
        weight, bias = torch.rand(c).add_(0.5).requires_grad_(), torch.randn(c).requires_grad_()
        grad = torch.randn_like(x)
        ours = _step(mF.batch_norm, x, weight, bias, torch.zeros(c), torch.ones(c), grad)
        builtin = _step(F.batch_norm, x, weight, bias, torch.zeros(c), torch.ones(c), grad)
        out.append(Case("bn", name, ours, builtin))
    return out
