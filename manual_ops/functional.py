"""Functional ops with hand-written backward passes; names and signatures follow torch.nn.functional."""
from .ops.batch_norm import BatchNormFunction, batch_norm, clamped_batch_norm
from .ops.conv2d import Conv2dFunction, conv2d
from .ops.pooling import (
    AdaptiveAvgPool2dFunction,
    AvgPool2dFunction,
    MaxPool2dFunction,
    adaptive_avg_pool2d,
    avg_pool2d,
    max_pool2d,
    max_pool2d_with_indices,
)

__all__ = [
    "BatchNormFunction",
    "Conv2dFunction",
    "AdaptiveAvgPool2dFunction",
    "AvgPool2dFunction",
    "MaxPool2dFunction",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "clamped_batch_norm",
    "conv2d",
    "max_pool2d",
    "max_pool2d_with_indices",
]
