"""CIFAR ResNets (He et al., 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 channels, option-A
(parameter-free, zero-padding) shortcuts. Module names match the checkpoints of the akamaster
``pytorch_resnet_cifar10`` repository (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNet", "CifarTrunk", "BasicBlock", "PadShortcut", "cifar_resnet"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))  # (N, C + extra, H/2, W/2)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut: option A (zero padding), or with ``conv_shortcut`` a
    strided 1x1 convolution with a bias (MLPerf Tiny's ResNet-8), where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, conv_shortcut: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif conv_shortcut:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True)
        else:
            self.shortcut = PadShortcut(planes - in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarTrunk(nn.Module):
    """What the CIFAR ResNets share: a 3x3 stem (``conv1``, ``bn1``), stages ``layer1..3`` ending in 64 channels,
    global average pooling and ``linear``; Kaiming-normal initial weights."""

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, 64, 8, 8)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 64)
        return self.linear(out)


class CifarResNet(CifarTrunk):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for 32x32 inputs; ``depth`` = 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes)
