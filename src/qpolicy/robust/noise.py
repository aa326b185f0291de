"""Noise-trained base classifiers for randomized smoothing: Gaussian noise augmentation on the training engine.

A smoothed classifier ``g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I)`` is only as good as its base ``f`` is
under that noise; a model trained on clean images misclassifies most noisy ones and ``g`` abstains. Cohen et al.
(2019) train ``f`` with the same Gaussian noise added to every training image; here the pretrained model is
fine-tuned that way (:func:`train_noise`), a recipe on :mod:`qpolicy.train` with one batch transform
(:func:`gaussian_noise`).

Noise is in **pixel units** (images scaled to [0, 1]), as in the paper, whatever normalization the model applies:
on normalized batches it is ``e / std`` per channel. The trained weights are cached like downloaded ones, in
:func:`qpolicy.paths.trained_dir` (never in the repository): ``<dir>/<model>-noise<sigma>/weights.pt``, with the
sigma they were trained at, which :func:`load_noise_model` hands back as ``model.noise_sigma``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_torch_save
from .._validate import require_ints, require_numbers
from ..datasets import normalization
from ..errors import ConfigError
from ..paths import trained_dir
from ..train import TrainOutcome, TrainSpec, train

__all__ = ["NoiseTrainConfig", "NoisyBatches", "gaussian_noise", "train_noise", "noise_model_dir", "load_noise_model",
           "WEIGHTS_NAME", "check_sigma"]

log = logging.getLogger(__name__)
WEIGHTS_NAME = "weights.pt"
_FORMAT = "qpolicy.noise_model"


def check_sigma(sigma: Any, what: str = "sigma") -> float:
    """A noise level: a finite number > 0 (pixel units, images in [0, 1])."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"{what} must be a positive number (the noise standard deviation in pixel units, images "
                          f"in [0, 1]; e.g. 0.25), got {sigma!r}")
    return float(sigma)


@dataclass(frozen=True, kw_only=True)
class NoiseTrainConfig:
    """Gaussian-noise fine-tuning (Cohen et al. 2019 train from scratch with the same augmentation).

    Args:
        sigma: Noise standard deviation in pixel units.
        epochs: Passes over the training images.
        lr: Peak learning rate (SGD, Nesterov momentum, cosine to 0).
        momentum: SGD momentum.
        weight_decay: On conv/linear weights only.
        checkpoint_every: Steps between mid-epoch checkpoints (0: epoch ends only).
        seed: Seeds the noise and the run.
    """

    sigma: float = 0.25
    epochs: int = 6
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        require_ints(self, ("epochs",), minimum=1)
        require_ints(self, ("checkpoint_every", "seed"), minimum=0)
        require_numbers(self, ("lr",), positive=True)
        require_numbers(self, ("momentum", "weight_decay"), positive=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def pixel_noise_scale(sigma: float, std: Sequence[float] | None = None) -> torch.Tensor:
    """Per-channel factor (1, C, 1, 1) that turns N(0, 1) into pixel-unit noise of ``sigma`` on normalized images
    (``std``: the normalization's; default: the default data set's)."""
    sigma = check_sigma(sigma)
    std = normalization()[1] if std is None else std
    return torch.tensor([sigma / s for s in std], dtype=torch.float32).view(1, -1, 1, 1)


def gaussian_noise(sigma: float, std: Sequence[float] | None = None
                   ) -> Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """A batch transform of the engine: add N(0, sigma^2) pixel-unit noise to normalized images (``e / std``).

    It draws from the global torch RNG, which the engine seeds and checkpoints, so a resumed run adds the same
    noise as an uninterrupted one.
    """
    scale = pixel_noise_scale(sigma, std)

    def transform(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x + torch.randn_like(x) * scale.to(x.device), y

    transform.whole_batch = True  # data-parallel: the noise of the whole batch, then each process's share
    return transform


def noise_model_dir(model_name: str, sigma: float, trained: str | os.PathLike | None = None) -> Path:
    """Where the noise-trained ``model_name`` at ``sigma`` lives: ``<trained dir>/<model>-noise<sigma>``."""
    return trained_dir(trained) / f"{model_name}-noise{check_sigma(sigma):g}"


def train_noise(model: nn.Module, data: Iterable[Any], *, config: NoiseTrainConfig | None = None,
                out_dir: str | os.PathLike, resume: bool = False, device: str | torch.device | None = None,
                model_name: str | None = None) -> TrainOutcome:
    """Fine-tune ``model`` in place under Gaussian noise; checkpointed in ``out_dir`` (resumable), and the final
    weights written to ``out_dir/weights.pt`` with the sigma they were trained at.

    Args:
        model: The float model (usually pretrained).
        data: Training batches ``(x, y)`` (normalized images; ``qpolicy.data.loader(..., "train")``).
        config: Hyper-parameters and sigma.
        out_dir: Run folder (``checkpoint.pt``, ``weights.pt``).
        resume: Continue from ``out_dir/checkpoint.pt``.
        device: "auto", "cpu", "cuda", ...
        model_name: Recorded with the weights.
    """
    from ..qat.finetune import param_groups

    config = config or NoiseTrainConfig()
    spec = TrainSpec(
        epochs=config.epochs, lr=config.lr,
        optimizer=torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum,
                                  nesterov=config.momentum > 0),
        transforms=(gaussian_noise(config.sigma),), checkpoint_every=config.checkpoint_every, seed=config.seed,
        fmt="qpolicy.checkpoint.noise", what="noise-training", settings=config.to_dict(),
        extra={"model": model_name}, desc=f"noise {config.sigma:g}")
    outcome = train(model, data, spec, out_dir=out_dir, resume=resume, device=device)
    atomic_torch_save({"format": _FORMAT, "version": 1, "model": model_name, "sigma": config.sigma,
                       "config": config.to_dict(), "history": list(outcome.history),
                       "state_dict": model.state_dict()}, Path(out_dir) / WEIGHTS_NAME)
    return outcome


def load_noise_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load noise-trained weights (from :func:`train_noise`) into ``model``; sets ``model.noise_sigma``."""
    from ..train.trained import load_weights_file

    obj, path = load_weights_file(model, path, fmt=_FORMAT, what="noise-trained weights",
                                  made_by="qpolicy train-noise")
    model.noise_sigma = float(obj["sigma"])
    model.noise_weights = str(path)
    return model.eval()


class NoisyBatches:
    """Batches of ``data`` with the training noise added (seeded: the same noise on every pass).

    Calibrating a noise-trained model's PTQ copy needs them: its BatchNorm statistics and activation ranges were
    set on noisy inputs, and re-estimating them on clean images would fit the wrong distribution.
    """

    def __init__(self, data: Iterable[Any], sigma: float, *, seed: int = 0, std: Sequence[float] | None = None):
        self.data, self.sigma, self.seed = data, check_sigma(sigma), seed
        self.scale = pixel_noise_scale(self.sigma, std)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for x, y in self.data:
            yield x + torch.randn(x.shape, generator=g) * self.scale, y
