"""Defensive distillation (Papernot et al. 2016): a teacher trained at softmax temperature T, then a student of
the same architecture trained on the teacher's soft labels at T, deployed at temperature 1 (its logits are about
T times larger, which saturates the softmax and flattens its gradients).

On the engine both phases are fine-tuning runs from the float model: the teacher's task loss is the cross-entropy
of ``logits / T``; the student's is only the distillation term (``task_loss_weight=0``): the cross-entropy between
the teacher's and its own softmax at T. Teacher and student each have a run folder (``teacher/``, ``student/``),
so a killed run resumes in either phase.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from . import DEFENSES, DefenseSpec

__all__ = ["DistillationConfig"]


@dataclass(frozen=True, kw_only=True)
class DistillationConfig:
    """temperature: T of the teacher and the student's training (the paper's CIFAR setting: 20)."""

    temperature: float = 20.0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 1:
            raise ConfigError(f"temperature must be a number >= 1, got {t!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _train(model, data, options: DistillationConfig, *, config, out_dir, resume=False, device=None, model_name=None,
           trained_dir=None):
    from ...evaluate import resolve_device
    from ...train.trained import train_float

    t = float(options.temperature)
    out = Path(out_dir)
    start = copy.deepcopy(model.state_dict())
    teacher = model  # phase 1 trains the model itself at temperature T

    def tempered_ce(m, x, y, logits):
        return F.cross_entropy(logits / t, y)

    teacher_done = (out / "teacher" / "weights.pt").is_file()
    if teacher_done:
        from ...train.trained import load_trained

        load_trained(teacher, out / "teacher")
    else:
        train_float(teacher, data, config=config, out_dir=out / "teacher", resume=resume and (
            out / "teacher" / "checkpoint.pt").is_file(), device=device, model_name=model_name,
            kind="distillation_teacher", loss_terms=(tempered_ce,), task_loss_weight=0.0, settings=options.to_dict())
    frozen = copy.deepcopy(teacher).to(resolve_device(device)).eval()
    frozen.requires_grad_(False)
    model.load_state_dict(start)  # the student starts from the float model

    def soft_ce(m, x, y, logits):
        with torch.no_grad():
            soft = F.softmax(frozen(x) / t, 1)
        return -(soft * F.log_softmax(logits / t, 1)).sum(1).mean()

    return train_float(model, data, config=config, out_dir=out, resume=resume and (out / "checkpoint.pt").is_file(),
                       device=device, model_name=model_name, kind="distillation", loss_terms=(soft_ce,),
                       task_loss_weight=0.0, settings=options.to_dict())


DEFENSES.add("distillation", DefenseSpec(
    name="distillation", kind="train", options=DistillationConfig, train=_train,
    description="defensive distillation (Papernot et al.): teacher and student at temperature 20, deployed at 1"))
