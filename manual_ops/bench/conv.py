"""conv2d forward+backward on the ResNet-18 CIFAR layer shapes, batch 32."""
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


def cases(batch: int = 32, memory_format=torch.contiguous_format):
    out = []
    for name, cin, cout, hw, k, s, p in SHAPES:
        x = torch.randn(batch, cin, hw, hw).to(memory_format=memory_format).requires_grad_()
        w = (torch.randn(cout, cin, k, k) * (2 / (cin * k * k)) ** 0.5).requires_grad_()
        grad = torch.randn_like(F.conv2d(x, w, None, s, p))
        ours = forward_backward(lambda x=x, w=w, s=s, p=p: mF.conv2d(x, w, None, s, p), (x, w), grad)
        builtin = forward_backward(lambda x=x, w=w, s=s, p=p: F.conv2d(x, w, None, s, p), (x, w), grad)
        out.append(Case("conv", name, ours, builtin))
    return out
