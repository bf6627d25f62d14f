"""CIFAR-style ResNet and VGG-with-BN, written with torch.nn layers in torchvision's style, and the lecture
notes' LeNet-5 (sigmoids and average pooling).

They are plain ``torch.nn`` models (``ReLU(inplace=True)``, nested ``Sequential``s,
``torch.flatten`` in ``forward``), so :func:`manual_ops.convert` has real work to do on them.
All take 1- or 3-channel inputs of any size from 8x8 up; the ResNets and VGGs end in ``AdaptiveAvgPool2d``.
"""
import torch
from torch import nn

from ._utils import pair


def _conv3x3(in_planes, planes, stride=1):
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the input (projected by a 1x1 conv-BN when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def _init(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stride-1 stem without max-pool, then stages of BasicBlocks, the
    first block of every stage after the first striding by 2."""

    def __init__(self, blocks_per_stage, widths, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], widths[0]
        for i, (n, planes) in enumerate(zip(blocks_per_stage, widths)):
            blocks = [BasicBlock(in_planes if j == 0 else planes, planes, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with batch norm: conv3x3-BN-ReLU layers and 2x2 max-pools, a global average pool and one
    linear classifier. A max-pool is left out once the feature map (from ``input_size``) is below
    2x2, so small inputs such as 8x8 digits still fit."""

    def __init__(self, config, in_channels=3, num_classes=10, input_size=32):
        super().__init__()
        layers, channels, (h, w) = [], in_channels, pair(input_size, "input_size")
        for v in config:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Linear(channels, num_classes))
        _init(self)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class LeNet5(nn.Module):
    """LeNet-5 as the lecture notes (seed 003) derive it by hand: 5x5 convolutions and 2x2 average pooling
    with sigmoid activations, then three linear layers (120, 84, classes) with sigmoids between them.

    Both convolutions pad by 2, so that every input from 8x8 up keeps its size through them (the 8x8 digits
    end in 2x2 maps; LeNet-5 of 1998 has a valid second convolution on 32x32 inputs). The logits are left
    without a sigmoid, for the cross-entropy loss (the notes' squared error over sigmoid outputs trains
    more slowly, and is what notebooks/07_lenet5_backward.ipynb works through by hand).
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=(32, 32)):
        super().__init__()
        h, w = input_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * (h // 4) * (w // 4), 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
            nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def lenet5(in_channels=3, num_classes=10, input_size=32):
    return LeNet5(in_channels, num_classes, input_size)


def resnet18(in_channels=3, num_classes=10, input_size=32):
    """CIFAR-style ResNet-18: stages of 2 BasicBlocks at widths 64, 128, 256, 512 (11M parameters)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes)


def resnet_small(in_channels=3, num_classes=10, input_size=32):
    """A small ResNet for quick runs: one BasicBlock per stage at widths 16, 32, 64 (78k parameters)."""
    return ResNet([1, 1, 1], [16, 32, 64], in_channels, num_classes)


def vgg11(in_channels=3, num_classes=10, input_size=32):
    return VGG(VGG_CONFIGS["vgg11"], in_channels, num_classes, input_size)


def vgg16(in_channels=3, num_classes=10, input_size=32):
    return VGG(VGG_CONFIGS["vgg16"], in_channels, num_classes, input_size)


MODELS = {"resnet18": resnet18, "resnet-small": resnet_small, "vgg11": vgg11, "vgg16": vgg16, "lenet5": lenet5}


def build(name, in_channels=3, num_classes=10, input_size=32):
    """The model ``name`` (one of :data:`MODELS`), built with torch.nn layers.

    Raises ValueError for an unknown name or an input smaller than 8x8.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    h, w = pair(input_size, "input_size")
    if min(h, w) < 8:
        raise ValueError(f"{name} needs inputs of at least 8x8, but got input_size=({h}, {w})")
    return MODELS[name](in_channels, num_classes, (h, w))
