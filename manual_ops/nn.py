"""Modules with hand-written backward passes; names, arguments and state_dicts follow torch.nn."""
from .modules.batch_norm import BatchNorm2d, ClampedBatchNorm2d
from .modules.conv import Conv2d

__all__ = ["BatchNorm2d", "ClampedBatchNorm2d", "Conv2d"]
