"""Models qpolicy trains itself in float: a zoo model without public weights (the MLPerf Tiny ResNet-8) and the
train-based adversarial defenses, all one recipe on the training engine.

:func:`train_float` runs SGD (Nesterov momentum, cosine schedule) on the engine with whatever batch transforms
(adversarial examples) and loss terms (distillation) a recipe adds, checkpointed and resumable, and writes the final
weights to ``<run>/weights.pt`` with what made them (``kind``, settings, history). Trained models live in the
trained-model cache (:func:`qpolicy.paths.trained_dir`), never in the repository:
``<trained dir>/<model>[-<variant>]/weights.pt`` (:func:`trained_model_dir`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_torch_save
from .._validate import require_ints, require_numbers
from ..errors import ConfigError, WeightsError, first_line
from ..paths import trained_dir
from .engine import PRECISIONS, LossTerm, TrainOutcome, TrainSpec, Transform, train

__all__ = ["FloatTrainConfig", "train_float", "trained_model_dir", "load_trained", "WEIGHTS_NAME", "FORMAT"]

log = logging.getLogger(__name__)
WEIGHTS_NAME = "weights.pt"
FORMAT = "qpolicy.trained_model"
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True, kw_only=True)
class FloatTrainConfig:
    """Float training (from scratch or fine-tuning).

    Args:
        epochs: Passes over the training images.
        lr: Peak learning rate (cosine to 0).
        momentum: SGD momentum (Nesterov when > 0).
        weight_decay: On conv/linear weights only.
        checkpoint_every: Steps between mid-epoch checkpoints (0: epoch ends only).
        seed: Seeds the run.
        optimizer: "sgd" (Nesterov momentum) or "adam" (``momentum`` is then its beta1).
        precision: "fp32", or "bf16": bfloat16 autocast with channels-last batches, about twice as fast on CPUs with
            AVX-512 BF16 (:class:`qpolicy.train.TrainSpec`).
    """

    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    checkpoint_every: int = 100
    seed: int = 0
    optimizer: str = "sgd"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        require_ints(self, ("epochs",), minimum=1)
        require_ints(self, ("checkpoint_every", "seed"), minimum=0)
        require_numbers(self, ("lr",), positive=True)
        require_numbers(self, ("momentum", "weight_decay"), positive=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def trained_model_dir(model_name: str, variant: str | None = None, trained: str | os.PathLike | None = None) -> Path:
    """``<trained dir>/<model>[-<variant>]``: where :func:`train_float` caches a model (``variant``: a defense)."""
    if variant is not None and not _VARIANT.match(variant):
        raise ConfigError(f"a trained-model variant must be lowercase letters, digits, '.', '_' or '-', got "
                          f"{variant!r}")
    return trained_dir(trained) / (model_name + (f"-{variant}" if variant else ""))


def train_float(model: nn.Module, data: Iterable[Any], *, config: FloatTrainConfig | None = None,
                out_dir: str | os.PathLike, resume: bool = False, device: str | torch.device | None = None,
                model_name: str | None = None, kind: str = "float", transforms: Sequence[Transform] = (),
                loss_terms: Sequence[LossTerm] = (), task_loss_weight: float = 1.0,
                settings: Mapping[str, Any] | None = None) -> TrainOutcome:
    """Train ``model`` in place; checkpointed in ``out_dir`` (resumable), final weights in ``out_dir/weights.pt``.

    Args:
        model: The model (random or pretrained weights).
        data: Training batches ``(x, y)`` of normalized images (``qpolicy.data.loader(..., "train")``).
        config: Optimizer, schedule and checkpoint settings.
        out_dir: Run folder (``checkpoint.pt``, ``weights.pt``).
        resume: Continue from ``out_dir/checkpoint.pt``.
        device: "auto", "cpu", "cuda", ...
        model_name: Recorded with the weights.
        kind: What the recipe is ("float", "pgd_at", "distillation", ...): recorded, and part of the settings a
            resumed run must match.
        transforms, loss_terms, task_loss_weight: The recipe's additions to the engine's loss (see
            :class:`qpolicy.train.TrainSpec`).
        settings: The recipe's own settings (plain data; recorded and checked on resume).
    """
    from ..qat.finetune import param_groups

    config = config or FloatTrainConfig()
    recipe = {"kind": kind, **dict(settings or {})}
    groups = param_groups(model, config.weight_decay)
    opt = (torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
           if config.optimizer == "sgd" else torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999)))
    spec = TrainSpec(
        epochs=config.epochs, lr=config.lr, optimizer=opt,
        transforms=tuple(transforms), loss_terms=tuple(loss_terms), task_loss_weight=task_loss_weight,
        checkpoint_every=config.checkpoint_every, seed=config.seed, fmt="qpolicy.checkpoint.trained",
        what="training", settings={**config.to_dict(), "recipe": recipe}, extra={"model": model_name},
        desc=kind, precision=config.precision)
    outcome = train(model, data, spec, out_dir=out_dir, resume=resume, device=device)
    atomic_torch_save({"format": FORMAT, "version": 1, "model": model_name, "kind": kind, "recipe": recipe,
                       "config": config.to_dict(), "history": list(outcome.history),
                       "state_dict": model.state_dict()}, Path(out_dir) / WEIGHTS_NAME)
    return outcome


def load_weights_file(model: nn.Module, path: str | os.PathLike, *, fmt: str, what: str, made_by: str
                      ) -> tuple[dict[str, Any], Path]:
    """Load a qpolicy weights file of format ``fmt`` (a folder means its ``weights.pt``) into ``model``; returns
    the file's contents and path. WeightsError (naming ``what`` and the command ``made_by``) when it is missing,
    unreadable, of another format, or does not fit the model."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise WeightsError(f"no {what} at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt
        raise WeightsError(f"cannot read {what} {path}: {first_line(e)}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise WeightsError(f"{path} is not a qpolicy {what} file (made by `{made_by}`)")
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise WeightsError(f"{what} {path} do not fit the model: {first_line(e)}") from None
    return obj, path


def load_trained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights written by :func:`train_float` into ``model`` (sets ``model.trained_kind``, ``trained_weights``)."""
    obj, path = load_weights_file(model, path, fmt=FORMAT, what="trained weights", made_by="qpolicy train")
    model.trained_kind = str(obj.get("kind"))
    model.trained_weights = str(path)
    return model.eval()
