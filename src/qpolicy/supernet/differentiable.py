"""Differentiable mixed-precision search (DMPQ) and its Shapley-based selection (SMPQ) on one supernet.

Both methods train the supernet of :mod:`qpolicy.supernet.mixed` the same way: the training images are split in two
disjoint halves; each step updates the weights and step sizes on a batch of the first half (SGD, cosine schedule),
then the architecture parameters alpha on a batch of the second half (Adam) with the loss

    cross-entropy + complexity_weight * sum_k relu(E[cost_k] / limit_k - 1)

over every budgeted quantity k, which steers the expected cost to the budget (and no lower). The softmax
temperature is annealed exponentially per step from ``temperature`` to ``final_temperature``: early on the mixing
is soft, so every candidate trains and alpha moves freely; by the end it is nearly one-hot, so the expected cost
the hinge steers is (nearly) the cost of the argmax policy. Without annealing (both 1) a short search ends with
flat alphas whose expected cost sits at the limit while their argmax lies far inside it (the discretization gap).

* **DMPQ** selects, per layer and side, the candidate with the largest alpha.
* **SMPQ** also estimates, ``shapley_rounds`` times per epoch, the Monte Carlo Shapley value of every
  (layer, side, candidate) player on ``shapley_images`` held-out training images (set aside from the second half,
  never augmented, never trained on; DMPQ sets them aside too, so both see the same data)
  (:mod:`qpolicy.supernet.shapley`: remove players in random order by masking their mixing weight, record the drop in
  top-1; truncate a permutation once top-1 is at or below ``truncation``), aggregates them as mean minus standard
  deviation, normalizes them by the largest magnitude (to [-1, 1]), and feeds them into alpha with momentum, as
  Shapley-NAS does: ``v <- momentum * v + (1 - momentum) * phi``, ``alpha <- alpha + v``. It selects by these
  Shapley-driven alphas.

The loop is the training engine's (:mod:`qpolicy.train`): the weight step is its step, the architecture side a
hook (:class:`_ArchStep`), and checkpoints and exact resume are its own.

Either way the budget is then enforced exactly: the ILP of :func:`qpolicy.search` picks one candidate per layer and
side minimizing ``sum -log softmax(alpha)`` under the budget, which is the argmax policy whenever that fits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import write_json
from .._validate import require_ints, require_numbers
from ..budget import Budget
from ..errors import ConfigError
from ..evaluate import resolve_device
from ..policy import Policy, versions
from ..quant.fake_quant import CalibConfig
from ..search import search as ilp_search
from ..sensitivity.base import SensitivityTable
from ..train import CHECKPOINT_NAME, Hook, TrainSpec, check_resume
from ..train import train as train_
from .mixed import SIDES, Supernet, build_supernet
from .shapley import ShapleyEstimate, monte_carlo_shapley

__all__ = ["DifferentiableConfig", "DifferentiableResult", "search_differentiable", "METHODS", "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)
METHODS = ("dmpq", "smpq")
_FORMAT = "qpolicy.supernet-checkpoint"


@dataclass(frozen=True, kw_only=True)
class DifferentiableConfig:
    """Settings of a differentiable search (defaults in brackets).

    Args:
        weight_bits, act_bits: Candidate widths [2, 3, 4, 6, 8].
        first_last: The first and last layer fixed at these bits; None searches them [8].
        epochs: Passes over the weight half of the training images [3].
        batch_size: Images per step, both halves [128].
        train_images: A seeded subset of the training split to use (None: all 50,000), split in halves.
        lr: Peak SGD learning rate of weights and step sizes (cosine to 0) [0.01].
        arch_lr: Adam learning rate of alpha [0.01]; arch_weight_decay [1e-3].
        complexity_weight: Weight of the budget hinge in alpha's loss [1.0].
        temperature, final_temperature: Softmax temperature at the first and the last step, annealed
            exponentially in between [1.0, 0.1]; equal values keep it fixed.
        shapley_samples: SMPQ: permutations per Shapley round [10].
        shapley_rounds: SMPQ: rounds per epoch, evenly spaced, the last at the epoch's end [1].
        shapley_images: SMPQ: held-out images of the second half that score a subnet [256].
        truncation: SMPQ: cut a permutation once top-1 (a fraction) is at or below this [0.2, twice chance on
            10 classes].
        momentum: SMPQ: momentum of the Shapley feedback into alpha [0.8].
        checkpoint_every: Steps between checkpoints inside an epoch (0: epoch ends and Shapley rounds only) [50].
        seed: Seeds the data split, the batches, the permutations and torch [0].
    """

    weight_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    act_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    first_last: int | None = 8
    epochs: int = 3
    batch_size: int = 128
    train_images: int | None = None
    lr: float = 0.01
    arch_lr: float = 0.01
    arch_weight_decay: float = 1e-3
    complexity_weight: float = 1.0
    temperature: float = 1.0
    final_temperature: float = 0.1
    shapley_samples: int = 10
    shapley_rounds: int = 1
    shapley_images: int = 256
    truncation: float = 0.2
    momentum: float = 0.8
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_bits", tuple(int(b) for b in self.weight_bits))
        object.__setattr__(self, "act_bits", tuple(int(b) for b in self.act_bits))
        require_ints(self, ("epochs", "batch_size", "shapley_samples", "shapley_rounds", "shapley_images"), minimum=1)
        require_ints(self, ("checkpoint_every", "seed"), minimum=0)
        if self.train_images is not None:
            require_ints(self, ("train_images",), minimum=4)
        require_numbers(self, ("lr", "arch_lr", "temperature", "final_temperature"), positive=True)
        require_numbers(self, ("arch_weight_decay", "complexity_weight"), positive=False,
                        message="a non-negative number")
        if not 0 <= self.truncation < 1:
            raise ConfigError(f"truncation must be an accuracy fraction in [0, 1), got {self.truncation!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class DifferentiableResult:
    """What a differentiable search produced.

    Attributes:
        method: "dmpq" or "smpq".
        policy: The selected policy (within the budget).
        argmax_policy: Per layer the largest-alpha candidate, before the budget step.
        alphas: Final architecture parameters ``{layer: {side: {bits: alpha}}}``.
        shapley: SMPQ: the rounds' estimates (players, mean, std, ...), last round last.
        history: Per epoch: losses, train top-1, expected cost relative to the limits, seconds.
        seconds: Wall time of this call (training + Shapley rounds).
        shapley_seconds: Of which Shapley estimation.
        resumed_from: ``{"epoch", "step"}`` when resumed.
    """

    method: str
    policy: Policy
    argmax_policy: Policy
    alphas: dict[str, Any]
    shapley: tuple[dict[str, Any], ...]
    history: tuple[dict[str, Any], ...]
    seconds: float
    shapley_seconds: float
    resumed_from: dict[str, int] | None
    supernet: Supernet | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "policy": self.policy.to_dict(), "argmax_policy": self.argmax_policy.to_dict(),
                "alphas": self.alphas, "shapley": list(self.shapley), "history": list(self.history),
                "seconds": self.seconds, "shapley_seconds": self.shapley_seconds, "resumed_from": self.resumed_from}


class _SubnetGame:
    """The Shapley game on a supernet: players are candidates, the value is top-1 (a fraction) on fixed images."""

    def __init__(self, net: Supernet, images: list[tuple[torch.Tensor, torch.Tensor]]):
        self.net, self.images = net, images

    def reset(self) -> None:
        self.net.reset_masks()

    def remove(self, player) -> None:
        self.net.remove(player)

    @torch.no_grad()
    def value(self) -> float:
        correct = sum(int((self.net(x).argmax(1) == y).sum()) for x, y in self.images)
        return correct / sum(len(y) for _, y in self.images)


def _split(train: Any, seed: int, limit: int | None, held: int, batch_size: int):
    """Disjoint seeded parts of an ArrayLoader's images: the weight half, the alpha half (less ``held`` images),
    and ``held`` plain (never augmented) images that score subnets for SMPQ."""
    from ..data import ArrayLoader

    if not isinstance(train, ArrayLoader):
        raise ConfigError("the differentiable search needs a qpolicy.data.ArrayLoader (qpolicy.data.loader(...))")
    idx = train.indices[torch.randperm(len(train.indices), generator=torch.Generator().manual_seed(seed))]
    if limit is not None:
        idx = idx[:limit]
    half = len(idx) // 2
    held = min(held, half // 2)
    if half - held < 1:
        raise ConfigError("the training data needs at least 4 images for the two halves")
    same = {"mean": train.mean, "std": train.std, "pad": train.pad, "flip": train.flip}  # the loader's data set
    make = lambda ix, s: ArrayLoader(train.dataset, batch_size=batch_size, shuffle=True,  # noqa: E731
                                     augment=train.augment, seed=s, indices=ix, **same)
    scoring = ArrayLoader(train.dataset, batch_size=256, shuffle=False, augment=False, indices=idx[len(idx) - held:],
                          **same)
    return make(idx[:half], seed), make(idx[half:len(idx) - held], seed + 1), scoring


def _complexity(net: Supernet, limits: Any) -> torch.Tensor:
    cost = net.expected_cost()
    terms = [F.relu(cost[k] / getattr(limits, k) - 1.0) for k in cost if getattr(limits, k) is not None]
    return sum(terms) if terms else torch.zeros(())


def _trainable(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _temperature(config: DifferentiableConfig, done: int, total: int) -> float:
    """The annealed softmax temperature after ``done`` of ``total`` steps (exponential)."""
    frac = min(max(done / max(total - 1, 1), 0.0), 1.0)
    return config.temperature * (config.final_temperature / config.temperature) ** frac


def _preference_table(net: Supernet, name: str) -> SensitivityTable:
    """Damage ``-log softmax(alpha / T)`` per candidate at the final temperature (a preference, so not made
    monotone); bits the layer does not offer get a prohibitive damage (the search never offers them anyway)."""
    bits = sorted({b for _, m in net.mixed_layers() for s in SIDES for b in m.bits[s]})
    scores: dict[str, dict[str, dict[int, float]]] = {"weight": {}, "act": {}}
    with torch.no_grad():
        for n, m in net.mixed_layers():
            for s in SIDES:
                logp = F.log_softmax(m.alpha(s) / m.temperature, 0)
                own = {b: -float(v) for b, v in zip(m.bits[s], logp, strict=True)}
                scores[s][n] = {b: own.get(b, 1e6) for b in bits}
    return SensitivityTable(metric=name, bits=tuple(bits), layers=net.layers, weight=scores["weight"],
                            act=scores["act"], monotone=False)


def _check_budget(model: nn.Module, budget: Budget, config: DifferentiableConfig) -> None:
    """Raise InfeasibleBudgetError (with the smallest achievable cost) if no candidate policy meets ``budget``."""
    from ..layers import quantizable_layers

    layers = tuple(quantizable_layers(model))
    bits = sorted(set(config.weight_bits) | set(config.act_bits) | ({config.first_last} - {None}))
    zero = {li.name: dict.fromkeys(bits, 0.0) for li in layers}
    ilp_search(SensitivityTable(metric="none", bits=tuple(bits), layers=layers, weight=zero, act=zero), budget,
               strategy="uniform", first_last=config.first_last, weight_bits=config.weight_bits,
               act_bits=config.act_bits)


class _ArchStep(Hook):
    """The architecture side of the search, as an engine hook: before each weight step the softmax temperature is
    set and alpha frozen (no alpha gradients in the weight step); after it, one Adam step of alpha on a batch of
    the other half (cross-entropy + the budget hinge) with the weights frozen, and for SMPQ a Shapley round at the
    scheduled steps (then a checkpoint). Its state (alpha's optimizer, the Shapley rounds and feedback velocity)
    goes into the engine's checkpoint."""

    name = "arch"

    def __init__(self, net: Supernet, method: str, config: DifferentiableConfig, limits: Any, arch_data: Any, held: Any,
                 dev: torch.device, steps: int, workers: int | None = None, address: str | None = None):
        self.net, self.method, self.config, self.limits = net, method, config, limits
        self.workers, self.address = workers, address
        self.arch_data, self.held, self.dev, self.steps = arch_data, held, dev, steps
        self.weight_params, self.arch_params = net.weight_parameters(), net.arch_parameters()
        self.opt_a = torch.optim.Adam(self.arch_params, lr=config.arch_lr, betas=(0.5, 0.999),
                                      weight_decay=config.arch_weight_decay)
        self.players = net.players()
        self.velocity = {p: 0.0 for p in self.players}
        self.shapley: list[dict[str, Any]] = []
        self.shapley_seconds = 0.0
        self.rounds_at = sorted({max(1, round(steps * (r + 1) / config.shapley_rounds))
                                 for r in range(config.shapley_rounds)})
        self.sums: dict[str, float] = {}
        self.arch_iter: Any = None

    def start_epoch(self, epoch: int, step: int) -> None:
        self.arch_iter = self.arch_data.batches(epoch, step % len(self.arch_data))
        self.sums = {"arch_loss": 0.0, "complexity": 0.0, "steps": 0}

    def before_step(self, epoch: int, step: int, global_step: int, total_steps: int) -> None:
        self.net.set_temperature(_temperature(self.config, global_step, total_steps))
        _trainable(self.arch_params, False)  # no alpha gradients in the weight step ...

    def after_step(self, epoch: int, step: int) -> bool:
        _trainable(self.arch_params, True)
        try:
            xa, ya = next(self.arch_iter)
        except StopIteration:
            self.arch_iter = self.arch_data.batches(epoch + 1000)
            xa, ya = next(self.arch_iter)
        xa, ya = xa.to(self.dev), ya.to(self.dev)
        _trainable(self.weight_params, False)  # ... and no weight gradients in the alpha step
        comp = _complexity(self.net, self.limits)
        arch_loss = F.cross_entropy(self.net(xa), ya) + self.config.complexity_weight * comp
        self.opt_a.zero_grad(set_to_none=True)
        arch_loss.backward()
        self.opt_a.step()
        _trainable(self.weight_params, True)
        self.sums["arch_loss"] += float(arch_loss.detach())
        self.sums["complexity"] += float(comp.detach())
        self.sums["steps"] += 1
        if self.method == "smpq" and step in self.rounds_at:
            self._shapley_round(epoch, step)
            return True
        return False

    def _shapley_round(self, e: int, s: int) -> None:
        t = time.perf_counter()
        net, config = self.net, self.config
        images = [(x.to(self.dev), y.to(self.dev)) for x, y in self.held]
        was_training = net.training
        net.eval()
        try:
            est: ShapleyEstimate = monte_carlo_shapley(
                self.players, _SubnetGame(net, images), samples=config.shapley_samples,
                truncation=config.truncation, seed=config.seed * 1000 + len(self.shapley),
                desc=f"shapley {len(self.shapley) + 1}", workers=self.workers, address=self.address)
        finally:
            net.reset_masks()
            net.train(was_training)
        score = est.risk_adjusted()
        top = max(abs(v) for v in score.values()) or 1.0
        with torch.no_grad():
            for p in self.players:
                self.velocity[p] = config.momentum * self.velocity[p] + (1 - config.momentum) * score[p] / top
                name, side, bits = p
                m = net.mixed(name)
                m.alpha(side)[m.bits[side].index(bits)] += self.velocity[p]
        self.shapley_seconds += time.perf_counter() - t
        self.shapley.append({**est.to_dict(), "epoch": e, "step": s, "seconds": time.perf_counter() - t,
                             "normalized": [score[p] / top for p in self.players]})
        log.info("Shapley round %d: %d evaluations, %d permutations truncated, %.1f s", len(self.shapley),
                 est.evaluations, est.truncated, time.perf_counter() - t)

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        cost = {k: float(v.detach()) for k, v in self.net.expected_cost().items()}
        n = max(self.sums["steps"], 1)
        return {"arch_loss": self.sums["arch_loss"] / n, "complexity": self.sums["complexity"] / n,
                "expected_cost_over_limit": {k: cost[k] / getattr(self.limits, k) for k in cost
                                             if getattr(self.limits, k) is not None}}

    def close(self) -> None:
        self.net.reset_masks()
        _trainable(self.weight_params + self.arch_params, True)

    def state_dict(self) -> dict[str, Any]:
        return {"opt_a": self.opt_a.state_dict(), "shapley": self.shapley,
                "velocity": [[list(p), v] for p, v in self.velocity.items()], "shapley_seconds": self.shapley_seconds}

    def load_state_dict(self, state: Any) -> None:
        self.opt_a.load_state_dict(state["opt_a"])
        self.shapley = list(state["shapley"])
        self.velocity = {tuple(p): float(v) for p, v in state["velocity"]}
        self.shapley_seconds = float(state.get("shapley_seconds", 0.0))


def search_differentiable(model: nn.Module, budget: Budget, *, method: str = "dmpq", train: Iterable[Any],
               calib: Iterable[Any], config: DifferentiableConfig | None = None, out_dir: str | Path | None = None,
               resume: bool = False, device: str | torch.device | None = None,
               model_name: str | None = None, workers: int | None = None,
               address: str | None = None) -> DifferentiableResult:
    """Run DMPQ or SMPQ on a supernet of ``model`` (left untouched) and select a policy within ``budget``.

    Args:
        model: The float (pretrained) model.
        budget: The limits the selected policy meets.
        method: "dmpq" or "smpq" (module docs).
        train: Training batches, a :class:`qpolicy.data.ArrayLoader` (split into the weight and alpha halves).
        calib: Calibration batches for the initial step sizes (:func:`qpolicy.data.calib_loader`).
        config: Settings.
        out_dir: Writes ``checkpoint.pt`` (every ``checkpoint_every`` steps, each epoch end and Shapley round),
            then ``policy.json`` and ``search.json`` (alphas, Shapley values, history). None: no files.
        resume: Continue from ``out_dir/checkpoint.pt`` (same settings required).
        device: "auto" (CUDA when available), "cpu", ...
        workers, address: SMPQ: play each round's Shapley permutations on a local Ray with this many CPUs, or on
            the Ray cluster at this address (:func:`qpolicy.runner.run_many`; one Ray runtime for the whole run).
            The estimates, and so the policy, equal the serial ones.
    """
    from ..runner import check_address, check_workers, ray_session

    if method not in METHODS:
        from ..errors import UnknownNameError

        raise UnknownNameError("differentiable search method", method, METHODS)
    config = config or DifferentiableConfig()
    workers, address = check_workers(workers), check_address(address)
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_resume(out, resume, fmt=_FORMAT, what="differentiable-search")  # before any work
    if resume and out is None:
        raise ConfigError("resume needs out_dir")
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    _check_budget(model, budget, config)  # an impossible budget fails now, not after the training
    weight_data, arch_data, held = _split(train, config.seed, config.train_images, config.shapley_images,
                                        config.batch_size)
    net = build_supernet(model, weight_bits=config.weight_bits, act_bits=config.act_bits,
                         first_last=config.first_last, calib=calib,
                         calib_config=CalibConfig(seed=config.seed)).to(dev)
    opt_w = torch.optim.SGD([{"params": [p for p in net.weight_parameters() if p.dim() > 1], "weight_decay": 5e-4},
                             {"params": [p for p in net.weight_parameters() if p.dim() <= 1], "weight_decay": 0.0}],
                            lr=config.lr, momentum=0.9, nesterov=True)
    limits = budget.limits(net.layers, without_latency=method)
    hook = _ArchStep(net, method, config, limits, arch_data, held, dev, len(weight_data), workers=workers,
                     address=address)
    spec = TrainSpec(epochs=config.epochs, lr=config.lr, optimizer=opt_w, hooks=(hook,),
                     checkpoint_every=config.checkpoint_every, seed=config.seed, fmt=_FORMAT,
                     what="differentiable-search", desc=f"{method} epoch",
                     settings={**config.to_dict(), "method": method, "budget": budget.to_dict()})
    with ray_session(workers if method == "smpq" else None, address if method == "smpq" else None):
        run = train_(net, weight_data, spec, out_dir=out, resume=resume, device=dev)
    history, resumed_from = run.history, run.resumed_from
    shapley, shapley_seconds = hook.shapley, hook.shapley_seconds
    net.set_temperature(config.final_temperature)

    table = _preference_table(net, f"{method}-alpha")
    result = ilp_search(table, budget, strategy="ilp", first_last=config.first_last, model_name=model_name,
                        weight_bits=config.weight_bits, act_bits=config.act_bits)
    prov = dict(result.policy.provenance)
    prov.update({"method": method, "metric": f"{method}-alpha", "strategy": f"{method} + ilp budget step",
                 "seed": config.seed, "config": config.to_dict(), "versions": versions(),
                 "search_seconds": time.perf_counter() - t_start})
    prov.pop("sensitivity", None)
    policy = Policy(layers=dict(result.policy.layers), model=model_name, provenance=prov)
    res = DifferentiableResult(method=method, policy=policy, argmax_policy=net.argmax_policy(model_name=model_name),
                    alphas={n: {s: {str(b): v for b, v in d.items()} for s, d in sides.items()}
                            for n, sides in net.alphas().items()},
                    shapley=tuple(shapley), history=tuple(history), seconds=time.perf_counter() - t_start,
                    shapley_seconds=shapley_seconds, resumed_from=resumed_from, supernet=net)
    if out is not None:
        policy.save(out / "policy.json")
        write_json(out / "search.json", json.loads(json.dumps(res.to_dict())))
    return res
