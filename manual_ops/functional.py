"""Functional ops with hand-written backward passes; names and signatures follow torch.nn.functional."""
from .ops.batch_norm import BatchNormFunction, batch_norm, clamped_batch_norm
from .ops.conv2d import Conv2dFunction, conv2d

__all__ = ["BatchNormFunction", "Conv2dFunction", "batch_norm", "clamped_batch_norm", "conv2d"]
