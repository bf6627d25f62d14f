"""Modules with hand-written backward passes; names, arguments and state_dicts follow torch.nn."""
from .modules.activation import (
    ELU,
    GELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    ReLU,
    ReLU6,
    SiLU,
    Sigmoid,
    Softplus,
    Tanh,
)
from .modules.batch_norm import BatchNorm2d, ClampedBatchNorm2d
from .modules.conv import Conv1d, Conv2d, ConvTranspose2d
from .modules.dropout import Dropout, Dropout2d
from .modules.linear import Linear
from .modules.loss import CrossEntropyLoss
from .modules.normalization import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
from .modules.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .modules.sync_batch_norm import ClampedSyncBatchNorm, SyncBatchNorm

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "ClampedBatchNorm2d",
    "ClampedSyncBatchNorm",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout2d",
    "ELU",
    "GELU",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "SyncBatchNorm",
    "Tanh",
]
