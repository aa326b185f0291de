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
from .trained import FloatTrainConfig, load_trained, train_float, trained_model_dir

__all__ = ["CHECKPOINT_NAME", "Hook", "TrainOutcome", "TrainSpec", "check_resume", "check_same_config", "cosine_lr",
           "load_checkpoint", "train", "FloatTrainConfig", "train_float", "trained_model_dir", "load_trained"]
