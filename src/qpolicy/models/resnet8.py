"""The MLPerf Tiny ResNet-8 for CIFAR-10 (the image-classification model of the MLPerf Tiny benchmark, Banbury et
al. 2021; the CIFAR model of Costa and Pinto's "David and Goliath"): a 3x3 stem and three residual stages of one
block each with 16/32/64 filters; stages 2 and 3 halve the resolution and their shortcut is a strided 1x1
convolution (with a bias, no BatchNorm, as in the reference Keras model). About 78k parameters, 12.5 M MACs.

There are no public PyTorch weights: ``qpolicy train --model resnet8`` trains it here and caches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNet8", "resnet8"]


class _Stack(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True)
                         if stride != 1 or in_planes != planes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _Stack(16, 16, 1)
        self.layer2 = _Stack(16, 32, 2)
        self.layer3 = _Stack(32, 64, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, 64, 8, 8)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet8(num_classes: int = 10) -> ResNet8:
    """The MLPerf Tiny ResNet-8 (random weights)."""
    return ResNet8(num_classes)
