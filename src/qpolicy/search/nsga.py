"""NSGA-II (Deb et al. 2002, through pymoo) over per-layer bit choices: the Pareto front of (score, cost).

A pure function of the candidate choices, a cost function and a score function, both on integer encodings
(one candidate index per searched variable); it never sees a model. Used by the QFA search with a learned
accuracy predictor as the score (:mod:`qpolicy.supernet.qfa_search`), and usable with any cheap score.
Needs ``pip install 'qpolicy[qfa]'`` (pymoo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .._validate import require_ints
from ..errors import ConfigError

__all__ = ["NSGAConfig", "nsga2_front", "pareto_mask"]


@dataclass(frozen=True, kw_only=True)
class NSGAConfig:
    """NSGA-II settings: population size, generations, seed."""

    population: int = 64
    generations: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("population", "generations"), minimum=2)
        require_ints(self, ("seed",), minimum=0)


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of ``points`` (objectives to minimize, one column each) no other row dominates."""
    pts = np.asarray(points, dtype=float)
    keep = np.ones(len(pts), dtype=bool)
    for i in range(len(pts)):
        dominated = np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def nsga2_front(sizes: Sequence[int], score: Callable[[np.ndarray], np.ndarray],
                cost: Callable[[np.ndarray], np.ndarray], *, limit: float | None = None,
                config: NSGAConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-dominated encodings of (maximize ``score``, minimize ``cost``).

    Args:
        sizes: Number of candidates of each variable (encodings are integer indices ``0 .. size - 1``, index 0
            the cheapest: the all-zero encoding seeds the population, so a feasible limit is always met).
        score: Encodings (N, V) -> scores (N,) to maximize (a predicted accuracy).
        cost: Encodings (N, V) -> costs (N,) to minimize (BitOPs).
        limit: Only encodings with cost at most this (a constraint), if given.
        config: Population, generations, seed.

    Returns:
        (encodings, scores, costs) of the final non-dominated set, by increasing cost.
    """
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.optimize import minimize
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"NSGA-II needs pymoo (pip install 'qpolicy[qfa]'): {e}") from None
    config = config or NSGAConfig()
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError("NSGA-II needs at least one variable with at least one candidate")
    upper = np.array([s - 1 for s in sizes], dtype=float)

    class _Bits(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=len(sizes), n_obj=2, n_ieq_constr=1 if limit is not None else 0,
                             xl=np.zeros(len(sizes)), xu=np.maximum(upper, 1e-9), vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            enc = np.clip(np.rint(x), 0, upper).astype(int)
            c = np.asarray(cost(enc), dtype=float)
            out["F"] = np.column_stack([-np.asarray(score(enc), dtype=float), c])
            if limit is not None:
                out["G"] = (c - limit)[:, None]

    # the initial population: the cheapest encoding (all zeros: candidates are sorted by width, so it meets any
    # feasible limit) and uniform draws
    rng = np.random.default_rng(config.seed)
    start = np.vstack([np.zeros(len(sizes)), rng.integers(0, np.array(sizes), size=(config.population - 1,
                                                                                     len(sizes)))]).astype(float)
    algorithm = NSGA2(pop_size=config.population, sampling=start,
                      crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                      mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    res = minimize(_Bits(), algorithm, ("n_gen", config.generations), seed=config.seed, verbose=False)
    if res.X is None:
        raise ConfigError("NSGA-II found no encoding within the cost limit")
    enc = np.clip(np.rint(np.atleast_2d(res.X)), 0, upper).astype(int)
    enc = np.unique(enc, axis=0)
    s, c = np.asarray(score(enc), dtype=float), np.asarray(cost(enc), dtype=float)
    keep = pareto_mask(np.column_stack([-s, c]))
    if limit is not None:
        keep &= c <= limit
    order = np.argsort(c[keep], kind="stable")
    return enc[keep][order], s[keep][order], c[keep][order]
