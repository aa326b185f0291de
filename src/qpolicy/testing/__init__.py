"""Tiny seeded models and data for tests and plugin authors (fast on a CPU, checkable by hand)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import ArrayDataset, ArrayLoader

__all__ = ["TinyConvNet", "ThreeLayerNet", "random_dataset", "random_loader", "write_cifar_npz"]


class TinyConvNet(nn.Module):
    """conv -> BN -> ReLU -> depthwise conv -> BN -> ReLU -> 1x1 conv -> pool -> linear, on 3 x 8 x 8 inputs."""

    input_shape = (3, 8, 8)

    def __init__(self, num_classes: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for bn in (self.bn1, self.bn2):
                bn.weight.fill_(1.0)
                bn.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (N, 8, 8, 8)
        x = torch.relu(self.bn2(self.dw(x)))  # (N, 8, 8, 8)
        x = self.pw(x).mean(dim=(2, 3))  # (N, 16)
        return self.fc(x)


class ThreeLayerNet(nn.Module):
    """Three layers whose costs are easy to check by hand on 1 x 4 x 4 inputs:

    * ``a``: Conv2d(1, 2, 3, padding=1): 18 weights, 2*4*4 outputs x 9 = 288 MACs
    * ``b``: Conv2d(2, 4, 1): 8 weights, 4*4*4 outputs x 2 = 128 MACs
    * ``c``: Linear(64, 3): 192 weights, 192 MACs
    """

    input_shape = (1, 4, 4)

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.b = nn.Conv2d(2, 4, 1, bias=False)
        self.c = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


def random_dataset(n: int = 64, *, size: int = 8, num_classes: int = 4, seed: int = 0) -> ArrayDataset:
    """Random uint8 images whose label is a simple function of the image (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = (images[..., 0].mean(axis=(1, 2)) // (256 / num_classes)).astype(np.int64).clip(0, num_classes - 1)
    return ArrayDataset(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                        classes=tuple(str(i) for i in range(num_classes)), source="random")


def random_loader(n: int = 64, *, batch_size: int = 16, size: int = 8, num_classes: int = 4, seed: int = 0,
                  shuffle: bool = False, augment: bool = False) -> ArrayLoader:
    from ..datasets import normalization

    mean, std = normalization()  # the default data set's, as the zoo models expect
    return ArrayLoader(random_dataset(n, size=size, num_classes=num_classes, seed=seed), batch_size=batch_size,
                       shuffle=shuffle, augment=augment, seed=seed, mean=mean, std=std)


def write_cifar_npz(folder, *, train: int = 128, test: int = 64, seed: int = 0) -> None:
    """Write a CIFAR-10-shaped ``cifar10/{train,test}.npz`` of random images under ``folder``."""
    from pathlib import Path

    out = Path(folder) / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        ds = random_dataset(n, size=32, num_classes=10, seed=seed + (split == "test"))
        np.savez(out / f"{split}.npz", images=ds.images.numpy(), labels=ds.labels.numpy(),
                 classes=np.array([f"class{i}" for i in range(10)]), files=np.array([f"{i}.png" for i in range(n)]))


def digits_arrays(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real handwritten digits (8x8, shipped with scikit-learn, no download) as uint8 images
    (N, size, size) scaled from 0..16 to 0..255 (nearest-neighbour upscaled when ``size`` > 8) and labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    if size != 8:
        if size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        imgs = imgs.repeat(size // 8, axis=1).repeat(size // 8, axis=2)
    return imgs, d.target.astype(np.int64)


def write_digits(folder, *, fmt: str = "imagefolder", size: int = 8, limit: int | None = None) -> str:
    """Write the digits (:func:`digits_arrays`) under ``folder`` as an image folder (``<class>/<i>.png``) or as
    one npz file (``digits.npz``: images, labels, classes); returns the ``--data`` spec that reads them."""
    from pathlib import Path

    imgs, labels = digits_arrays(size)
    if limit is not None:
        imgs, labels = imgs[:limit], labels[:limit]
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        path = root / "digits.npz"
        np.savez(path, images=imgs, labels=labels, classes=np.array([str(i) for i in range(10)]))
        return f"npz:{path}"
    if fmt != "imagefolder":
        raise ValueError(f"fmt must be imagefolder or npz, got {fmt!r}")
    from PIL import Image

    for i, (im, y) in enumerate(zip(imgs, labels, strict=True)):
        d = root / str(int(y))
        d.mkdir(exist_ok=True)
        Image.fromarray(im).save(d / f"{i:04d}.png")
    return f"imagefolder:{root}"
