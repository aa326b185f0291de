"""Train-based defenses with adversarial examples, each a batch transform (and loss term) on the training engine.

* ``pgd_at`` (Madry et al. 2018): every training batch is replaced by its PGD Linf examples (eps 0.008 in pixel
  units, 10 iterations of step 2.5 eps / 10, random start), crafted with the model in eval mode.
* ``ensemble_at`` (Tramer et al. 2018): every batch is trained clean plus FGSM examples (eps 0.008) crafted on a
  source that cycles over the model itself and the fixed pre-trained models (by default the two other CIFAR
  ResNets of the zoo), so the examples it learns from are decoupled from its own gradients.
* ``sinkhorn_at`` (Bouniot et al. 2021, Sinkhorn adversarial training): PGD examples as in ``pgd_at``, and the loss
  adds lambda x the debiased Sinkhorn divergence between the batch's clean and adversarial softmax outputs (as
  point clouds with uniform weights, squared Euclidean cost), so the adversarial output distribution is pulled
  onto the clean one; no library implements it, so :func:`sinkhorn_divergence` does (log-domain iterations).

Batches on the engine are normalized images; the attacks work in pixel space ([0, 1]) as every attack here does,
so each transform maps ``x * std + mean`` back and forth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...datasets import normalization
from ...errors import ConfigError
from . import DEFENSES, DefenseSpec

__all__ = ["PGDATConfig", "EnsembleATConfig", "SinkhornATConfig", "pgd_linf", "fgsm", "sinkhorn_divergence"]


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = normalization()  # the default data set's: the zoo models these defenses train were trained on it
    mean = torch.tensor(m, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(s, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return mean, std


def _check(cfg: Any) -> None:
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (not math.isfinite(v) or v < 0):
            raise ConfigError(f"{type(cfg).__name__}.{f.name} must be a finite number >= 0, got {v!r}")
    if getattr(cfg, "eps", 1) <= 0:
        raise ConfigError(f"eps must be > 0 (pixel units, images in [0, 1]), got {cfg.eps!r}")


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, step_size: float,
             random_start: bool = True, loss_fn=None) -> torch.Tensor:
    """PGD Linf examples of normalized images ``x`` (budget ``eps`` in pixel units), returned normalized.

    ``loss_fn(logits_adv) -> scalar`` is maximized (default: the cross-entropy on ``y``). The model is put in eval
    mode while crafting (BatchNorm statistics untouched) and its mode restored.
    """
    mean, std = _stats(x)
    pix = (x * std + mean).detach()
    was = model.training
    model.eval()
    try:
        adv = pix + (torch.empty_like(pix).uniform_(-eps, eps) if random_start else 0)
        adv = adv.clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model((adv - mean) / std)
            loss = loss_fn(logits) if loss_fn is not None else F.cross_entropy(logits, y)
            (g,) = torch.autograd.grad(loss, adv)
            adv = (adv.detach() + step_size * g.sign())
            adv = torch.min(torch.max(adv, pix - eps), pix + eps).clamp(0, 1)
    finally:
        model.train(was)
    return ((adv.detach() - mean) / std)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """One signed-gradient step of ``eps`` (pixel units) on normalized images; returned normalized."""
    return pgd_linf(model, x, y, eps=eps, steps=1, step_size=eps, random_start=False)


# ---- PGD adversarial training ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PGDATConfig:
    """eps: Linf budget (pixel units); steps: PGD iterations; step_size: per-step size (default 2.5 eps / steps)."""

    eps: float = 0.008
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        _check(self)
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps!r}")

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _train_pgd(model, data, options: PGDATConfig, *, config, out_dir, resume=False, device=None, model_name=None,
               trained_dir=None):
    from ...train.trained import train_float

    def transform(x, y, step):
        return pgd_linf(model, x, y, eps=options.eps, steps=options.steps, step_size=options.step), y

    return train_float(model, data, config=config, out_dir=out_dir, resume=resume, device=device,
                       model_name=model_name, kind="pgd_at", transforms=(transform,), settings=options.to_dict())


DEFENSES.add("pgd_at", DefenseSpec(
    name="pgd_at", kind="train", options=PGDATConfig, train=_train_pgd,
    description="PGD adversarial training (Madry et al.): eps 0.008, 10 iterations"))


# ---- ensemble adversarial training -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class EnsembleATConfig:
    """eps: FGSM budget (pixel units); static: comma-separated zoo models (pretrained, fixed) used as sources
    (default: the two CIFAR ResNets other than the one trained, among resnet20, resnet32)."""

    eps: float = 0.008
    static: str = ""

    def __post_init__(self) -> None:
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def static_models(options: EnsembleATConfig, model_name: str | None) -> list[str]:
    from ... import models

    names = [s.strip() for s in options.static.split(",") if s.strip()] if options.static else [
        n for n in ("resnet20", "resnet32", "resnet8") if n != model_name][:2]
    for n in names:
        models.spec(n)  # unknown: did you mean
    return names


def _train_ensemble(model, data, options: EnsembleATConfig, *, config, out_dir, resume=False, device=None,
                    model_name=None, trained_dir=None):
    from ... import models
    from ...evaluate import resolve_device
    from ...train.trained import train_float

    names = static_models(options, model_name)
    dev = resolve_device(device)
    statics = [models.load(n, trained_dir=trained_dir).to(dev).eval() for n in names]
    for s in statics:
        s.requires_grad_(False)
    sources = [model, *statics]

    def transform(x, y, step):
        src = sources[step % len(sources)]
        adv = fgsm(src, x, y, eps=options.eps)
        return torch.cat([x, adv]), torch.cat([y, y])

    return train_float(model, data, config=config, out_dir=out_dir, resume=resume, device=device,
                       model_name=model_name, kind="ensemble_at", transforms=(transform,),
                       settings={**options.to_dict(), "sources": ["self", *names]})


DEFENSES.add("ensemble_at", DefenseSpec(
    name="ensemble_at", kind="train", options=EnsembleATConfig, train=_train_ensemble,
    description="ensemble adversarial training (Tramer et al.): clean + FGSM eps 0.008 from self and 2 fixed models"))


# ---- Sinkhorn adversarial training -------------------------------------------------------------------------------
def _ot(cost: torch.Tensor, reg: float, iters: int) -> torch.Tensor:
    """Entropic OT cost <P, C> between uniform point clouds (log-domain Sinkhorn iterations)."""
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    for _ in range(iters):
        f = -reg * torch.logsumexp((g[None, :] - cost) / reg + log_b[None, :], dim=1)
        g = -reg * torch.logsumexp((f[:, None] - cost) / reg + log_a[:, None], dim=0)
    log_p = (f[:, None] + g[None, :] - cost) / reg + log_a[:, None] + log_b[None, :]
    return (log_p.exp() * cost).sum()


def sinkhorn_divergence(a: torch.Tensor, b: torch.Tensor, *, reg: float = 0.1, iters: int = 50) -> torch.Tensor:
    """Debiased Sinkhorn divergence S(a, b) = OT(a, b) - OT(a, a)/2 - OT(b, b)/2 between point clouds (rows),
    uniform weights, squared Euclidean cost. Zero for a = b; for single points, the squared distance."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"sinkhorn_divergence needs two N x D point clouds, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}")
    c = torch.cdist(a, b) ** 2
    return _ot(c, reg, iters) - 0.5 * _ot(torch.cdist(a, a) ** 2, reg, iters) - 0.5 * _ot(torch.cdist(b, b) ** 2,
                                                                                              reg, iters)


@dataclass(frozen=True, kw_only=True)
class SinkhornATConfig:
    """eps, steps: the PGD examples (as pgd_at); weight: lambda of the Sinkhorn term; reg, iters: its entropic
    regularization and Sinkhorn iterations."""

    eps: float = 0.008
    steps: int = 10
    weight: float = 1.0
    reg: float = 0.1
    iters: int = 50

    def __post_init__(self) -> None:
        _check(self)
        if self.steps < 1 or self.iters < 1 or self.reg <= 0:
            raise ConfigError("steps and iters must be >= 1 and reg > 0")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _train_sinkhorn(model, data, options: SinkhornATConfig, *, config, out_dir, resume=False, device=None,
                    model_name=None, trained_dir=None):
    from ...train.trained import train_float

    clean: dict[str, torch.Tensor] = {}

    def transform(x, y, step):
        clean["x"] = x
        return pgd_linf(model, x, y, eps=options.eps, steps=options.steps, step_size=2.5 * options.eps / options.steps
                        ), y

    def term(m, x, y, logits):
        ref = m(clean.pop("x"))
        return options.weight * sinkhorn_divergence(F.softmax(ref, 1), F.softmax(logits, 1), reg=options.reg,
                                                    iters=options.iters)

    return train_float(model, data, config=config, out_dir=out_dir, resume=resume, device=device,
                       model_name=model_name, kind="sinkhorn_at", transforms=(transform,), loss_terms=(term,),
                       settings=options.to_dict())


DEFENSES.add("sinkhorn_at", DefenseSpec(
    name="sinkhorn_at", kind="train", options=SinkhornATConfig, train=_train_sinkhorn,
    description="Sinkhorn adversarial training (Bouniot et al.): PGD examples + Sinkhorn divergence clean/adv"))
