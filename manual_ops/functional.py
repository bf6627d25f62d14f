"""Functional ops with hand-written backward passes; names and signatures follow torch.nn.functional."""
from .ops.activation import (
    ActivationFunction,
    elu,
    gelu,
    hardsigmoid,
    hardswish,
    hardtanh,
    leaky_relu,
    relu6,
    sigmoid,
    silu,
    softplus,
    tanh,
)
from .ops.batch_norm import BatchNormFunction, batch_norm, clamped_batch_norm
from .ops.conv1d import conv1d
from .ops.conv2d import Conv2dFunction, conv2d
from .ops.conv_transpose2d import ConvTranspose2dFunction, conv_transpose2d
from .ops.cross_entropy import CrossEntropyFunction, cross_entropy
from .ops.dropout import DropoutFunction, dropout, dropout2d
from .ops.group_norm import GroupNormFunction, group_norm
from .ops.instance_norm import instance_norm
from .ops.layer_norm import LayerNormFunction, layer_norm
from .ops.linear import LinearFunction, linear
from .ops.pooling import (
    AdaptiveAvgPool2dFunction,
    AvgPool2dFunction,
    MaxPool2dFunction,
    adaptive_avg_pool2d,
    avg_pool2d,
    max_pool2d,
    max_pool2d_with_indices,
)
from .ops.relu import ReLUFunction, relu
from .ops.sync_batch_norm import SyncBatchNormFunction, sync_batch_norm

__all__ = [
    "ActivationFunction",
    "AdaptiveAvgPool2dFunction",
    "AvgPool2dFunction",
    "BatchNormFunction",
    "Conv2dFunction",
    "ConvTranspose2dFunction",
    "CrossEntropyFunction",
    "DropoutFunction",
    "GroupNormFunction",
    "LayerNormFunction",
    "LinearFunction",
    "MaxPool2dFunction",
    "ReLUFunction",
    "SyncBatchNormFunction",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "clamped_batch_norm",
    "conv1d",
    "conv2d",
    "conv_transpose2d",
    "cross_entropy",
    "dropout",
    "dropout2d",
    "elu",
    "gelu",
    "group_norm",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "instance_norm",
    "layer_norm",
    "leaky_relu",
    "linear",
    "max_pool2d",
    "max_pool2d_with_indices",
    "relu",
    "relu6",
    "sigmoid",
    "silu",
    "softplus",
    "sync_batch_norm",
    "tanh",
]
