"""Functional ops with hand-written backward passes; names and signatures follow torch.nn.functional."""
from .ops.conv2d import Conv2dFunction, conv2d

__all__ = ["Conv2dFunction", "conv2d"]
