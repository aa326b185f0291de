"""One training engine: the loop, the learning-rate schedule, checkpoints with exact resume, progress and history.

Every kind of training qpolicy runs is a recipe on this loop (QAT in :mod:`qpolicy.qat.finetune`, the
differentiable supernet search in :mod:`qpolicy.supernet.differentiable`; noise, adversarial and kurtosis training and
distillation plug in the same way):

* **loss terms** ``term(model, x, y, logits) -> tensor`` are added to the task loss (cross-entropy), e.g. a
  kurtosis regularizer or a distillation loss;
* **batch transforms** ``transform(x, y, step) -> (x, y)`` change a batch before the forward pass (Gaussian
  noise, adversarial examples). In data-parallel training a transform runs on this process's share of the batch,
  unless it has ``whole_batch = True`` (cheap ones that draw random numbers, such as Gaussian noise): then every
  process transforms the whole batch (before the other transforms) and keeps its share, so the numbers drawn are
  those of one process;
* **hooks** (:class:`Hook`) see every step and epoch: ``before_step`` (temperature, which parameters train),
  ``after_step`` (an architecture step, a Shapley round: returns True to ask for a checkpoint now),
  ``end_epoch`` (fields added to the epoch's history record), and carry their own state through checkpoints
  (``state_dict`` / ``load_state_dict``).

**Precision.** ``precision="bf16"`` runs the forward pass and the loss terms under ``torch.autocast`` in bfloat16
(parameters, gradients and optimizer state stay float32; the logits are cast back to float32 before the loss) and
puts 4-D image batches and the model in channels-last layout. On CPUs with AVX-512 BF16 (and on recent GPUs) that
is about twice as fast as float32 for conv nets; the model is returned in float32, contiguous.

A checkpoint holds the model, the optimizer, the position (epoch, step), the history, the torch RNG, every hook's
state and the caller's settings; it is written atomically every ``checkpoint_every`` steps, when a hook asks, and
at every epoch end. Resuming restores all of it and refuses a checkpoint made with other settings. With a loader
whose batches depend only on (seed, epoch) (``qpolicy.data.ArrayLoader``), a resumed run computes exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_torch_save
from ..errors import CheckpointError, ConfigError, first_line
from ..evaluate import resolve_device
from ..progress import progress
from ..task import batch_size, move, task_of
from .distributed import all_reduce_grads, all_reduce_sum, global_batchnorm, shard, world

__all__ = ["Hook", "TrainSpec", "PRECISIONS", "TrainOutcome", "train", "load_checkpoint", "check_resume",
           "check_same_config", "CHECKPOINT_NAME", "cosine_lr"]

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"

LossTerm = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class Hook:
    """A step hook of the engine; every method is optional. ``name`` keys its state in the checkpoint."""

    name = "hook"

    def start_epoch(self, epoch: int, step: int) -> None:
        """Called before the first batch of an epoch (``step`` > 0 when resuming mid-epoch)."""

    def before_step(self, epoch: int, step: int, global_step: int, total_steps: int) -> None:
        """Called before the forward pass of each step."""

    def after_step(self, epoch: int, step: int) -> bool:
        """Called after the optimizer step (``step`` counts this one); True asks for a checkpoint now."""
        return False

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Fields added to the history record of the epoch that just ended."""
        return {}

    def close(self) -> None:
        """Called when the loop ends, also on error (put flags back)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def cosine_lr(peak: float, global_step: int, total_steps: int) -> float:
    """The cosine schedule from ``peak`` to 0 over ``total_steps``."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * global_step / total_steps))


@dataclass(kw_only=True)
class TrainSpec:
    """What the engine runs (a recipe fills it in).

    Attributes:
        epochs: Passes over ``data``.
        lr: Peak learning rate of the cosine schedule applied to ``optimizer``.
        optimizer: Steps the model's trainable parameters on the loss.
        loss_terms: Added to the cross-entropy of the batch.
        transforms: Applied to each batch before the forward pass.
        hooks: Step hooks (their state is checkpointed).
        checkpoint_every: Steps between mid-epoch checkpoints (0: epoch ends and hook requests only).
        seed: Seeds the global torch RNG at the start of a fresh run.
        fmt: The checkpoint's ``format`` (a resumed run must find the same).
        what: Names the kind of run in messages ("fine-tuning", "differentiable-search").
        settings: Plain data that must match to resume (the recipe's config); ``may_change`` lists keys exempt.
        extra: Plain data stored in every checkpoint (returned by :func:`load_checkpoint`).
        desc: Progress bar label.
        task_loss_weight: Weight of the cross-entropy on the labels (0: the loss terms alone, e.g. the soft labels
            of defensive distillation).
        precision: "fp32", or "bf16" for bfloat16 autocast with channels-last image batches (module docs).
    """

    epochs: int
    lr: float
    optimizer: torch.optim.Optimizer
    loss_terms: Sequence[LossTerm] = ()
    transforms: Sequence[Transform] = ()
    hooks: Sequence[Hook] = ()
    checkpoint_every: int = 0
    seed: int = 0
    fmt: str = "qpolicy.checkpoint"
    what: str = "training"
    settings: dict[str, Any] = field(default_factory=dict)
    may_change: frozenset[str] = frozenset({"checkpoint_every"})
    extra: dict[str, Any] = field(default_factory=dict)
    desc: str = "epoch"
    task_loss_weight: float = 1.0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"training precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    """What a call of :func:`train` did.

    Attributes:
        epochs: Epochs completed in total (including those of a resumed run).
        steps: Optimizer steps taken in total.
        seconds: Training wall time of this call.
        seconds_per_epoch: Training wall time per epoch, over the epochs this call ran in full.
        history: One record per completed epoch (epoch, loss, top1, lr, seconds, and the hooks' fields).
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


def load_checkpoint(path: str | Path, *, fmt: str = "qpolicy.checkpoint", what: str = "fine-tuning") -> dict[str, Any]:
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


def check_resume(out_dir: str | Path, resume: bool, *, fmt: str | None = None, what: str = "fine-tuning") -> Path:
    """The checkpoint path of ``out_dir``; refuses to start over an existing checkpoint unless resuming. With
    ``fmt``, a resume reads the checkpoint now: a missing, broken or foreign one fails before any work."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise CheckpointError(f"{path} exists: resume it (--resume) or choose another output folder")
    if resume and fmt is not None:
        load_checkpoint(path, fmt=fmt, what=what)
    return path


def check_same_config(saved: Mapping[str, Any], now: Mapping[str, Any], path: Path,
                      may_change: Iterable[str] = ("checkpoint_every",)) -> None:
    """Refuse to resume a checkpoint made with other settings (``may_change`` keys excepted)."""
    exempt = set(may_change)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in now.items()
            if k not in exempt and saved.get(k) != v]
    if diff:
        raise CheckpointError(f"{path} was made with other settings ({'; '.join(diff)}); "
                              "resume with the same settings or start a new output folder")


def _batches(data: Iterable[Any], epoch: int, start: int):
    if hasattr(data, "batches"):
        return data.batches(epoch, start)
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    return itertools.islice(iter(data), start, None)


def _plain(obj: Any, what: str) -> Any:
    try:  # plain data only, so the checkpoint loads with weights_only=True
        return json.loads(json.dumps(obj or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must be JSON-serializable plain data: {e}") from None


def train(model: nn.Module, data: Iterable[Any], spec: TrainSpec, *, out_dir: str | Path | None = None,
          resume: bool = False, device: str | torch.device | None = None) -> TrainOutcome:
    """Train ``model`` in place on ``data`` (batches ``(x, y)``) as ``spec`` says (module docs).

    The model is moved to ``device`` for the run and left in eval mode on its original device.
    """
    extra, settings = _plain(spec.extra, "extra"), _plain(spec.settings, "settings")
    task = task_of(data)
    if not task.is_classification and (spec.transforms or world()[1] > 1):
        raise ConfigError("training transforms (noise, adversarial examples) and data-parallel training take "
                          "(inputs, labels) classification batches; this data carries another task")
    rank, world_size = world()  # several processes under torchrun: data-parallel (qpolicy.train.distributed)
    dev = resolve_device(device)
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    if not steps_per_epoch:
        raise ConfigError("training data must have a length (batches per epoch) and at least one batch")
    total_steps = spec.epochs * steps_per_epoch
    ckpt_path = check_resume(out_dir, resume) if out_dir is not None else None
    if resume and ckpt_path is None:
        raise ConfigError("resume needs out_dir")
    p = next(model.parameters(), None)
    home = p.device if p is not None else dev
    model.to(dev)
    bf16 = spec.precision == "bf16"
    if bf16:
        model.to(memory_format=torch.channels_last)  # in place, like .to(device): the optimizer keeps its tensors
    opt = spec.optimizer
    epoch, step, history, resumed_from = 0, 0, [], None
    torch.manual_seed(spec.seed)
    if resume:
        assert ckpt_path is not None  # checked above
        ckpt = load_checkpoint(ckpt_path, fmt=spec.fmt, what=spec.what)
        check_same_config(ckpt.get("config", {}), settings, ckpt_path, spec.may_change)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            for h in spec.hooks:
                h.load_state_dict(ckpt.get("hooks", {}).get(h.name, {}))
        except (RuntimeError, ValueError, KeyError, TypeError, CheckpointError) as e:
            raise CheckpointError(f"{ckpt_path} does not fit this model: {first_line(e)}") from None
        epoch, step, history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        resumed_from = {"epoch": epoch, "step": step}
        log.info("resuming from epoch %d step %d of %s", epoch, step, ckpt_path)

    def save(e: int, s: int) -> None:
        if ckpt_path is None or rank != 0:
            return
        atomic_torch_save({"format": spec.fmt, "version": 1, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "epoch": e, "step": s, "history": history,
                           "config": settings, "torch_rng": torch.get_rng_state(),
                           "hooks": {h.name: h.state_dict() for h in spec.hooks}, "extra": extra}, ckpt_path)

    t_start = time.perf_counter()
    full_epochs_seconds: list[float] = []
    params = [p for g in opt.param_groups for p in g["params"]]
    whole_batch = [t for t in spec.transforms if getattr(t, "whole_batch", False)]
    per_share = [t for t in spec.transforms if not getattr(t, "whole_batch", False)]
    bn_scope = global_batchnorm(model)
    bn_scope.__enter__()
    try:
        while epoch < spec.epochs:
            model.train()
            t_epoch, first_step = time.perf_counter(), step
            # accumulated on the device: no per-step sync
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            # the task's metric summed: correct predictions for classification
            correct = torch.zeros((), dtype=torch.int64 if task.is_classification else torch.float64, device=dev)
            seen = 0
            for h in spec.hooks:
                h.start_epoch(epoch, step)
            batches = _batches(data, epoch, step)
            if rank == 0:
                batches = progress(batches, desc=f"{spec.desc} {epoch + 1}/{spec.epochs}",
                                   total=steps_per_epoch - step)
            for batch in batches:
                global_step = epoch * steps_per_epoch + step
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(spec.lr, global_step, total_steps)
                for h in spec.hooks:
                    h.before_step(epoch, step, global_step, total_steps)
                if task.is_classification:
                    x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
                    for t in whole_batch:  # random draws of one process, whatever the number of processes
                        x, y = t(x, y, global_step)
                    x, y, share = shard(x, y)  # this process's part of the global batch (all of it alone)
                    for t in per_share:
                        x, y = t(x, y, global_step)
                    if bf16 and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = model(x).float()
                        loss = (F.cross_entropy(logits, y) * spec.task_loss_weight if spec.task_loss_weight
                                else logits.sum() * 0)
                        for term in spec.loss_terms:
                            loss = loss + term(model, x, y, logits).float()
                    n = y.numel()
                else:  # the user's task (qpolicy.task): any batch structure, the user's per-sample loss
                    batch, share = move(batch, dev), 1.0
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = task.run(model, batch)
                        logits = logits.float() if torch.is_tensor(logits) and logits.is_floating_point() else logits
                        loss = task.loss(logits, batch).float().mean() * spec.task_loss_weight
                        for term in spec.loss_terms:
                            loss = loss + term(model, task.inputs(batch), batch, logits).float()
                    n = batch_size(batch)
                opt.zero_grad(set_to_none=True)
                (loss * share if world_size > 1 else loss).backward()
                all_reduce_grads(params)
                opt.step()
                loss_sum += loss.detach() * n
                correct += (task.metric(logits.detach(), batch if not task.is_classification else (x, y))
                            .sum().to(correct.dtype))
                seen += n
                step += 1
                wanted = [h.after_step(epoch, step) for h in spec.hooks]
                if step < steps_per_epoch and (any(wanted) or (spec.checkpoint_every
                                                               and step % spec.checkpoint_every == 0)):
                    save(epoch, step)
            seconds = time.perf_counter() - t_epoch
            if world_size > 1:
                totals = all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                                     torch.tensor(float(seen), dtype=torch.float64, device=dev)]))
                loss_sum, correct, seen = totals[0], totals[1].to(correct.dtype), int(totals[2])
            if first_step == 0:
                full_epochs_seconds.append(seconds)
            metric = float(correct) / max(seen, 1)
            record = {"epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1),
                      **({"top1": 100.0 * metric} if task.is_classification else {task.metric_name: metric}),
                      "lr_end": opt.param_groups[0]["lr"], "seconds": seconds, "steps_this_run": step - first_step}
            for h in spec.hooks:
                record.update(h.end_epoch(epoch))
            history.append(record)
            log.info("%s %d: loss %.4f, train %s %.4g, %.1f s", spec.desc, epoch + 1, record["loss"],
                     task.metric_name, record.get("top1", record.get(task.metric_name)), seconds)
            epoch, step = epoch + 1, 0
            save(epoch, 0)
    finally:
        bn_scope.__exit__(None, None, None)
        for h in spec.hooks:
            h.close()
        model.eval().to(home)
        if bf16:
            model.to(memory_format=torch.contiguous_format)
    return TrainOutcome(
        epochs=epoch, steps=epoch * steps_per_epoch, seconds=time.perf_counter() - t_start,
        seconds_per_epoch=sum(full_epochs_seconds) / len(full_epochs_seconds) if full_epochs_seconds else None,
        history=tuple(history), resumed_from=resumed_from, checkpoint=str(ckpt_path) if ckpt_path else None)
