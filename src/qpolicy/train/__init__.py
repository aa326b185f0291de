"""The one training engine (loop, schedule, checkpoints, exact resume) that every kind of training runs on."""

from .engine import (
    CHECKPOINT_NAME,
    Hook,
    TrainOutcome,
    TrainSpec,
    check_resume,
    check_same_config,
    cosine_lr,
    load_checkpoint,
    train,
)

__all__ = ["CHECKPOINT_NAME", "Hook", "TrainOutcome", "TrainSpec", "check_resume", "check_same_config", "cosine_lr",
           "load_checkpoint", "train"]
