"""The user's task: how a batch becomes model inputs, and how outputs are scored.

Every model-in-the-loop path of qpolicy (evaluation, calibration, BatchNorm re-estimation, the sensitivity metrics,
the validated search, fine-tuning, the supernets) runs a batch through a model and scores it the same way::

    outputs = task.run(model, batch)          # model(*inputs) / model(**inputs) / model(inputs)
    losses = task.loss(outputs, batch)        # per sample, shape (N,): lower is better
    scores = task.metric(outputs, batch)      # per sample, shape (N,): higher is better

The default :data:`CLASSIFICATION` takes ``(x, y, ...)`` batches, cross-entropy and top-1, which is what qpolicy
has always done. Another task wraps the user's loader in :class:`Data` (NNCF's ``nncf.Dataset(loader, transform)``
with AIMET's / ModelOpt's loss callback)::

    val = qpolicy.Data(val_loader, transform=lambda b: b["image"], loss_fn=lambda out, b: ((out - b["clean"]) ** 2)
                       .flatten(1).mean(1))

and every function given ``val`` (or a split of a :class:`qpolicy.datasets.DataSource` built from such loaders)
uses its task. A batch may be any structure of tensors: tensors, tuples, lists and dicts, nested.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

__all__ = ["Task", "Data", "CLASSIFICATION", "task_of", "move", "batch_size", "cut", "tail", "call", "with_grad"]


def move(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor in it moved to ``device`` (tensors, tuples, lists, dicts, nested)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move(v, device) for v in batch)
    return batch


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if torch.is_tensor(batch):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor."""
    t = _first_tensor(batch)
    if t is None or t.dim() == 0:
        raise ConfigError(f"a batch must hold at least one tensor with a batch dimension, got {type(batch).__name__}")
    return int(t.shape[0])


def cut(batch: Any, n: int) -> Any:
    """The first ``n`` samples of every tensor in ``batch``."""
    if torch.is_tensor(batch):
        return batch[:n] if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {k: cut(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(v, n) for v in batch)
    return batch


def tail(batch: Any, n: int) -> Any:
    """Every tensor in ``batch`` without its first ``n`` samples."""
    if torch.is_tensor(batch):
        return batch[n:] if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {k: tail(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(tail(v, n) for v in batch)
    return batch


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _classification_inputs(batch: Any) -> Any:
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise ConfigError(f"a classification batch is (inputs, labels, ...) or inputs; got {type(batch).__name__} "
                      "(other batch structures need qpolicy.Data(loader, transform=...))")


def _labels(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and torch.is_tensor(batch[1]):
        return batch[1]
    raise ConfigError("a classification batch needs labels: (inputs, labels); for another task give "
                      "qpolicy.Data(loader, loss_fn=...)")


def _logits(outputs: Any) -> torch.Tensor:
    if not torch.is_tensor(outputs) or outputs.dim() != 2:
        got = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise ConfigError(f"classification needs (batch, classes) logits from the model, got {got}; for another "
                          "task give qpolicy.Data(loader, loss_fn=...)")
    return outputs


def _cross_entropy(outputs: Any, batch: Any) -> torch.Tensor:
    return F.cross_entropy(_logits(outputs), _labels(batch).to(outputs.device), reduction="none")


def _top1(outputs: Any, batch: Any) -> torch.Tensor:
    return (_logits(outputs).argmax(1) == _labels(batch).to(outputs.device)).to(torch.float32)


@dataclass(frozen=True, kw_only=True)
class Task:
    """How batches are fed and scored (module docs).

    Attributes:
        transform: ``batch -> model inputs`` (a tensor, a tuple of positional inputs or a dict of keyword
            inputs); None: the batch's first element (classification).
        loss_fn: ``(outputs, batch) -> per-sample losses (N,)``; None: cross-entropy with ``batch[1]`` labels.
        metric_fn: ``(outputs, batch) -> per-sample scores (N,)``, higher is better; None: top-1 for
            classification, else minus the loss.
        metric_name: What the metric is called in results ("top1", "neg_loss", or the user's name).
    """

    transform: Callable[[Any], Any] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    metric_fn: Callable[[Any, Any], torch.Tensor] | None = None
    metric_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("transform", "loss_fn", "metric_fn"):
            v = getattr(self, name)
            if v is not None and not callable(v):
                raise ConfigError(f"{name} must be callable, got {type(v).__name__}")
        if self.metric_name is None:
            name = "top1" if self.is_classification else (
                getattr(self.metric_fn, "__name__", "metric") if self.metric_fn is not None else "neg_loss")
            object.__setattr__(self, "metric_name", "metric" if name == "<lambda>" else name)

    @property
    def is_classification(self) -> bool:
        """Cross-entropy on labels: what attacks, certification and the topological-entropy metric assume."""
        return self.loss_fn is None

    def inputs(self, batch: Any) -> Any:
        return _classification_inputs(batch) if self.transform is None else self.transform(batch)

    def run(self, model: nn.Module, batch: Any) -> Any:
        """The model's outputs on ``batch`` (already on the model's device)."""
        return call(model, self.inputs(batch))

    def _per_sample(self, value: Any, batch: Any, what: str) -> torch.Tensor:
        if not torch.is_tensor(value) or value.dim() != 1:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ConfigError(f"{what} must return one value per sample, shape (N,); got {got}")
        n = batch_size(batch)
        if value.shape[0] != n:
            raise ConfigError(f"{what} returned {value.shape[0]} values for a batch of {n} samples")
        return value

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """Per-sample losses (N,)."""
        if self.loss_fn is None:
            return _cross_entropy(outputs, batch)
        return self._per_sample(self.loss_fn(outputs, batch), batch, "loss_fn")

    def metric(self, outputs: Any, batch: Any) -> torch.Tensor:
        """Per-sample scores (N,), higher is better."""
        if self.metric_fn is not None:
            return self._per_sample(self.metric_fn(outputs, batch), batch, "metric_fn").to(torch.float32)
        if self.loss_fn is None:
            return _top1(outputs, batch)
        return -self.loss(outputs, batch).detach().to(torch.float32)


CLASSIFICATION = Task()


class Data:
    """The user's batches and task: an iterable of batches (e.g. a ``DataLoader``) with how to feed and score them.

    Args:
        loader: Any iterable of batches (re-iterable for anything that makes more than one pass).
        transform, loss_fn, metric_fn, metric_name: See :class:`Task`.
        task: A ready :class:`Task` instead of the four above.
    """

    def __new__(cls, loader: Iterable[Any] | None = None, **kwargs: Any) -> Data:
        # a loader without len() gives a Data without len(), so `hasattr(data, "__len__")` stays truthful
        # (``loader`` is None when pickle re-creates the object: its class is already the right one)
        return super().__new__(_SizedData if cls is Data and hasattr(loader, "__len__") else cls)

    def __init__(self, loader: Iterable[Any], *, transform: Callable[[Any], Any] | None = None,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                 metric_fn: Callable[[Any, Any], torch.Tensor] | None = None, metric_name: str | None = None,
                 task: Task | None = None):
        if not isinstance(loader, Iterable):
            raise ConfigError(f"loader must be an iterable of batches, got {type(loader).__name__}")
        if task is not None and any(v is not None for v in (transform, loss_fn, metric_fn, metric_name)):
            raise ConfigError("give either task= or transform/loss_fn/metric_fn, not both")
        self.loader = loader
        self.task = task or Task(transform=transform, loss_fn=loss_fn, metric_fn=metric_fn, metric_name=metric_name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __getattr__(self, name: str) -> Any:  # set_epoch, batches, num_samples, dataset... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


class _SizedData(Data):
    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def task_of(data: Any) -> Task:
    """The task ``data`` carries (:class:`Data`, or a wrapper exposing ``.task``), else :data:`CLASSIFICATION`."""
    task = getattr(data, "task", None)
    return task if isinstance(task, Task) else CLASSIFICATION


def with_grad(inputs: Any) -> Any:
    """Copies of the floating-point tensors in ``inputs`` that require grad (the rest unchanged), so that a
    frozen model's intermediate outputs are in the autograd graph."""
    if torch.is_tensor(inputs):
        return inputs.clone().requires_grad_(True) if inputs.is_floating_point() else inputs
    if isinstance(inputs, Mapping):
        return {k: with_grad(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(with_grad(v) for v in inputs)
    return inputs
