"""group_norm and layer_norm forward+backward at the shapes where networks use them: GroupNorm on ResNet-18
CIFAR stages (batch 32, 32 groups, as ResNets trained with GroupNorm use), LayerNorm over the channels of a
ConvNeXt-T stage (its LayerNorm2d: rows of C values, batch 32 at 56x56/4) and over a ViT-B/16 token (197
tokens of 768, batch 32)."""
import torch
import torch.nn.functional as F

from .. import functional as mF
from . import Case, forward_backward

# (name, C, H=W)
GROUP_SHAPES = [("C64 @32", 64, 32), ("C128 @16", 128, 16), ("C256 @8", 256, 8)]
# (name, rows' leading shape, normalized_shape)
LAYER_SHAPES = [("ConvNeXt C96 @14", (32, 14, 14), (96,)), ("ConvNeXt C384 @7", (32, 7, 7), (384,)),
                ("ViT-B tokens", (32, 197), (768,))]


def cases(dtype=torch.float32):
    """In a low-precision dtype the input is of that dtype and weight and bias float32, as under autocast."""
    out = []
    for name, c, hw in GROUP_SHAPES:
        x = torch.randn(32, c, hw, hw, dtype=dtype, requires_grad=True)
        weight, bias = torch.rand(c).add_(0.5).requires_grad_(), torch.randn(c).requires_grad_()
        grad = torch.randn_like(x)
        out.append(Case("norm", f"group_norm {name}",
                        forward_backward(lambda x=x, w=weight, b=bias: mF.group_norm(x, 32, w, b), (x, weight, bias), grad),
                        forward_backward(lambda x=x, w=weight, b=bias: F.group_norm(x, 32, w, b), (x, weight, bias), grad)))
    for name, lead, shape in LAYER_SHAPES:
        x = torch.randn(*lead, *shape, dtype=dtype, requires_grad=True)
        weight, bias = torch.rand(shape).add_(0.5).requires_grad_(), torch.randn(shape).requires_grad_()
        grad = torch.randn_like(x)
        out.append(Case("norm", f"layer_norm {name}",
                        forward_backward(lambda x=x, s=shape, w=weight, b=bias: mF.layer_norm(x, s, w, b),
                                         (x, weight, bias), grad),
                        forward_backward(lambda x=x, s=shape, w=weight, b=bias: F.layer_norm(x, s, w, b),
                                         (x, weight, bias), grad)))
    return out
