"""conv2d forward+backward on the ResNet-18 CIFAR layer shapes, batch 32 (float32 or bfloat16)."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward

# (name, C_in, C_out, H=W, kernel, stride, padding)
SHAPES = [
    ("stem 3->64 3x3 @32", 3, 64, 32, 3, 1, 1),
    ("64->64 3x3 @32", 64, 64, 32, 3, 1, 1),
    ("64->128 3x3 s2 @32", 64, 128, 32, 3, 2, 1),
    ("64->128 1x1 s2 @32", 64, 128, 32, 1, 2, 0),
    ("128->128 3x3 @16", 128, 128, 16, 3, 1, 1),
    ("128->256 3x3 s2 @16", 128, 256, 16, 3, 2, 1),
    ("128->256 1x1 s2 @16", 128, 256, 16, 1, 2, 0),
    ("256->256 3x3 @8", 256, 256, 8, 3, 1, 1),
    ("256->512 3x3 s2 @8", 256, 512, 8, 3, 2, 1),
    ("256->512 1x1 s2 @8", 256, 512, 8, 1, 2, 0),
    ("512->512 3x3 @4", 512, 512, 4, 3, 1, 1),
]


def flops(batch, cin, cout, hw, k, s, p):
    """Of one forward+backward: the forward's 2 N Cout Cin k^2 OH OW, and as many again for each of dX
    and dW (the same products, summed in other orders)."""
    out = (hw + 2 * p - k) // s + 1
    return 3 * 2 * batch * cout * cin * k * k * out * out


def _case(name, cin, cout, hw, k, s, p, batch, memory_format, dtype):
    """Ours and the built-in, forward+backward, in `dtype`."""
    x = torch.randn(batch, cin, hw, hw).to(dtype=dtype, memory_format=memory_format).requires_grad_()
    w = (torch.randn(cout, cin, k, k) * (2 / (cin * k * k)) ** 0.5).to(dtype).requires_grad_()
    grad = torch.randn_like(F.conv2d(x.detach().float(), w.detach().float(), None, s, p)).to(dtype)
    ours = forward_backward(lambda: mF.conv2d(x, w, None, s, p), (x, w), grad)
    builtin = forward_backward(lambda: F.conv2d(x, w, None, s, p), (x, w), grad)
    return ours, builtin


def cases(batch: int = 32, memory_format=torch.contiguous_format, dtype=torch.float32):
    out = []
    for name, cin, cout, hw, k, s, p in SHAPES:
        ours, builtin = _case(name, cin, cout, hw, k, s, p, batch, memory_format, dtype)
        ours_fp32 = None
        if dtype != torch.float32:  # our own float32 run of the same shape, for the ratio of the two
            ours_fp32, _ = _case(name, cin, cout, hw, k, s, p, batch, memory_format, torch.float32)
        out.append(Case("conv", name, ours, builtin, ours_fp32=ours_fp32, flops=flops(batch, cin, cout, hw, k, s, p)))
    return out
