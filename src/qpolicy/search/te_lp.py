"""``te-lp``: GMPQ-TE's allocation. Maximize ``sum_i TE_i * b_i`` under the budget (the least-damage policy of a TE
table), with the ordering constraint ``TE_i > TE_j => b_i >= b_j`` for weight and activation bits separately,
among the layers whose bits are searched (fixed first/last layers are left out). Any table works: a layer's
importance on a side is the slope of its damage over the scored bits, which for a TE table is its TE.

Two exact solvers give the same optimum:

* a dynamic program over the layers in importance order (the fast path, typically 5-30 ms). The ordering makes
  every feasible policy a staircase: each layer's (weight, act) bits are at most the previous layer's. The DP keeps,
  for each (weight, act) state of the last layer placed, the Pareto frontier of (budgeted cost, damage) over the
  partial policies ending there; a partial policy that costs more and loses more than another one ending in the
  same state can never be completed into a better policy, so pruning it loses nothing. Partial policies that
  cannot fit even with the cheapest bits on the remaining layers are dropped. It applies when one quantity is
  budgeted, both sides rank the layers in the same strict order, and no ties join free layers;
* otherwise the integer program of ``ilp`` with the ordering rows added (HiGHS: 0.1-2 s on a real network; on
  hundreds of layers whose weight and activation orders differ it can take long, so it stops after
  ``MILP_TIME_LIMIT`` seconds with its best policy and a warning giving the optimality gap).
"""

from __future__ import annotations

import numpy as np

from .base import BUDGET_RTOL, COST_KEYS, STRATEGIES, Choice, Problem, choice_cost
from .ilp import solve_milp

__all__ = ["solve_te_lp", "importance", "order_rows", "MILP_TIME_LIMIT"]

MILP_TIME_LIMIT = 10.0  # seconds


def importance(problem: Problem, side: str) -> dict[str, float]:
    """A layer's importance on one side ("weight" or "act"): the slope of its damage over the scored bits.
    For a TE table (damage = TE * (max_bits - b)) this is the layer's TE."""
    scores = getattr(problem.table, side)
    lo, hi = problem.table.bits[0], problem.table.bits[-1]
    return {n: (scores[n][lo] - scores[n][hi]) / max(hi - lo, 1) for n in problem.choices}


def _free(problem: Problem) -> list[str]:
    return [li.name for li in problem.layers if len(problem.choices[li.name]) > 1]


def order_rows(problem: Problem) -> list[tuple[str, str, int]]:
    """The ordering as rows (a, b, side): bits[a][side] >= bits[b][side]. Layers are grouped by equal importance;
    every layer of a group is at least every layer of the next lower group (transitivity gives the rest)."""
    free = _free(problem)
    rows = []
    for side, pos in (("weight", 0), ("act", 1)):
        imp = importance(problem, side)
        levels = sorted({imp[n] for n in free}, reverse=True)
        groups = [[n for n in free if imp[n] == v] for v in levels]
        rows += [(a, b, pos) for hi, lo in zip(groups, groups[1:], strict=False) for a in hi for b in lo]
    return rows


@STRATEGIES.register("te-lp")
def solve_te_lp(problem: Problem, seed: int = 0) -> dict[str, Choice]:
    ranked = _dp_order(problem)
    if ranked is not None:
        return solve_dp(problem, ranked)
    return solve_milp(problem, order=order_rows(problem), time_limit=MILP_TIME_LIMIT)


def _dp_order(problem: Problem) -> list[str] | None:
    """The layer order for the DP, or None when the DP does not apply (see module docs)."""
    keys = [k for k in COST_KEYS if getattr(problem.limits, k) is not None]
    free = _free(problem)
    if len(keys) != 1 or not free or problem.limits.latency_ms is not None:
        return None
    if any(a in free or b in free for a, b, _ in problem.ties):
        return None
    ranked = []
    for side in ("weight", "act"):
        imp = importance(problem, side)
        order = sorted(free, key=lambda n, imp=imp: -imp[n])
        if any(imp[a] <= imp[b] for a, b in zip(order, order[1:], strict=False)):
            return None  # equal importances: groups, not a chain
        ranked.append(order)
    return ranked[0] if ranked[0] == ranked[1] else None


def _pareto(cost: np.ndarray, dmg: np.ndarray, *payload: np.ndarray) -> tuple[np.ndarray, ...]:
    """The points no other point beats on both cost and damage (ties: the first kept)."""
    o = np.lexsort((dmg, cost))
    cost, dmg = cost[o], dmg[o]
    keep = np.ones(len(dmg), dtype=bool)
    keep[1:] = dmg[1:] < np.minimum.accumulate(dmg)[:-1]
    return (cost[keep], dmg[keep], *(p[o][keep] for p in payload))


def solve_dp(problem: Problem, ranked: list[str]) -> dict[str, Choice]:
    """The exact staircase DP (module docs) over the layers ``ranked`` from most to least important."""
    from ..errors import InfeasibleBudgetError

    (key,) = [k for k in COST_KEYS if getattr(problem.limits, k) is not None]
    limit = getattr(problem.limits, key) * (1 + BUDGET_RTOL)
    info = {li.name: li for li in problem.layers}
    fixed = [n for n in problem.choices if n not in ranked]
    base = sum(choice_cost(info[n], problem.choices[n][0])[key] for n in fixed)
    wbits = sorted({c[0] for n in ranked for c in problem.choices[n]})
    abits = sorted({c[1] for n in ranked for c in problem.choices[n]})
    na = len(abits)
    cheapest = [min(choice_cost(info[n], c)[key] for c in problem.choices[n]) for n in ranked]
    rest = np.append(np.cumsum(cheapest[::-1])[::-1][1:], 0.0)  # cheapest cost of the layers after i
    # a frontier: (cost, damage, previous state index, position in the previous state's frontier)
    start = (np.array([float(base)]), np.array([0.0]), np.array([-1]), np.array([0]))
    frontiers: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
    history = []
    for i, name in enumerate(ranked):
        reach: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}  # best partial policies at state >= (w, a)
        for wi in range(len(wbits) - 1, -1, -1):
            for ai in range(na - 1, -1, -1):
                if i == 0:
                    reach[wi, ai] = start
                    continue
                parts = [reach[s] for s in ((wi + 1, ai), (wi, ai + 1)) if s in reach]
                if (wi, ai) in frontiers:
                    c, d = frontiers[wi, ai][:2]
                    parts.append((c, d, np.full(len(c), wi * na + ai), np.arange(len(c))))
                if parts:
                    reach[wi, ai] = parts[0] if len(parts) == 1 else _pareto(
                        *(np.concatenate([p[k] for p in parts]) for k in range(4)))
        frontiers = {}
        for ch in problem.choices[name]:
            state = (wbits.index(ch[0]), abits.index(ch[1]))
            if state not in reach:
                continue
            c, d, ps, pi = reach[state]
            c = c + choice_cost(info[name], ch)[key]
            ok = c + rest[i] <= limit
            if ok.any():
                frontiers[state] = (c[ok], d[ok] + problem.damage(name, ch), ps[ok], pi[ok])
        if not frontiers:
            raise InfeasibleBudgetError("no policy meets the budget under the ordering constraint")
        history.append(frontiers)
    _, state, k = min((float(f[1].min()), s, int(f[1].argmin())) for s, f in frontiers.items())
    out = {n: problem.choices[n][0] for n in fixed}
    for i in range(len(ranked) - 1, -1, -1):
        out[ranked[i]] = (wbits[state[0]], abits[state[1]])
        _, _, ps, pi = history[i][state]
        prev, k = int(ps[k]), int(pi[k])
        if prev >= 0:
            state = divmod(prev, na)
    return out
