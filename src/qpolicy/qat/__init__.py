"""Quantization-aware fine-tuning."""

from .finetune import CHECKPOINT_NAME, FinetuneConfig, FinetuneResult, finetune, load_checkpoint

__all__ = ["CHECKPOINT_NAME", "FinetuneConfig", "FinetuneResult", "finetune", "load_checkpoint"]
