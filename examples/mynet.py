import torch
from torch import nn


class MyNet(nn.Module):
    """A small CNN with a residual and a depthwise block."""

    def __init__(self, classes=10, width=16, channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU(), nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.dw(x)
        return self.head(x.mean((2, 3)))


def factory(classes=10, width=16):
    return MyNet(classes, width)
