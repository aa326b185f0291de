"""Knowledge distillation from a teacher model (Hinton, Vinyals and Dean 2015), as a loss term of the training
engine.

The student's loss is ``(1 - weight) * CE(student, y) + weight * T^2 * KL(softmax(teacher / T) || softmax(student /
T))``; the ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` changes. The teacher sees
exactly the (augmented) batch the student sees, runs in eval mode without gradients, and is never changed.

Why qpolicy needs it: the held-out zoo models (``resnet20-heldout``, ``resnet32-heldout``) are trained here on the
45,000 training images outside the validation split, so that choices made on the validation split are made on
images the model never saw. Distilling from the published model on those same 45,000 images shows the student no
validation image (the teacher's memory of them is only ever queried on training images).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import require_numbers
from ..errors import ConfigError
from .engine import LossTerm

__all__ = ["DistillConfig", "kd_loss", "kd_term"]


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """temperature: T of both softmaxes; weight: the soft term's share of the loss (the hard labels get the rest)."""

    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        require_numbers(self, ("temperature",), positive=True)
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise ConfigError(f"the distillation weight must be a number in [0, 1], got {w!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = float(temperature)  # in float32 whatever the logits' precision (bfloat16 training)
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    return t * t * F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                            reduction="batchmean", log_target=True)


def kd_term(teacher: nn.Module, config: DistillConfig) -> LossTerm:
    """The engine loss term ``weight * kd_loss(student, teacher(x), T)``; the teacher is frozen, put in eval mode
    and moved to the batch's device on first use. Train with ``task_loss_weight = 1 - config.weight``."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        p = next(teacher.parameters(), None)
        if p is not None and p.device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            soft = teacher(x)
        return config.weight * kd_loss(logits, soft, config.temperature)

    return term
