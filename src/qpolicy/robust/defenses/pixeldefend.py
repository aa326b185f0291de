"""PixelDefend (Song et al. 2018): move an image back toward the training distribution before classifying it, by
greedy decoding under a PixelCNN within an L-infinity ball of ``eps_defend`` around it.

ART's ``PixelDefend`` needs a PixelCNN the user supplies and fails on numpy 2, so the defense is implemented here
with a small PixelCNN trained here (:class:`PixelCNN`, van den Oord et al. 2016): a 5x5 type-A masked convolution,
residual blocks of 3x3 type-B masked convolutions and a 1x1 head giving 256-way logits for each colour channel of
each pixel. Pixels are modelled in raster order; the three channels of a pixel are conditionally independent given
the pixels before it (a simplification of PixelCNN's channel ordering that keeps purification at one forward pass
per pixel). It is trained on the training images with the one training engine, as a task of its own (input:
the image's pixel values; per-image loss: the mean cross-entropy of its sub-pixels) and cached as
``<trained dir>/pixelcnn/weights.pt`` (``qpolicy train --defense pixeldefend`` with any ``--model``).

Purification (:func:`purify`): for each pixel in raster order, each channel takes the most likely of the 256
values within ``eps_defend`` of its original value, given the already purified pixels before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...datasets import normalization
from ...errors import ConfigError
from ...progress import progress
from . import DEFENSES, DefenseSpec

__all__ = ["PixelCNN", "PixelDefendConfig", "PixelDefend", "purify", "pixelcnn_dir"]

log = logging.getLogger(__name__)
LEVELS = 256


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only pixels before the centre in raster order (type A), or also the centre (B)."""

    def __init__(self, kind: str, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0]
        mask = torch.ones_like(self.weight)
        mask[:, :, k // 2, k // 2 + (kind == "B"):] = 0
        mask[:, :, k // 2 + 1:] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class PixelCNN(nn.Module):
    """Logits N x 256 x 3 x H x W of each sub-pixel's value given the pixels before it (inputs in [0, 1])."""

    def __init__(self, channels: int = 32, blocks: int = 4):
        super().__init__()
        self.stem = MaskedConv2d("A", 3, channels, 5, padding=2)
        self.blocks = nn.ModuleList(MaskedConv2d("B", channels, channels, 3, padding=1) for _ in range(blocks))
        self.head = nn.Sequential(nn.ReLU(), MaskedConv2d("B", channels, channels, 1), nn.ReLU(),
                                  MaskedConv2d("B", channels, 3 * LEVELS, 1))

    def forward(self, x: torch.Tensor, row: int | None = None) -> torch.Tensor:
        """All logits, or with ``row`` only those of that row (computed on the rows up to it: the masks make a row
        depend on nothing below it)."""
        if row is not None:
            x = x[:, :, :row + 1]
        h = self.stem(x * 2 - 1)
        for b in self.blocks:
            h = h + b(F.relu(h))
        if row is not None:
            h = h[:, :, row:row + 1]
        out = self.head(h)
        n, _, hh, ww = out.shape
        return out.view(n, 3, LEVELS, hh, ww).transpose(1, 2)


@dataclass(frozen=True, kw_only=True)
class PixelDefendConfig:
    """eps_defend: the purification ball (pixel units; Song et al.: 16/255 on CIFAR-10); channels, blocks: the
    PixelCNN's width and depth."""

    eps_defend: float = 16 / 255
    channels: int = 32
    blocks: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.eps_defend, bool) or not isinstance(self.eps_defend, (int, float)) or not (
                0 <= self.eps_defend <= 1):
            raise ConfigError(f"eps_defend must be in [0, 1] (pixel units), got {self.eps_defend!r}")
        for k in ("channels", "blocks"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def pixelcnn_dir(trained: Any = None):
    from ...train.trained import trained_model_dir

    return trained_model_dir("pixelcnn", trained=trained)


@torch.no_grad()
def purify(pixelcnn: nn.Module, images: torch.Tensor, eps_defend: float, *, show: bool = False) -> torch.Tensor:
    """Greedy PixelDefend purification of pixel-space ``images`` (N x 3 x H x W in [0, 1])."""
    x0 = (images.float() * (LEVELS - 1)).round()
    x = x0.clone()
    r = round(eps_defend * (LEVELS - 1))
    levels = torch.arange(LEVELS, dtype=x.dtype, device=x.device).view(1, LEVELS, 1)
    h, w = x.shape[2:]
    pixelcnn.eval()
    for i in (progress(range(h), desc="purify rows") if show else range(h)):
        for j in range(w):
            logits = pixelcnn(x / (LEVELS - 1), row=i)[:, :, :, 0, j]  # N x 256 x 3
            orig = x0[:, :, i, j].unsqueeze(1)  # N x 1 x 3
            allowed = (levels - orig).abs() <= r
            x[:, :, i, j] = logits.masked_fill(~allowed, float("-inf")).argmax(1).to(x.dtype)
    return x / (LEVELS - 1)


class PixelDefend(nn.Module):
    """Pixel-space pre-processing: purification by a PixelCNN (no gradient: an adaptive attacker would need BPDA).

    Purification is a deterministic function of the image and costs one PixelCNN pass per pixel, so results are
    memoized by the input's bytes (the same adversarial images classified by several QNNs are purified once)."""

    def __init__(self, pixelcnn: nn.Module, eps_defend: float, memo: int = 64):
        super().__init__()
        self.pixelcnn = pixelcnn
        self.eps_defend = eps_defend
        self._memo: dict[str, torch.Tensor] = {}
        self._memo_size = memo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import hashlib

        key = hashlib.sha1(x.detach().float().cpu().numpy().tobytes()).hexdigest() + str(tuple(x.shape))
        if key not in self._memo:
            p = next(self.pixelcnn.parameters())
            if len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = purify(self.pixelcnn, x.detach().to(p.device), self.eps_defend).cpu()
        return self._memo[key].to(device=x.device, dtype=x.dtype)


def _pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized images -> their pixel values in [0, 1] (the PixelCNN's input) and as levels 0..255 (targets)."""
    m, s = normalization()  # the default data set's
    mean = torch.tensor(m, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(s, device=x.device).view(1, -1, 1, 1)
    pix = ((x.float() * std + mean).clamp(0, 1) * (LEVELS - 1)).round()
    return pix / (LEVELS - 1), pix.long()


def _inputs(batch: Any) -> torch.Tensor:
    return _pixels(batch[0])[0]


def _subpixel_nll(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """Per image: the mean cross-entropy of its sub-pixels' values (nats per sub-pixel)."""
    target = _pixels(batch[0].to(logits.device))[1]
    return F.cross_entropy(logits, target, reduction="none").flatten(1).mean(1)


def _subpixel_accuracy(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    target = _pixels(batch[0].to(logits.device))[1]
    return (logits.argmax(1) == target).float().flatten(1).mean(1)


def _train(model, data, options: PixelDefendConfig, *, config, out_dir, resume=False, device=None, model_name=None,
           trained_dir=None):
    """Train the PixelCNN (``model``, the classifier, is not touched) on the training images, as a task of its own:
    the input is the image's pixel values, the loss each sub-pixel's 256-way cross-entropy."""
    from ...task import Data
    from ...train.trained import train_float

    net = PixelCNN(options.channels, options.blocks)
    task_data = Data(data, transform=_inputs, loss_fn=_subpixel_nll, metric_fn=_subpixel_accuracy,
                     metric_name="sub-pixel accuracy")
    return train_float(net, task_data, config=config, out_dir=out_dir, resume=resume, device=device,
                       model_name="pixelcnn", kind="pixelcnn", settings=options.to_dict())


def _build(model, options: PixelDefendConfig, *, trained_dir=None, **_: Any) -> nn.Module:
    from ...errors import WeightsError
    from ...train.trained import load_trained

    folder = pixelcnn_dir(trained_dir)
    if not (folder / "weights.pt").is_file():
        raise WeightsError(f"no trained PixelCNN in {folder}: train it with `qpolicy train --model resnet8 --defense "
                           "pixeldefend`")
    net = load_trained(PixelCNN(options.channels, options.blocks), folder)
    return PixelDefend(net, options.eps_defend)


DEFENSES.add("pixeldefend", DefenseSpec(
    name="pixeldefend", kind="preprocess", options=PixelDefendConfig, train=_train, build=_build, cache_name="pixelcnn",
    description="PixelDefend (Song et al.): purification by a small PixelCNN trained here, eps_defend 16/255"))
