"""Pareto front: re-solve one sensitivity table over a sweep of one budget (torch-free).

Each point is an independent search at one budget value; the table is computed once, so a sweep costs only the
solver time per point. Budgets no policy can meet are recorded as infeasible rather than stopping the sweep.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._io import write_json
from ..budget import Budget
from ..errors import ConfigError, InfeasibleBudgetError, shorten
from ..sensitivity.base import SensitivityTable
from .base import search

__all__ = ["ParetoFront", "pareto", "parse_sweep"]

_KEYS = ("size", "bitops", "wbits", "abits")


@dataclass(frozen=True, kw_only=True)
class ParetoFront:
    """Search results along a budget sweep: ``points`` are dicts (budget value, cost, damage, policy, seconds)."""

    key: str
    metric: str
    strategy: str
    points: tuple[dict[str, Any], ...]
    infeasible: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "qpolicy.pareto", "version": 1, "key": self.key, "metric": self.metric,
                "strategy": self.strategy, "points": list(self.points), "infeasible": list(self.infeasible),
                **self.extra}

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())


MAX_POINTS = 1000


def parse_sweep(text: str) -> list[float]:
    """``"0.1:0.5:20"`` -> 20 evenly spaced values from 0.1 to 0.5; ``"0.2,0.3"`` -> those values (positive, finite,
    at most MAX_POINTS of them)."""
    import math

    try:
        if len(text) > 10_000:
            raise ValueError
        if ":" in text:
            lo, hi, n = text.split(":")
            lo_f, hi_f, count = float(lo), float(hi), int(n)
            if not 1 <= count <= MAX_POINTS or hi_f < lo_f:
                raise ValueError
            values = [lo_f + (hi_f - lo_f) * i / max(count - 1, 1) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
        if not values or len(values) > MAX_POINTS or not all(0 < v < math.inf for v in values):
            raise ValueError
        return values
    except ValueError:
        raise ConfigError(f"bad sweep {shorten(text)}: expected LOW:HIGH:COUNT (e.g. 0.1:0.5:20) or a list 0.2,0.3 "
                          f"of positive numbers, at most {MAX_POINTS} points") from None


def pareto(table: SensitivityTable, key: str, values: Sequence[float], *, strategy: str = "ilp",
           fixed: Budget | None = None, **search_kwargs: Any) -> ParetoFront:
    """Search at each value of budget ``key`` (size, bitops relative to W8A8; wbits, abits in bits).

    Args:
        table: Sensitivity table, computed once.
        key: Which budget to sweep.
        values: The budget values.
        strategy: Search strategy.
        fixed: Other limits that hold at every point (e.g. ``Budget(abits=8)``).
        search_kwargs: Passed to :func:`qpolicy.search` (weight_bits, act_bits, first_last, seed).
    """
    if key not in _KEYS:
        raise ConfigError(f"sweep key must be one of {', '.join(_KEYS)}, got {key!r}")
    if not values:
        raise ConfigError("a sweep needs at least one value")
    base = fixed.to_dict() if fixed else {}
    points, infeasible = [], []
    for v in sorted(values):
        budget = Budget(**{**base, key: v})
        try:
            r = search(table, budget, strategy=strategy, **search_kwargs)
        except InfeasibleBudgetError:
            infeasible.append(v)
            continue
        points.append({"budget": budget.to_dict(), "value": v, "cost": r.cost.to_dict(per_layer=False),
                       "predicted_damage": r.predicted_damage, "seconds": r.seconds,
                       "policy": r.policy.to_dict()})
    return ParetoFront(key=key, metric=table.metric, strategy=strategy, points=tuple(points),
                       infeasible=tuple(infeasible))
