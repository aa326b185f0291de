"""QFA: a quantized-for-all bit-width supernet (Bai et al., NeurIPS 2021; after Once-for-All), trained once so
that **any policy** over its candidate bits is usable without retraining.

The supernet is :class:`~qpolicy.supernet.mixed.Supernet` with one-hot masks: every layer keeps one float weight
shared by all its candidates, one weight quantizer per candidate width (LSQ) and one activation quantizer per
candidate width, BatchQuant by default (:mod:`qpolicy.quant.batchquant`), whose range follows the batch, which is
what lets subnets with very different activation statistics share weights stably.

Training is a recipe on the training engine (:mod:`qpolicy.train`) with the **sandwich rule**: each step trains the
largest subnet (every layer at its widest candidates), the smallest, and ``random_subnets`` uniformly drawn ones,
on the same batch, their losses summed (a step hook draws the subnets, a loss term runs all but the largest, whose
forward pass is the engine's own). Each subnet's loss is its cross-entropy plus knowledge distillation from the
float model (``KL(softmax(t / T) || softmax(s / T)) T^2``). Checkpointed and resumable like every engine run.

Evaluating a subnet (:func:`subnet_model`) builds the plain fake-quant model of the policy with the supernet's
weights and step sizes (what :func:`qpolicy.apply_policy` builds), then re-estimates its BatchNorm statistics and
BatchQuant running ranges on calibration batches: per-subnet statistics, as in the paper, measured in the quantized
subnet as it was trained (quantizers on, batch statistics), not in a float network
(:func:`recalibrate_quantized_`).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import require_ints, require_numbers
from ..bits import check_bits
from ..errors import CheckpointError, ConfigError, first_line
from ..policy import LayerBits, Policy
from ..quant.apply import _reestimate_bn
from ..quant.batchquant import BatchQuantizer
from ..quant.fake_quant import CalibConfig
from ..task import CLASSIFICATION, Task, call, move, task_of
from ..train import CHECKPOINT_NAME, Hook, TrainOutcome, TrainSpec, check_resume, load_checkpoint, train
from .mixed import Supernet, build_supernet

__all__ = ["QFAConfig", "QFAResult", "sandwich", "train_qfa", "load_qfa", "subnet_model", "policy_of"]

log = logging.getLogger(__name__)
_FORMAT = "qpolicy.checkpoint.qfa"

Assignment = dict[str, tuple[int, int]]


@dataclass(frozen=True, kw_only=True)
class QFAConfig:
    """QFA supernet settings.

    Args:
        weight_bits, act_bits: Candidate widths of every searched layer (the paper: 2, 3, 4, 8... here the same).
        first_last: Fix the first and last layer at this width (None: searched like the others).
        epochs: Passes over the training images.
        lr: Peak learning rate (SGD, Nesterov momentum, cosine to 0).
        momentum, weight_decay: SGD settings (weight decay on conv/linear weights only).
        random_subnets: Random subnets per step besides the largest and the smallest.
        kd_temperature: Distillation temperature.
        act_quantizer: Activation quantizer of every candidate ("batchquant"; "lsq" to see what it buys).
        calib_batches, bn_batches: Calibration batches (128 images) for the initial ranges and for each evaluated
            subnet's BatchNorm and BatchQuant statistics.
        calib_method: How the initial step sizes are set ("mse", "minmax", "percentile"); with BatchQuant it
            only concerns weights.
        curve_every: Steps per point of the training curve (the mean sandwich loss over those steps).
        checkpoint_every: Steps between checkpoints.
        seed: Seeds the run and the subnet sampling.
    """

    weight_bits: tuple[int, ...] = (2, 3, 4, 8)
    act_bits: tuple[int, ...] = (2, 3, 4, 8)
    first_last: int | None = 8
    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5
    random_subnets: int = 2
    kd_temperature: float = 1.0
    act_quantizer: str = "batchquant"
    calib_batches: int = 8
    bn_batches: int = 16
    calib_method: str = "mse"
    curve_every: int = 10
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for side in ("weight_bits", "act_bits"):
            bits = getattr(self, side)
            if not isinstance(bits, tuple) or not bits:
                raise ConfigError(f"{side} must be a non-empty tuple of bit-widths, got {bits!r}")
            for b in bits:
                check_bits(b, side)
        if self.first_last is not None:
            check_bits(self.first_last, "first_last")
        require_ints(self, ("epochs", "calib_batches", "bn_batches", "curve_every"), minimum=1)
        require_ints(self, ("random_subnets", "checkpoint_every", "seed"), minimum=0)
        require_numbers(self, ("lr", "kd_temperature"), positive=True)
        require_numbers(self, ("momentum", "weight_decay"), positive=False)
        self.calib_config()  # unknown quantizers or methods: a clear error

    def calib_config(self) -> CalibConfig:
        return CalibConfig(weight_method=self.calib_method, act_method=self.calib_method, batches=self.calib_batches,
                           bn_batches=self.bn_batches, seed=self.seed, act_quantizer=self.act_quantizer)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QFAConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True, kw_only=True)
class QFAResult:
    """A trained supernet and the engine's record of the run."""

    supernet: Supernet
    train: TrainOutcome
    config: QFAConfig
    out_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _candidates(net: Supernet) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    return {n: (m.bits["weight"], m.bits["act"]) for n, m in net.mixed_layers()}


def sandwich(rng: random.Random, candidates: Mapping[str, tuple[Sequence[int], Sequence[int]]], k: int
             ) -> list[Assignment]:
    """The subnets of one step: the largest, the smallest, then ``k`` drawn uniformly per layer and side."""
    largest = {n: (max(w), max(a)) for n, (w, a) in candidates.items()}
    smallest = {n: (min(w), min(a)) for n, (w, a) in candidates.items()}
    drawn = [{n: (rng.choice(list(w)), rng.choice(list(a))) for n, (w, a) in candidates.items()} for _ in range(k)]
    return [largest, smallest, *drawn]


def _set(net: Supernet, assignment: Assignment) -> None:
    for name, m in net.mixed_layers():
        w, a = assignment[name]
        m.keep["weight"] = [c == w for c in m.bits["weight"]]
        m.keep["act"] = [c == a for c in m.bits["act"]]


def _kd(student: Any, teacher: Any, t: float, task: Task = CLASSIFICATION) -> torch.Tensor:
    """Distillation: KL of the temperature-``t`` softmaxes for a classifier; for another task the mean squared
    difference of the outputs (their tensors, in order)."""
    if task.is_classification:
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    pairs = zip(_tensors(student), _tensors(teacher), strict=True)
    return sum(F.mse_loss(s.float(), q.float()) for s, q in pairs)


def _tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    values = out.values() if isinstance(out, Mapping) else out
    return [t for v in values for t in _tensors(v)]


class _Sandwich(Hook):
    """Draws each step's subnets (seeded; its state is checkpointed) and sets the largest for the engine's
    forward pass; the loss term runs the others."""

    name = "sandwich"

    def __init__(self, net: Supernet, teacher: nn.Module, config: QFAConfig):
        self.net, self.teacher, self.config, self.task = net, teacher, config, CLASSIFICATION
        self.rng = random.Random(config.seed)
        self.candidates = _candidates(net)
        self.current: list[Assignment] = []
        self.last = 0.0
        self.window: list[float] = []
        self.curve: list[float] = []  # the mean sandwich loss of every ``curve_every`` steps

    def before_step(self, epoch: int, step: int, global_step: int, total_steps: int) -> None:
        self.current = sandwich(self.rng, self.candidates, self.config.random_subnets)
        _set(self.net, self.current[0])

    def loss(self, model: nn.Module, x: Any, y: Any, logits: Any) -> torch.Tensor:
        """Distillation of the largest subnet (the engine adds its task loss) plus task loss and distillation of
        every other subnet of the step. ``x``: model inputs; ``y``: labels (classification) or the batch."""
        t, task = self.config.kd_temperature, self.task
        with torch.no_grad():
            teacher = call(self.teacher, x)
        total = _kd(logits, teacher, t, task)
        for assignment in self.current[1:]:
            _set(self.net, assignment)
            out = call(self.net, x)
            task_loss = F.cross_entropy(out, y) if task.is_classification else task.loss(out, y).mean()
            total = total + task_loss + _kd(out, teacher, t, task)
        _set(self.net, self.current[0])
        self.last = float(total.detach())
        return total

    def after_step(self, epoch: int, step: int) -> bool:
        self.window.append(self.last)
        if len(self.window) == self.config.curve_every:
            self.curve.append(sum(self.window) / len(self.window))
            self.window = []
        return False

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {"sandwich_loss_curve": list(self.curve), "curve_every": self.config.curve_every}

    def close(self) -> None:
        self.net.reset_masks()

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "internal": list(internal), "gauss": gauss, "window": list(self.window),
                "curve": list(self.curve)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))
            self.window, self.curve = list(state.get("window", [])), list(state.get("curve", []))


def _param_groups(net: Supernet, weight_decay: float) -> list[dict[str, Any]]:
    """QAT's parameter groups (:func:`qpolicy.qat.finetune.param_groups`) without the mixing weights: QFA samples
    its subnets and has no architecture parameters to train."""
    from ..qat.finetune import param_groups

    for _, m in net.mixed_layers():
        m.alpha_weight.requires_grad_(False)
        m.alpha_act.requires_grad_(False)
    return param_groups(net, weight_decay)


def train_qfa(model: nn.Module, train_data: Iterable[Any], *, calib: Iterable[Any], config: QFAConfig | None = None,
              out_dir: str | os.PathLike, resume: bool = False, device: str | torch.device | None = None,
              model_name: str | None = None) -> QFAResult:
    """Build and train a QFA supernet over a copy of the float ``model`` (module docs); checkpoints in
    ``out_dir`` (``resume`` continues them exactly)."""
    import copy

    config = config or QFAConfig()
    check_resume(out_dir, resume, fmt=_FORMAT, what="QFA supernet")  # before the calibration
    net = build_supernet(model, weight_bits=config.weight_bits, act_bits=config.act_bits,
                         first_last=config.first_last, calib=None if resume else calib,
                         calib_config=config.calib_config())
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    from ..evaluate import resolve_device

    teacher.to(resolve_device(device))
    hook = _Sandwich(net, teacher, config)
    hook.task = task_of(train_data)
    spec = TrainSpec(
        epochs=config.epochs, lr=config.lr,
        optimizer=torch.optim.SGD(_param_groups(net, config.weight_decay), lr=config.lr, momentum=config.momentum,
                                  nesterov=config.momentum > 0),
        loss_terms=(hook.loss,), hooks=(hook,), checkpoint_every=config.checkpoint_every, seed=config.seed,
        fmt=_FORMAT, what="QFA supernet", settings=config.to_dict(),
        extra={"config": config.to_dict(), "model": model_name}, desc="qfa")
    outcome = train(net, train_data, spec, out_dir=out_dir, resume=resume, device=device)
    return QFAResult(supernet=net, train=outcome, config=config, out_dir=str(out_dir))


def load_qfa(model: nn.Module, run_dir: str | os.PathLike) -> tuple[Supernet, QFAConfig]:
    """The trained supernet of a ``train_qfa`` run folder, over a copy of the float ``model``."""
    path = Path(run_dir) / CHECKPOINT_NAME if Path(run_dir).is_dir() else Path(run_dir)
    ckpt = load_checkpoint(path, fmt=_FORMAT, what="QFA supernet")
    try:
        config = QFAConfig.from_dict(ckpt["extra"]["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path} holds no valid QFA settings: {first_line(e)}") from None
    net = build_supernet(model, weight_bits=config.weight_bits, act_bits=config.act_bits,
                         first_last=config.first_last, calib_config=config.calib_config())
    try:
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, CheckpointError) as e:
        raise CheckpointError(f"{path} does not fit this model: {first_line(e)}") from None
    return net.eval(), config


@torch.no_grad()
def subnet_model(net: Supernet, policy: Policy, calib: Iterable[Any], config: QFAConfig) -> nn.Module:
    """The plain fake-quant model of ``policy`` with the supernet's weights and step sizes, its BatchNorm
    statistics and BatchQuant running ranges re-estimated on ``calib`` (the policy's own statistics)."""
    missing = [f"{n}: {policy[n].short()} (candidates w{list(m.bits['weight'])} a{list(m.bits['act'])})"
               for n, m in net.mixed_layers() if n in policy.layers and (
                   policy[n].weight_bits not in m.bits["weight"] or policy[n].act_bits not in m.bits["act"])]
    policy.validate_names(net.names)
    if missing:
        raise ConfigError("the policy asks for bits the supernet was not trained for: " + "; ".join(missing[:3])
                          + (" ..." if len(missing) > 3 else ""))
    plain = net.subnet(policy)
    cfg = config.calib_config()
    device = next(plain.parameters()).device
    task = task_of(calib)
    batches = [move(task.inputs(b), device) for b in itertools.islice(calib, max(cfg.bn_batches, cfg.batches))]
    if not batches:
        raise ConfigError("the calibration data yielded no batch")
    recalibrate_quantized_(plain, batches)
    return plain


@torch.no_grad()
def recalibrate_quantized_(model: nn.Module, batches: Sequence[Any]) -> None:
    """Re-estimate ``model``'s BatchNorm statistics and BatchQuant running ranges in the network as it was trained:
    every quantizer on, BatchNorm and BatchQuant in training mode (batch statistics, batch ranges), each running
    value the plain average over ``batches``; the other quantizers keep their learned step sizes. The model's mode
    is restored (eval for the re-estimated modules)."""
    was_training = model.training
    model.eval()
    try:
        _reestimate_bn(model, list(batches), batchquant=True)
    finally:
        model.train(was_training)
        if was_training:  # the re-estimated statistics are for inference
            for m in model.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchQuantizer)):
                    m.eval()


def policy_of(assignment: Mapping[str, tuple[int, int]], *, model: str | None = None, **provenance: Any) -> Policy:
    """The policy of a ``{layer: (weight bits, act bits)}`` assignment."""
    return Policy(layers={n: LayerBits(weight_bits=w, act_bits=a) for n, (w, a) in assignment.items()},
                  model=model, provenance=provenance)
