"""Quantization-aware fine-tuning: a recipe on the training engine (:mod:`qpolicy.train`): SGD with Nesterov
momentum, cosine schedule to 0, weight decay on conv/linear weights only, the task loss.

A checkpoint is written at the end of every epoch and, optionally, every ``checkpoint_every`` steps; a killed run
loses at most the steps since the last one. Resuming restores model, optimizer, RNG state and position in the
epoch; with a loader whose batches depend only on (seed, epoch) (``qpolicy.data.ArrayLoader``), the resumed run
computes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validate import require_ints, require_numbers
from ..errors import ConfigError
from ..quant.fake_quant import _Quantizer
from ..train import (
    CHECKPOINT_NAME,
    Hook,
    TrainOutcome,
    TrainSpec,
    check_resume,
    check_same_config,
    load_checkpoint,
    train,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "param_groups", "load_checkpoint", "check_resume",
           "check_same_config",
           "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)
_FORMAT = "qpolicy.checkpoint"
# Fields that may change between a run and its resumption without changing what is computed.
_RESUME_MAY_CHANGE = frozenset({"checkpoint_every"})


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters.

    Args:
        epochs: Passes over the training data.
        lr: Peak learning rate of the cosine schedule (decays to 0 at the last step).
        momentum: SGD momentum (Nesterov when ``nesterov``).
        weight_decay: L2 on conv/linear weights only (not on biases, norms or quantizer step sizes).
        nesterov: Use Nesterov momentum.
        checkpoint_every: Also checkpoint every this many steps inside an epoch (0: only at epoch ends).
        seed: Seeds the global torch RNG (dropout, etc.) at the start of the run.
        noise_sigma: Train under Gaussian noise of this standard deviation (pixel units), as the noise-trained
            base of a smoothed classifier was (:mod:`qpolicy.robust.noise`); None: clean images.
        kurtosis_lambda: Weight of the KURE kurtosis regularizer (:mod:`qpolicy.train.kurtosis`); 0: off.
        kurtosis_target: Its target kurtosis (1.8: uniform).
        kurtosis_bn_folded: Regularize BatchNorm-folded weights.
    """

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    checkpoint_every: int = 100
    seed: int = 0
    noise_sigma: float | None = None
    kurtosis_lambda: float = 0.0
    kurtosis_target: float = 1.8
    kurtosis_bn_folded: bool = False

    def __post_init__(self) -> None:
        require_numbers(self, ("kurtosis_lambda",), positive=False, message="a finite number >= 0 (KURE: 1.0)")
        require_numbers(self, ("kurtosis_target",), positive=True)
        if self.noise_sigma is not None:
            from ..robust.noise import check_sigma

            check_sigma(self.noise_sigma, "noise_sigma")
        require_ints(self, ("epochs",), minimum=1)
        require_ints(self, ("checkpoint_every", "seed"), minimum=0)
        require_numbers(self, ("lr", "momentum", "weight_decay"), positive=False)
        if self.lr == 0:
            raise ConfigError("lr must be positive")

    def kurtosis(self):
        """The KURE settings (:class:`qpolicy.train.kurtosis.KurtosisConfig`)."""
        from ..train.kurtosis import KurtosisConfig

        return KurtosisConfig(lam=self.kurtosis_lambda, target=self.kurtosis_target, bn_folded=self.kurtosis_bn_folded)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _KurtosisLog(Hook):
    """Adds the regularized layers' mean and largest kurtosis to each epoch's history record."""

    name = "kurtosis"

    def __init__(self, model: nn.Module, term: Any):
        self.model, self.term = model, term

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        vals = list(self.term.values(self.model).values())
        return {"kurtosis_mean": sum(vals) / len(vals), "kurtosis_max": max(vals)}


FinetuneResult = TrainOutcome  # what a fine-tuning call did (the engine's record of the run)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """SGD parameter groups: weight decay on conv/linear weights only (not biases, norms or quantizer steps)."""
    quant_params = {id(p) for m in model.modules() if isinstance(m, _Quantizer) for p in m.parameters()}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 and id(p) not in quant_params else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def finetune(model: nn.Module, data: Iterable[Any], *, config: FinetuneConfig | None = None,
             out_dir: str | Path | None = None, resume: bool = False, device: str | torch.device | None = None,
             extra: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` in place (usually the quantized copy from ``apply_policy``).

    Args:
        model: Model to train; its parameters and quantizer step sizes are updated.
        data: Training batches ``(x, y)``; a ``qpolicy.data.ArrayLoader`` gives exact resumption.
        config: Hyper-parameters.
        out_dir: Where ``checkpoint.pt`` is written; None disables checkpointing.
        resume: Continue from ``out_dir/checkpoint.pt``. Without it, an existing checkpoint is an error
            (nothing is overwritten).
        device: "auto" (default), "cpu", "cuda", ...
        extra: Plain data stored in every checkpoint (e.g. the policy), returned by ``load_checkpoint``.

    Returns:
        A FinetuneResult; the model is left in eval mode on its original device.
    """
    from ..robust.noise import gaussian_noise
    from ..train.kurtosis import KurtosisTerm

    config = config or FinetuneConfig()
    if resume and out_dir is None:
        raise ConfigError("resume needs out_dir")
    kure = KurtosisTerm(model, config.kurtosis()) if config.kurtosis_lambda > 0 else None
    spec = TrainSpec(
        epochs=config.epochs, lr=config.lr,
        optimizer=torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum,
                                  nesterov=config.nesterov and config.momentum > 0),
        transforms=(gaussian_noise(config.noise_sigma),) if config.noise_sigma is not None else (),
        loss_terms=(kure,) if kure else (), hooks=(_KurtosisLog(model, kure),) if kure else (),
        checkpoint_every=config.checkpoint_every, seed=config.seed, fmt=_FORMAT, what="fine-tuning",
        settings=config.to_dict(), may_change=_RESUME_MAY_CHANGE, extra=extra or {}, desc="epoch")
    return train(model, data, spec, out_dir=out_dir, resume=resume, device=device)
