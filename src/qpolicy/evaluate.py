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
    total = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # accumulated on the device: no per-batch sync
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    start = time.perf_counter()
    try:
        total_batches = len(data) if hasattr(data, "__len__") else None
        for x, y in progress(data, desc=desc, total=total_batches):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            total += y.numel()
    finally:
        model.train(was_training).to(home)
    if total == 0:
        raise ConfigError("evaluation data yielded no samples")
    n_correct = int(correct)
    return EvalResult(top1=100.0 * n_correct / total, loss=float(loss_sum) / total, correct=n_correct, total=total,
                      seconds=time.perf_counter() - start)
