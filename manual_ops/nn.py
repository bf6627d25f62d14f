"""Modules with hand-written backward passes; names, arguments and state_dicts follow torch.nn."""
from .modules.conv import Conv2d
from .modules.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["Conv2d", "AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d"]
