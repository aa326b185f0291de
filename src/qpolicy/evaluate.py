"""The task metric (top-1 for a classifier) and loss of a model on a data set."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .progress import progress
from .task import batch_size, move, task_of

__all__ = ["EvalResult", "evaluate", "resolve_device"]


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """One evaluation: the task's metric (mean over samples; higher is better) and mean loss.

    ``top1`` (percent) and ``correct`` are set for classification (the metric is top-1) and None otherwise.
    ``per_sample`` (only with ``evaluate(..., per_sample=True)``, and never in :meth:`to_dict`): each sample's
    metric in data order (1/0 correctness for a classifier), for paired comparisons of two models on the same
    samples."""

    top1: float | None
    loss: float
    correct: int | None
    total: int
    seconds: float
    metric: float | None = None
    metric_name: str = "top1"
    per_sample: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.metric is None:
            object.__setattr__(self, "metric", None if self.top1 is None else self.top1 / 100.0)

    @property
    def score(self) -> float:
        """The figure to report: top-1 in percent for classification, else the mean metric."""
        return self.top1 if self.top1 is not None else float(self.metric)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "per_sample"}


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
             desc: str = "evaluate", per_sample: bool = False) -> EvalResult:
    """The task's metric and mean loss of ``model`` over ``data`` (default task: top-1 (%) and cross-entropy
    on ``(x, y)`` batches; see :mod:`qpolicy.task`). ``per_sample``: also keep each sample's metric
    (:attr:`EvalResult.per_sample`).

    The model runs in eval mode; its mode and device are restored afterwards.
    """
    task = task_of(data)
    dev = resolve_device(device)
    was_training = model.training
    p = next(model.parameters(), None)
    home = p.device if p is not None else dev
    model.eval().to(dev)
    total = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)  # accumulated on the device: no per-batch sync
    metric_sum = torch.zeros((), dtype=torch.float64, device=dev)
    kept: list[torch.Tensor] = []
    start = time.perf_counter()
    try:
        total_batches = len(data) if hasattr(data, "__len__") else None
        for batch in progress(data, desc=desc, total=total_batches):
            batch = move(batch, dev)
            out = task.run(model, batch)
            loss_sum += task.loss(out, batch).sum()
            scores = task.metric(out, batch)
            metric_sum += scores.sum()
            if per_sample:
                kept.append(scores.detach().double().cpu())
            total += batch_size(batch)
    finally:
        model.train(was_training).to(home)
    if total == 0:
        raise ConfigError("evaluation data yielded no samples")
    metric = float(metric_sum) / total
    each = torch.cat(kept) if per_sample else None
    if task.is_classification:
        n_correct = round(float(metric_sum))
        return EvalResult(top1=100.0 * n_correct / total, loss=float(loss_sum) / total, correct=n_correct,
                          total=total, seconds=time.perf_counter() - start, per_sample=each)
    return EvalResult(top1=None, loss=float(loss_sum) / total, correct=None, total=total,
                      seconds=time.perf_counter() - start, metric=metric, metric_name=task.metric_name,
                      per_sample=each)
