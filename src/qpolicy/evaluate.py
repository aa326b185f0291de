"""Top-1 accuracy and loss of a classifier on a data set."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .progress import progress

__all__ = ["EvalResult", "evaluate", "resolve_device"]


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Accuracy of one evaluation. ``top1`` is in percent."""

    top1: float
    loss: float
    correct: int
    total: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Any], *, device: str | torch.device | None = None,
             desc: str = "evaluate") -> EvalResult:
    """Top-1 (%) and mean cross-entropy of ``model`` over ``data`` (batches of ``(x, y)``).

    The model runs in eval mode; its mode and device are restored afterwards.
    """
    dev = resolve_device(device)
    was_training = model.training
    p = next(model.parameters(), None)
    home = p.device if p is not None else dev
    model.eval().to(dev)
    correct = total = 0
    loss_sum = 0.0
    start = time.perf_counter()
    try:
        total_batches = len(data) if hasattr(data, "__len__") else None
        for x, y in progress(data, desc=desc, total=total_batches):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training).to(home)
    if total == 0:
        raise ConfigError("evaluation data yielded no samples")
    return EvalResult(top1=100.0 * correct / total, loss=loss_sum / total, correct=correct, total=total,
                      seconds=time.perf_counter() - start)
