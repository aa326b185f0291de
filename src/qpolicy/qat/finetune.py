"""Quantization-aware fine-tuning: SGD + cosine schedule, atomic checkpoints, exact resume.

A checkpoint is written at the end of every epoch and, optionally, every ``checkpoint_every`` steps; a killed run
loses at most the steps since the last one. Resuming restores model, optimizer, RNG state and position in the
epoch; with a loader whose batches depend only on (seed, epoch) (``qpolicy.data.ArrayLoader``), the resumed run
computes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_torch_save
from .._validate import require_ints, require_numbers
from ..errors import CheckpointError, ConfigError, first_line
from ..evaluate import resolve_device
from ..progress import progress
from ..quant.fake_quant import _Quantizer

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "load_checkpoint", "check_resume", "check_same_config",
           "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "qpolicy.checkpoint"
# Fields that may change between a run and its resumption without changing what is computed.
_RESUME_MAY_CHANGE = {"checkpoint_every"}


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
    """

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("epochs",), minimum=1)
        require_ints(self, ("checkpoint_every", "seed"), minimum=0)
        require_numbers(self, ("lr", "momentum", "weight_decay"), positive=False)
        if self.lr == 0:
            raise ConfigError("lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class FinetuneResult:
    """What a fine-tuning call did.

    Attributes:
        epochs: Epochs completed in total (including those of a resumed run).
        steps: Optimizer steps taken in total.
        seconds: Training wall time of this call.
        seconds_per_epoch: Training wall time per epoch, over the epochs this call ran in full.
        history: One record per completed epoch (epoch, loss, top1, lr, seconds).
        resumed_from: ``{"epoch", "step"}`` the run resumed from, or None.
        checkpoint: Path of the last checkpoint written, or None.
    """

    epochs: int
    steps: int
    seconds: float
    seconds_per_epoch: float | None
    history: tuple[dict[str, Any], ...]
    resumed_from: dict[str, int] | None
    checkpoint: str | None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["history"] = list(self.history)
        return d


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    quant_params = {id(p) for m in model.modules() if isinstance(m, _Quantizer) for p in m.parameters()}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 and id(p) not in quant_params else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_checkpoint(path: str | Path, *, fmt: str = _FORMAT, what: str = "fine-tuning") -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only); CheckpointError if it is not a ``fmt`` one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many types
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not a qpolicy {what} checkpoint")
    return ckpt


def check_resume(out_dir: str | Path, resume: bool) -> Path:
    """The checkpoint path of ``out_dir``; refuses to start over an existing checkpoint unless resuming."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise CheckpointError(f"{path} exists: resume it (--resume) or choose another output folder")
    return path


def _batches(data: Iterable[Any], epoch: int, start: int):
    if hasattr(data, "batches"):
        return data.batches(epoch, start)
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    return itertools.islice(iter(data), start, None)


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
    config = config or FinetuneConfig()
    try:  # plain data only, so the checkpoint loads with weights_only=True
        extra = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"extra must be JSON-serializable plain data: {e}") from None
    dev = resolve_device(device)
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    if not steps_per_epoch:
        raise ConfigError("training data must have a length (batches per epoch) and at least one batch")
    total_steps = config.epochs * steps_per_epoch
    ckpt_path = check_resume(out_dir, resume) if out_dir is not None else None
    p = next(model.parameters(), None)
    home = p.device if p is not None else dev
    model.to(dev)
    optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    epoch, step, history, resumed_from = 0, 0, [], None
    torch.manual_seed(config.seed)
    if resume:
        if ckpt_path is None:
            raise ConfigError("resume needs out_dir")
        ckpt = load_checkpoint(ckpt_path)
        check_same_config(ckpt.get("config", {}), config.to_dict(), ckpt_path)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, CheckpointError) as e:
            raise CheckpointError(f"{ckpt_path} does not fit this model/policy: {first_line(e)}") from None
        epoch, step, history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        resumed_from = {"epoch": epoch, "step": step}
        log.info("resuming from epoch %d step %d of %s", epoch, step, ckpt_path)

    def save(e: int, s: int) -> None:
        if ckpt_path is None:
            return
        atomic_torch_save({"format": _FORMAT, "version": 1, "model": model.state_dict(),
                           "optimizer": optimizer.state_dict(), "epoch": e, "step": s, "history": history,
                           "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
                           "extra": extra}, ckpt_path)

    t_start = time.perf_counter()
    full_epochs_seconds: list[float] = []
    try:
        while epoch < config.epochs:
            model.train()
            t_epoch, first_step = time.perf_counter(), step
            # accumulated on the device: no per-step sync
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            seen = 0
            batches = progress(_batches(data, epoch, step), desc=f"epoch {epoch + 1}/{config.epochs}",
                               total=steps_per_epoch - step)
            for x, y in batches:
                global_step = epoch * steps_per_epoch + step
                lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * global_step / total_steps))
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * y.numel()
                correct += (logits.argmax(1) == y).sum()
                seen += y.numel()
                step += 1
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < steps_per_epoch:
                    save(epoch, step)
            seconds = time.perf_counter() - t_epoch
            if first_step == 0:
                full_epochs_seconds.append(seconds)
            history.append({"epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1),
                            "top1": 100.0 * int(correct) / max(seen, 1),
                            "lr_end": optimizer.param_groups[0]["lr"], "seconds": seconds,
                            "steps_this_run": step - first_step})
            log.info("epoch %d: loss %.4f, train top-1 %.2f%%, %.1f s", epoch + 1, history[-1]["loss"],
                     history[-1]["top1"], seconds)
            epoch, step = epoch + 1, 0
            save(epoch, 0)
    finally:
        model.eval().to(home)
    return FinetuneResult(
        epochs=epoch, steps=epoch * steps_per_epoch, seconds=time.perf_counter() - t_start,
        seconds_per_epoch=sum(full_epochs_seconds) / len(full_epochs_seconds) if full_epochs_seconds else None,
        history=tuple(history), resumed_from=resumed_from, checkpoint=str(ckpt_path) if ckpt_path else None)


def check_same_config(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint made with other settings (``checkpoint_every`` may change)."""
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in now.items()
            if k not in _RESUME_MAY_CHANGE and saved.get(k) != v]
    if diff:
        raise CheckpointError(f"{path} was made with other settings ({'; '.join(diff)}); "
                              "resume with the same settings or start a new output folder")
