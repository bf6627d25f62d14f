"""One whole training step (forward, backward, SGD step) of ResNet-18 and VGG-11-BN, CIFAR-sized,
with model and input in NCHW and in channels_last (each against the built-in in the same format).

The built-in model and its converted copy start from the same weights and see the same batch;
ours also uses manual_ops' cross-entropy, so no built-in backward runs in our step. In a
low-precision dtype the step runs under autocast to it (float32 parameters), as mixed-precision
training does.
"""
import copy

import torch
import torch.nn.functional as F

from .. import functional as mF
from ..convert import convert
from ..models import build
from . import Case

MODELS = ("resnet18", "vgg11")


def _step(model, loss_fn, x, target, dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
    return run


FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def cases(batch: int = 32, formats=tuple(FORMATS), dtype=torch.float32):
    out = []
    for name, fmt in ((m, f) for f in formats for m in MODELS):
        memory_format = FORMATS[fmt]
        torch.manual_seed(0)
        builtin = build(name, in_channels=3, num_classes=10, input_size=32).to(memory_format=memory_format)
        ours = convert(copy.deepcopy(builtin))
        x = torch.randn(batch, 3, 32, 32).to(memory_format=memory_format)
        target = torch.randint(0, 10, (batch,))
        out.append(Case("train", f"{name} step, batch {batch}, {fmt}", _step(ours, mF.cross_entropy, x, target, dtype),
                        _step(builtin, F.cross_entropy, x, target, dtype), memory=True))
    return out
