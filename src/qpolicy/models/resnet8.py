"""The MLPerf Tiny ResNet-8 for CIFAR-10 (the image-classification model of the MLPerf Tiny benchmark, Banbury et
al. 2021; the CIFAR model of Costa and Pinto's "David and Goliath"): a 3x3 stem and three residual stages of one
block each with 16/32/64 filters; stages 2 and 3 halve the resolution and their shortcut is a strided 1x1
convolution (with a bias, no BatchNorm, as in the reference Keras model). About 78k parameters, 12.5 M MACs.

There are no public PyTorch weights: ``qpolicy train --model resnet8`` trains it here and caches it.
"""

from __future__ import annotations

from torch import nn

from .resnet_cifar import BasicBlock, CifarTrunk

__all__ = ["ResNet8", "resnet8"]


class ResNet8(CifarTrunk):
    """Stages of one block each (``layer1..3``, module names ``layer1.conv1``, ...), strided 1x1 conv shortcuts."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1, conv_shortcut=True)
        self.layer2 = BasicBlock(16, 32, 2, conv_shortcut=True)
        self.layer3 = BasicBlock(32, 64, 2, conv_shortcut=True)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()


def resnet8(num_classes: int = 10) -> ResNet8:
    """The MLPerf Tiny ResNet-8 (random weights)."""
    return ResNet8(num_classes)
