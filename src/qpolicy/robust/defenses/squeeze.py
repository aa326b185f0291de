"""Feature squeezing (Xu et al. 2018): reduce the colour bit depth and median-filter the image before classifying,
and detect adversarial examples by how much squeezing changes the prediction.

The classifier defense is both squeezers in front of the model (:class:`Squeezer`; the non-differentiable rounding
passes gradients straight through, so an adaptive attacker can still follow them). The detector scores an image
by the largest L1 distance between the model's softmax on it and on each squeezed version
(:func:`detection_scores`), and flags scores above a threshold set on clean validation images so that a chosen
fraction of them (5%) is flagged (:func:`calibrate_threshold`). CIFAR-10 settings of the paper: 5-bit depth and a
2 x 2 median filter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from . import DEFENSES, DefenseSpec

__all__ = ["SqueezeConfig", "BitDepth", "MedianFilter", "Squeezer", "detection_scores", "calibrate_threshold"]


class BitDepth(nn.Module):
    """Round pixel values to ``bits`` bits (2^bits levels in [0, 1]); the gradient passes straight through."""

    def __init__(self, bits: int):
        super().__init__()
        self.levels = 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * self.levels) / self.levels
        return x + (q - x).detach()


class MedianFilter(nn.Module):
    """A ``size`` x ``size`` median filter per channel (reflect padding; an even size pads one more on the
    bottom/right, as scipy's ``median_filter`` centres it)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        if k <= 1:
            return x
        lo, hi = (k - 1) // 2, k // 2
        p = F.pad(x, (lo, hi, lo, hi), mode="reflect")
        patches = p.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H, W, k, k
        return patches.reshape(*patches.shape[:4], -1).median(dim=-1).values


@dataclass(frozen=True, kw_only=True)
class SqueezeConfig:
    """bits: colour bit depth; median: median-filter size; fpr: the detector's false-positive rate on clean
    validation images (its threshold); calib_images: how many validation images set it."""

    bits: int = 5
    median: int = 2
    fpr: float = 0.05
    calib_images: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in 1..8, got {self.bits!r}")
        if isinstance(self.median, bool) or not isinstance(self.median, int) or not 1 <= self.median <= 5:
            raise ConfigError(f"median must be an integer in 1..5 (1: off), got {self.median!r}")
        if not isinstance(self.fpr, (int, float)) or not 0 < self.fpr < 1:
            raise ConfigError(f"fpr must be in (0, 1), got {self.fpr!r}")
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int) or self.calib_images < 20:
            raise ConfigError(f"calib_images must be an integer >= 20, got {self.calib_images!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Squeezer(nn.Module):
    """Bit-depth reduction then the median filter (pixel space)."""

    def __init__(self, bits: int = 5, median: int = 2):
        super().__init__()
        self.depth = BitDepth(bits)
        self.median = MedianFilter(median)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.median(self.depth(x))


def detection_scores(model: nn.Module, images: torch.Tensor, options: SqueezeConfig, *,
                     device: str | torch.device | None = None, batch: int = 500) -> np.ndarray:
    """Per image, max over the squeezers of ||softmax f(x) - softmax f(squeeze(x))||_1 (pixel-space images)."""
    from ...evaluate import resolve_device
    from ..attacks import PixelModel

    dev = resolve_device(device)
    net = PixelModel(model).to(dev).eval()
    squeezers = [BitDepth(options.bits), MedianFilter(options.median)]
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.as_tensor(images[i:i + batch]).float().to(dev)
            p = F.softmax(net(x), 1)
            d = torch.stack([(p - F.softmax(net(s(x)), 1)).abs().sum(1) for s in squeezers]).max(0).values
            out.append(d.cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def calibrate_threshold(clean_scores: np.ndarray, fpr: float) -> float:
    """The threshold that flags a fraction ``fpr`` of clean images: their (1 - fpr) quantile (a score above it is
    flagged). With n scores, at most floor(fpr * n) clean images lie strictly above it."""
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if not len(s):
        raise ConfigError("calibrating the feature-squeezing threshold needs clean images")
    k = int(np.ceil((1 - fpr) * len(s))) - 1
    return float(s[min(max(k, 0), len(s) - 1)])


def _build(model, options: SqueezeConfig, **_: Any) -> nn.Module:
    return Squeezer(options.bits, options.median)


DEFENSES.add("squeeze", DefenseSpec(
    name="squeeze", kind="preprocess", options=SqueezeConfig, build=_build,
    description="feature squeezing (Xu et al.): 5-bit colour depth + 2x2 median filter; detector at 5% false "
                "positives"))
