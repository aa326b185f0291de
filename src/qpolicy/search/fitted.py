"""A damage table fitted on measured policies.

The metrics predict each layer side's damage, but not how much a weight bit weighs against an activation bit, nor
one metric against another, in the loss the policy is judged by. Given policies that were measured (the validated
search's candidates and refinement), each metric's total weight damage and total activation damage of a policy (at
its bits, each metric divided by its total damage at the lowest bits) are the features, and the measured losses are
fitted by least squares with a free intercept and one non-negative slope per metric and side. The fitted table is
the sum of the metrics' normalized damages times those slopes: its ILP optimum is the policy the pooled
measurements point to, where the best-measured policy is the one that fitted the scoring images' noise best.

Pairwise terms (the product of consecutive layers' damages) were tried and predicted held-out measurements worse in
every goal row of ``benchmarks/results/fitted_damage.md``; they are not part of the model.

A pure function of tables and measurements: no ``torch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..sensitivity.base import SensitivityTable
from .base import Choice

__all__ = ["fit_table", "lowest_bits_total", "side_features"]


def lowest_bits_total(table: SensitivityTable) -> float:
    """A table's total damage (weights and activations, every layer) at its lowest bits: what each metric is
    divided by so that metrics on different scales weigh the same (1 for a table of zeros)."""
    lo = table.bits[0]
    return sum(table.weight[n][lo] + table.act[n][lo] for n in table.names) or 1.0


def side_features(tables: Sequence[SensitivityTable], assignment: Mapping[str, Choice]) -> list[float]:
    """``[W_1, A_1, W_2, A_2, ...]``: each table's total weight and activation damage at ``assignment``'s bits,
    divided by its total damage at its lowest bits (a bit-width the table did not score, such as float, adds 0)."""
    out = []
    for t in tables:
        total = lowest_bits_total(t)
        out.append(sum(t.weight[n].get(c[0], 0.0) for n, c in assignment.items()) / total)
        out.append(sum(t.act[n].get(c[1], 0.0) for n, c in assignment.items()) / total)
    return out


def fit_table(tables: Sequence[SensitivityTable], assignments: Sequence[Mapping[str, Choice]],
              losses: Sequence[float]) -> tuple[SensitivityTable, list[float]] | None:
    """The table fitted on measured policies (module docs) and its slopes ``[w_1, a_1, w_2, a_2, ...]``; None when
    there are fewer than two measurements per slope plus two, or every fitted slope is zero (no metric predicts
    the measurements at all)."""
    from scipy.optimize import nnls

    if not tables:
        return None
    k = 2 * len(tables)
    if len(assignments) != len(losses):
        raise ValueError(f"{len(assignments)} assignments but {len(losses)} losses")
    if len(losses) < k + 2:
        return None
    X = np.array([side_features(tables, a) for a in assignments])
    y = np.asarray(losses, dtype=float)
    # a free intercept as the difference of two non-negative ones
    coef, _ = nnls(np.c_[X, np.ones(len(y)), -np.ones(len(y))], y)
    # a slope whose whole effect over the measured policies is below rounding is zero
    reach = coef[:k] * (X.max(0) - X.min(0))
    tiny = reach <= 1e-9 * (1.0 + float(np.abs(y).max()))
    slopes = [0.0 if t else float(s) for s, t in zip(coef[:k], tiny, strict=True)]
    if not any(slopes):
        return None
    totals = [lowest_bits_total(t) for t in tables]
    first = tables[0]
    parts = list(zip(slopes[0::2], slopes[1::2], tables, totals, strict=True))
    weight = {n: {b: sum(sw * t.weight[n][b] / z for sw, _, t, z in parts) for b in first.bits} for n in first.names}
    act = {n: {b: sum(sa * t.act[n][b] / z for _, sa, t, z in parts) for b in first.bits} for n in first.names}
    return dataclasses.replace(first, metric="fitted", weight=weight, act=act), slopes
