"""Preflight: one batch of the data through the model before any work, so that a model and data that do not fit
each other fail in one line at once, not in a traceback minutes later (or, worse, not at all: a model declared for
64x64 inputs run on 32x32 images computes, with its costs priced at the wrong size).

Checked, in order: the model's declared per-sample input shape (``model.input_shape``, what costs are computed at)
against the data's; a forward pass of two samples in eval mode under ``torch.no_grad`` (the model is not changed);
the output being ``(N, classes)`` logits; the data's labels lying in ``0..classes-1``. For data carrying another task
(:class:`qpolicy.Data`): its transform, the forward pass, ``loss_fn`` and ``metric_fn`` on two samples, each giving
one value per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._modes import eval_mode
from .errors import PreflightError, first_line
from .task import call, cut, move, task_of

__all__ = ["preflight"]

log = logging.getLogger(__name__)


def _shape(s: Any) -> str:
    return "x".join(map(str, s))


def _labels(data: Any, y: torch.Tensor) -> torch.Tensor:
    """Every label of the data when it holds them (an in-memory data set), else the batch's."""
    labels = getattr(getattr(data, "dataset", None), "labels", None)
    return labels if torch.is_tensor(labels) and labels.numel() else y


def preflight(model: nn.Module, data: Iterable[Any], *, what: str = "the data") -> None:
    """Raise :class:`~qpolicy.errors.PreflightError` when ``model`` and ``data`` do not fit (module docs). ``what``
    names the data in the message. A :class:`qpolicy.Data` with its own task is checked by running its transform,
    the model, ``loss_fn`` and ``metric_fn`` on two samples."""
    task = task_of(data)
    try:
        batch = next(iter(data))
    except StopIteration:
        raise PreflightError(f"{what} yielded no batch") from None
    if not task.is_classification or task.transform is not None:
        return _preflight_task(model, task, batch, what)
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0])
            and torch.is_tensor(batch[1])):
        raise PreflightError(f"{what} must yield (inputs, labels) tensor pairs, got {type(batch).__name__} (another "
                             "batch structure needs qpolicy.Data(loader, transform=..., loss_fn=...))")
    x, y = batch[0][:2], batch[1][:2]
    _check_shape(model, x, what)
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise PreflightError(f"the model does not take {what}'s inputs ({_shape(x.shape[1:])} per sample): "
                             f"{first_line(e)[:300]}") from None
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = _shape(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise PreflightError(f"the model's output on {what} is {got}; expected (batch, classes) logits (another task "
                             "needs qpolicy.Data(loader, loss_fn=...))")
    classes = out.shape[1]
    labels = _labels(data, y)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise PreflightError(f"{what} has labels {lo}..{hi}, the model outputs {classes} classes (labels "
                             f"0..{classes - 1})")
    log.debug("preflight: %s per sample, %d classes, labels %d..%d", _shape(x.shape[1:]), classes, lo, hi)


def _check_shape(model: nn.Module, x: Any, what: str) -> None:
    declared = getattr(model, "input_shape", None)
    if declared is not None and torch.is_tensor(x) and tuple(declared) != tuple(x.shape[1:]):
        raise PreflightError(f"the model's input shape is {_shape(declared)} (--input-shape, or the model's "
                             f"input_shape), {what} has {_shape(x.shape[1:])}: they must match (costs are computed "
                             "at the model's)")


def _preflight_task(model: nn.Module, task: Any, batch: Any, what: str) -> None:
    """The user's task on two samples: transform, forward, per-sample loss and metric."""
    batch = cut(batch, 2)
    p = next(model.parameters(), None)
    if p is not None:
        batch = move(batch, p.device)
    step = "transform"
    try:
        inputs = task.inputs(batch)
        _check_shape(model, inputs, what)
        step = "the model"
        with eval_mode(model), torch.no_grad():
            out = call(model, inputs)
            step = "loss_fn"
            task.loss(out, batch)
            step = "metric_fn"
            task.metric(out, batch)
    except PreflightError:
        raise
    except Exception as e:  # the user's callbacks may raise anything
        raise PreflightError(f"{step} failed on two samples of {what}: {type(e).__name__}: {first_line(e)[:300]}") \
            from None
