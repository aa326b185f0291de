"""``qfa``: search a policy on a trained QFA supernet (:mod:`qpolicy.supernet.shared`), as in the paper.

1. **Measure** ``samples`` subnets drawn uniformly (plus the largest and the smallest) on ``val_images`` validation
   images (never test), each with its own BatchNorm and BatchQuant statistics (:func:`subnet_model`).
2. **Predict**: an MLP accuracy predictor (:mod:`qpolicy.supernet.predictor`) fitted on all but ``held_out`` of
   them; Kendall's tau on the held-out ones says how well it ranks, then it is refitted on all.
3. **Evolve**: NSGA-II (:mod:`qpolicy.search.nsga`) over (predicted accuracy, BitOPs) within the budget.
4. **Re-measure** the ``finalists`` front points of highest predicted accuracy exactly (step 1's way) and return
   the best measured one.

Layers that read one tensor are not tied here (the supernet draws each layer's bits on its own).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .._validate import require_ints, require_numbers
from ..budget import Budget
from ..costs import COST_KEYS, layer_cost, policy_cost
from ..errors import ConfigError, InfeasibleBudgetError
from ..policy import versions
from ..search.base import SearchResult
from ..search.nsga import NSGAConfig, nsga2_front
from .predictor import AccuracyPredictor, PredictorConfig, kendall_tau
from .shared import load_qfa, policy_of, sandwich, subnet_model

__all__ = ["QFASearchConfig", "search_qfa"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class QFASearchConfig:
    """Settings of the search on a supernet (module docs)."""

    samples: int = 60
    held_out: float = 0.25
    val_images: int = 1000
    population: int = 64
    generations: int = 60
    finalists: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("samples", "val_images", "population", "generations", "finalists"), minimum=1)
        require_ints(self, ("seed",), minimum=0)
        require_numbers(self, ("held_out",), positive=False)
        if not 0 <= self.held_out < 1:
            raise ConfigError(f"held_out must be a fraction in [0, 1), got {self.held_out!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _measure_subnet(shared: dict[str, Any], assignment: dict[str, list[int]]) -> float:
    """A subnet's validation top-1 with its own statistics (a ``run_many`` task)."""
    from ..evaluate import evaluate

    plain = subnet_model(shared["net"], policy_of({n: tuple(v) for n, v in assignment.items()}), shared["calib"],
                         shared["qcfg"])
    return evaluate(plain, shared["val"], device=shared["device"], desc="subnet").top1


def search_qfa(model: nn.Module, budget: Budget, *, supernet: str | os.PathLike, calib: Iterable[Any],
               val: Iterable[Any], config: QFASearchConfig | None = None, device: str | None = None,
               model_name: str | None = None, front_out: str | os.PathLike | None = None,
               workers: int | None = None, address: str | None = None) -> SearchResult:
    """The best measured policy within ``budget`` on the trained supernet in ``supernet`` (module docs).

    Args:
        model: The float model the supernet was trained from (not modified).
        budget: Limits the policy must meet.
        supernet: Run folder of :func:`qpolicy.supernet.shared.train_qfa`.
        calib: Calibration batches for each subnet's statistics.
        val: Validation batches (never the test split).
        config: :class:`QFASearchConfig`.
        front_out: Also write the front (predicted and measured) as a ``qpolicy.pareto`` file for the report.
        workers, address: Measure the subnets (step 1) and the finalists (step 4) on a local Ray with this many
            CPUs, or on the Ray cluster at this address (:func:`qpolicy.runner.run_many`); the same policy as
            serially. NSGA-II itself only queries the predictor and stays in this process.
    """
    import itertools

    from ..runner import check_address, check_workers, ray_session, run_many

    config = config or QFASearchConfig()
    workers, address = check_workers(workers), check_address(address)
    t0 = time.perf_counter()
    net, qcfg = load_qfa(model, supernet)
    cands = {n: (m.bits["weight"], m.bits["act"]) for n, m in net.mixed_layers()}
    variables = [(n, side) for n, (w, a) in cands.items() for side, bits in ((0, w), (1, a)) if len(bits) > 1]
    sizes = [len(cands[n][side]) for n, side in variables]
    if not variables:
        raise ConfigError("the supernet has no layer with a choice of bits")
    info = {li.name: li for li in net.layers}
    limits = budget.limits(net.layers, without_latency="qfa")

    def assignment(enc: np.ndarray) -> dict[str, tuple[int, int]]:
        out = {n: [max(w), max(a)] for n, (w, a) in cands.items()}
        for (n, side), k in zip(variables, enc, strict=True):
            out[n][side] = cands[n][side][int(k)]
        return {n: (w, a) for n, (w, a) in out.items()}

    def encode(assign: dict[str, tuple[int, int]]) -> list[int]:
        return [cands[n][side].index(assign[n][side]) for n, side in variables]

    def costs(enc: np.ndarray) -> dict[str, np.ndarray]:
        tot = {k: np.zeros(len(enc)) for k in COST_KEYS}
        for n, (wb, ab) in cands.items():
            w = np.full(len(enc), max(wb), dtype=float)
            a = np.full(len(enc), max(ab), dtype=float)
            for j, (vn, side) in enumerate(variables):
                if vn == n:
                    (w if side == 0 else a)[:] = np.asarray(cands[n][side], dtype=float)[enc[:, j]]
            for k, v in layer_cost(info[n], w, a).items():
                tot[k] += v
        return tot

    def excess(enc: np.ndarray) -> np.ndarray:
        c = costs(enc)
        ratios = [c[k] / getattr(limits, k) for k in COST_KEYS if getattr(limits, k) is not None]
        return np.max(ratios, axis=0) if ratios else np.zeros(len(enc))

    smallest = np.zeros((1, len(variables)), dtype=int)
    if excess(smallest)[0] > 1 + 1e-9:
        raise InfeasibleBudgetError(f"budget {budget} cannot be met with the supernet's candidate bits")

    cal = qcfg.calib_config()
    shared = {"net": net, "qcfg": qcfg, "val": val, "device": device,
              "calib": list(itertools.islice(calib, max(cal.bn_batches, cal.batches)))}  # shipped once

    def measure_all(encodings: Any, desc: str) -> list[float]:
        items = [{n: list(v) for n, v in assignment(e).items()} for e in encodings]
        return run_many(_measure_subnet, items, shared=shared, workers=workers, address=address, desc=desc)

    with ray_session(workers, address):  # one Ray runtime for both measuring steps
        # 1. measured subnets: the largest, the smallest and uniform draws
        rng = random.Random(config.seed)
        drawn = sandwich(rng, cands, max(config.samples - 2, 0))
        enc = np.array([encode(a) for a in drawn], dtype=int)
        enc, first = np.unique(enc, axis=0, return_index=True)
        enc = enc[np.argsort(first)]
        acc = np.array(measure_all(enc, "measure subnets"))
        measure_seconds = time.perf_counter() - t0

        # 2. the predictor, its held-out ranking quality, then refitted on everything
        order = np.random.default_rng(config.seed).permutation(len(enc))
        n_out = int(round(config.held_out * len(enc)))
        tau = None
        pcfg = PredictorConfig(seed=config.seed)
        if n_out >= 3 and len(enc) - n_out >= 2:
            test_idx, fit_idx = order[:n_out], order[n_out:]
            held = AccuracyPredictor(sizes, pcfg).fit(enc[fit_idx], acc[fit_idx])
            tau = kendall_tau(held.predict(enc[test_idx]), acc[test_idx])
        predictor = AccuracyPredictor(sizes, pcfg).fit(enc, acc)

        # 3. NSGA-II over (predicted accuracy, BitOPs) within the budget (as a relative-excess constraint)
        t_nsga = time.perf_counter()
        front_enc, front_pred, _ = nsga2_front(
            sizes, predictor.predict, lambda e: excess(e), limit=1.0 + 1e-9,
            config=NSGAConfig(population=config.population, generations=config.generations, seed=config.seed))
        nsga_seconds = time.perf_counter() - t_nsga

        # 4. finalists measured exactly; the best measured one wins
        picks = np.argsort(-front_pred, kind="stable")[:config.finalists]
        final_acc = measure_all([front_enc[i] for i in picks], "measure finalists")
        finalists = [(front_enc[i], float(front_pred[i]), a) for i, a in zip(picks, final_acc, strict=True)]
    best_enc, best_pred, best_acc = max(finalists, key=lambda f: f[2])
    best = assignment(best_enc)
    seconds = time.perf_counter() - t0
    cost = policy_cost(net.layers, policy_of(best))
    provenance = {
        "method": "search", "metric": "qfa-predictor", "strategy": "qfa", "budget": budget.to_dict(),
        "candidates": {"weight_bits": sorted({b for w, _ in cands.values() for b in w}),
                       "act_bits": sorted({b for _, a in cands.values() for b in a})},
        "seed": config.seed, "cost": cost.to_dict(per_layer=False), "search_seconds": seconds,
        "qfa": {"supernet": str(supernet), "val_images": config.val_images, "measured_subnets": len(enc),
                "predictor_kendall_tau": tau, "held_out": n_out, "predicted_val_top1": best_pred,
                "val_top1": best_acc, "finalists": len(finalists), "supernet_config": qcfg.to_dict()},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "versions": versions()}
    policy = policy_of(best, model=model_name, **provenance)
    front = []
    for e, p in zip(front_enc, front_pred, strict=True):
        pol = policy_of(assignment(e))
        pt = {"policy": pol.to_dict(), "cost": policy_cost(net.layers, pol).to_dict(per_layer=False),
              "predicted_val_top1": float(p)}
        for fe, _, fa in finalists:
            if np.array_equal(fe, e):
                pt["top1"] = fa  # measured, on the validation images
        front.append(pt)
    if front_out is not None:
        from .._io import write_json

        write_json(Path(front_out), {"format": "qpolicy.pareto", "version": 1,
                                     "metric": "qfa (validation top-1 of the finalists)",
                                     "strategy": "nsga2", "key": "bitops", "points": front})
    extra = {"front": front, "measured": [{"encoding": e.tolist(), "val_top1": float(a)} for e, a in zip(enc, acc,
                                                                                                      strict=True)],
             "kendall_tau": tau, "measure_seconds": measure_seconds, "nsga_seconds": nsga_seconds}
    return SearchResult(policy=policy, cost=cost, predicted_damage=-best_acc, strategy="qfa", seconds=seconds,
                        extra=extra)
