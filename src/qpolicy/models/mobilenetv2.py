"""MobileNetV2 (Sandler et al., 2018) with inverted residuals and linear bottlenecks.

``mobilenetv2(image_size=224)`` is the ImageNet network (module names follow the common torchvision layout:
``features.N``, ``classifier.1``); ``image_size=32`` keeps the stem and the first downsampling stage at stride 1,
the usual adaptation to 32x32 inputs (total stride 8 instead of 32).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MobileNetV2", "mobilenetv2"]

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, image_size: int = 224, dropout: float = 0.2):
        super().__init__()
        small = image_size <= 64
        cin = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=1 if small else 2)]
        for i, (t, c, n, s) in enumerate(_CONFIG):
            cout = _divisible(c * width_mult)
            if small and i == 1:
                s = 1  # 32x32 inputs: keep resolution through the second stage as well
            for j in range(n):
                features.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU(cin, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1280, H/32, W/32) at 224, (N, 1280, 4, 4) at 32
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenetv2(num_classes: int = 1000, *, width_mult: float = 1.0, image_size: int = 224) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, image_size=image_size)
