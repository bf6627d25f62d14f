"""Functional ops with hand-written backward passes; names and signatures follow torch.nn.functional."""
from .ops.conv2d import Conv2dFunction, conv2d
from .ops.cross_entropy import CrossEntropyFunction, cross_entropy
from .ops.linear import LinearFunction, linear
from .ops.relu import ReLUFunction, relu

__all__ = [
    "Conv2dFunction", "conv2d",
    "CrossEntropyFunction", "cross_entropy",
    "LinearFunction", "linear",
    "ReLUFunction", "relu",
]
