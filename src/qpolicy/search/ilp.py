"""``ilp``: the exact least-damage policy under every budget at once, as one integer linear program.

Binary ``x[l, k]`` picks choice k = (weight bits, act bits) for layer l; minimize ``sum damage[l, k] x[l, k]``
subject to one choice per layer, one row per budgeted quantity (size, BitOPs, weighted bit sums) and one equality
per tie (layers reading one tensor), all linear in x. Solved by HiGHS through ``scipy.optimize.milp``; optimal
up to HiGHS's default MIP gap (1e-4 relative).

Budget tolerance. qpolicy accepts a policy whose cost is at most ``limit * (1 + BUDGET_RTOL)`` (1e-9, exact
arithmetic on the costs), while HiGHS accepts rows violated by up to its feasibility tolerance (about 1e-7 of the
scaled row). A budget a hair below a policy's cost can therefore come back from HiGHS as that policy. The answer
is then re-checked exactly: if it is over budget, the program is solved again with every budget row tightened
by 1e-6 (more than HiGHS's slack), and if that finds nothing, for the cheapest policy (which is within budget
whenever any policy is, up to the same sliver); failing both, :class:`InfeasibleBudgetError`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import InfeasibleBudgetError, SolverTimeoutError
from .base import COST_KEYS, FLOAT_CHOICE, STRATEGIES, Choice, Problem, choice_cost, fits, total_cost

__all__ = ["solve_ilp", "solve_milp"]

log = logging.getLogger(__name__)


@STRATEGIES.register("ilp")
def solve_ilp(problem: Problem, seed: int = 0) -> dict[str, Choice]:
    # every layer in float loses nothing: when it fits, it is optimal (its latency is the float model's own,
    # which the MILP's additive rows do not see)
    every = problem.all_float()
    if every is not None and fits(problem, total_cost(problem, every)):
        return every
    return solve_milp(problem)


_TIGHTEN = 1e-6  # relative tightening of the budget rows in the second solve: > HiGHS's feasibility slack


def solve_milp(problem: Problem, order: list[tuple[str, str, int]] | None = None,
               time_limit: float | None = None) -> dict[str, Choice]:
    """The MILP; ``order`` rows (a, b, side) require bits[a][side] >= bits[b][side]; the problem's ties
    require equality. The answer always fits the budget exactly (module docs: budget tolerance). With
    ``time_limit`` (seconds, for all the solves together), HiGHS's best policy at that time is returned (a warning
    gives its optimality gap); :class:`SolverTimeoutError` when it has none by then."""
    deadline = None if time_limit is None else time.monotonic() + time_limit

    def left() -> float | None:
        if deadline is None:
            return None
        rest = deadline - time.monotonic()
        if rest <= 0:
            raise SolverTimeoutError(f"HiGHS found no policy within the {time_limit:g} s time limit "
                                     f"({len(problem.layers)} layers); try --strategy ilp, or fewer candidate bits")
        return rest

    out = _solve(problem, order, tighten=0.0, time_limit=left())
    if out is not None and fits(problem, total_cost(problem, out)):
        return out
    for tighten, cheapest in ((_TIGHTEN, False), (0.0, True)):
        again = _solve(problem, order, tighten=tighten, cheapest=cheapest, time_limit=left())
        if again is not None and fits(problem, total_cost(problem, again)):
            return again
    raise InfeasibleBudgetError("no policy meets all budget limits together within the solver's tolerance "
                                "(the budget is within 1e-6 of the cheapest policies' cost; relax it slightly)")


def _latency_rows(problem: Problem, index: list[tuple[str, Choice]], c: np.ndarray, constraints: list,
                  *, tighten: float, cheapest: bool) -> tuple[np.ndarray, list, int]:
    """The measured latency row, from the latency table (when the problem has a latency limit). Its pair terms
    (two consecutive layers both in float) are products of two choices, linearized with one variable y each:
    y <= x[a, float], y <= x[b, float], y >= x[a, float] + x[b, float] - 1. Returns the objective and constraints
    widened by those variables, and their number."""
    if problem.latency is None or problem.limits.latency_ms is None:
        return c, constraints, 0
    n = len(index)
    col = {key: j for j, key in enumerate(index)}
    pairs = [(col[(a, FLOAT_CHOICE)], col[(b, FLOAT_CHOICE)], ms) for a, b, ms in problem.latency_pairs]
    m = len(pairs)
    row = np.array([problem.latency[name][ch] for name, ch in index] + [ms for _, _, ms in pairs])
    room = problem.limits.latency_ms - problem.latency_base  # the changes may be negative: no scaling by it
    scale = max(float(np.abs(row).max(initial=0.0)), abs(problem.limits.latency_ms), 1e-9)
    if m:
        def widen(con: LinearConstraint) -> LinearConstraint:
            a = con.A if sparse.issparse(con.A) else sparse.csr_array(np.atleast_2d(con.A))
            return LinearConstraint(sparse.hstack([a, sparse.csr_array((a.shape[0], m))]).tocsr(), con.lb, con.ub)

        constraints = [widen(k) for k in constraints]
        c = np.concatenate([c, np.zeros(m)])
        link = sparse.lil_array((3 * m, n + m))
        for k, (ja, jb, _) in enumerate(pairs):
            link[3 * k, n + k], link[3 * k, ja] = 1, -1
            link[3 * k + 1, n + k], link[3 * k + 1, jb] = 1, -1
            link[3 * k + 2, ja], link[3 * k + 2, jb], link[3 * k + 2, n + k] = 1, 1, -1
        constraints.append(LinearConstraint(link.tocsr(), -np.inf, np.tile([0.0, 0.0, 1.0], m)))
    if cheapest:
        c = c + row / scale
    upper = (room - tighten * abs(problem.limits.latency_ms)) / scale
    constraints.append(LinearConstraint(row / scale, -np.inf, upper))
    return c, constraints, m


def _solve(problem: Problem, order: list[tuple[str, str, int]] | None, *, tighten: float,
           cheapest: bool = False, time_limit: float | None = None) -> dict[str, Choice] | None:
    """One HiGHS solve; None when HiGHS finds no solution. ``cheapest``: minimize the budgeted costs (each
    relative to its limit) instead of the damage. ``time_limit`` covers building the rows too."""
    start = time.monotonic()
    index: list[tuple[str, Choice]] = [(li.name, c) for li in problem.layers for c in problem.choices[li.name]]
    n = len(index)
    c = np.zeros(n) if cheapest else np.array([problem.damage(name, ch) for name, ch in index])
    pos = {li.name: i for i, li in enumerate(problem.layers)}
    cols: dict[str, list[int]] = {li.name: [] for li in problem.layers}  # variable indices of each layer
    for j, (name, _) in enumerate(index):
        cols[name].append(j)
    eq = sparse.csr_array((np.ones(n), ([pos[name] for name, _ in index], np.arange(n))),
                          shape=(len(problem.layers), n))
    constraints = [LinearConstraint(eq, 1.0, 1.0)]
    info = {li.name: li for li in problem.layers}
    for key in COST_KEYS:
        limit = getattr(problem.limits, key)
        if limit is None:
            continue
        row = np.array([choice_cost(info[name], ch)[key] for name, ch in index])
        scale = max(abs(limit), 1.0)  # keep coefficients near 1 for the solver
        if cheapest:
            c = c + row / scale
        constraints.append(LinearConstraint(row / scale, -np.inf, limit / scale * (1 - tighten)))
    # a >= b (ordering) and a == b (ties) on one side, in cumulative form: for every threshold t, "a has at least t
    # bits" is at least (equal to) "b has at least t bits". Equivalent to comparing the bits, but its LP
    # relaxation is far tighter, which keeps HiGHS fast on hundreds of layers with ordering rows.
    rows, cols_, vals, lo = [], [], [], []
    r = 0
    for pairs, bound in ((order or [], 0.0), (problem.ties, None)):
        for k, (a, b, side) in enumerate(pairs):
            if time_limit is not None and k % 1000 == 999 and time.monotonic() - start > time_limit:
                raise SolverTimeoutError(f"the {len(pairs):,} ordering rows of {len(problem.layers)} layers take "
                                         f"longer than the {time_limit:.3g} s time limit to build; try --strategy "
                                         "ilp")
            values = sorted({index[j][1][side] for j in cols[a] + cols[b]})
            for t in values[1:]:
                for layer, sign in ((a, 1.0), (b, -1.0)):
                    for j in cols[layer]:
                        if index[j][1][side] >= t:
                            rows.append(r)
                            cols_.append(j)
                            vals.append(sign)
                lo.append(bound)
                r += 1
    if r:
        mat = sparse.csr_array((vals, (rows, cols_)), shape=(r, n))
        lower = np.array([0.0 if v is None else v for v in lo])
        upper = np.array([0.0 if v is None else np.inf for v in lo])
        constraints.append(LinearConstraint(mat, lower, upper))
    c, constraints, m = _latency_rows(problem, index, c, constraints, tighten=tighten, cheapest=cheapest)
    options: dict[str, Any] = {"presolve": True}
    if time_limit is not None:
        options["time_limit"] = max(time_limit - (time.monotonic() - start), 0.01)
    res = milp(c, constraints=constraints, integrality=np.ones(n + m), bounds=Bounds(0, 1), options=options)
    if res.status == 1 and res.x is not None:  # the time limit, with a feasible policy found
        log.warning("HiGHS stopped at the %.0f s time limit; the policy is within %.2g (relative) of the optimum",
                    time_limit or 0, getattr(res, "mip_gap", float("nan")))
    elif res.status != 0 or res.x is None:
        if tighten or cheapest:
            return None
        if res.status == 1:  # the time limit, and no feasible policy found by then
            raise SolverTimeoutError(f"HiGHS found no policy within the {time_limit:.3g} s time limit "
                                     f"({len(problem.layers)} layers); try --strategy ilp, or fewer candidate bits")
        raise InfeasibleBudgetError(f"no policy meets all budget limits together (HiGHS: {res.message})")
    x = np.round(res.x[:n]).astype(int)
    return {name: ch for (name, ch), v in zip(index, x, strict=True) if v == 1}
