"""Baseline strategies: ``uniform`` (the widest uniform choice that fits) and ``random`` (a seeded random policy
that fills the budget)."""

from __future__ import annotations

import random as _random

from ..errors import InfeasibleBudgetError
from .base import STRATEGIES, Choice, Problem, fits, ties_hold, total_cost

__all__ = ["solve_uniform", "solve_random", "uniform_pairs"]


def uniform_pairs(problem: Problem) -> list[Choice]:
    """The (weight, act) pairs the free layers allow, widest first: the larger of the two narrower sides first
    (W3A4 over W6A2), then the larger sum, then wider weights."""
    free = [li.name for li in problem.layers if len(problem.choices[li.name]) > 1]
    return sorted({c for n in free for c in problem.choices[n]}, key=lambda c: (min(c), c[0] + c[1], c[0]),
                  reverse=True)


@STRATEGIES.register("uniform")
def solve_uniform(problem: Problem, seed: int = 0) -> dict[str, Choice]:
    """Every free layer at the same (weight, act) bits: the widest pair within budget, widest meaning the larger
    of the two narrower sides first (W3A4 over W6A2), then the larger sum, then wider weights. A layer whose
    choices a tie narrowed takes its allowed choice nearest to the pair."""
    free = [li.name for li in problem.layers if len(problem.choices[li.name]) > 1]
    pairs = uniform_pairs(problem)
    fixed = {n: cs[0] for n, cs in problem.choices.items() if len(cs) == 1}
    def nearest(n: str, pair: Choice) -> Choice:
        return min(problem.choices[n], key=lambda c: (abs(c[0] - pair[0]) + abs(c[1] - pair[1]), -c[0] - c[1]))

    for pair in pairs or [None]:
        assignment = {**fixed, **({n: nearest(n, pair) for n in free} if pair else {})}
        if all(n in assignment for n in problem.choices) and ties_hold(problem, assignment) and \
                fits(problem, total_cost(problem, assignment)):
            return assignment
    raise InfeasibleBudgetError("no uniform policy over the candidate bits meets the budget")


@STRATEGIES.register("random")
def solve_random(problem: Problem, seed: int = 0, steps_per_layer: int = 50) -> dict[str, Choice]:
    """A random walk on the policies within budget, from the cheapest one: each step proposes a random choice
    for a random layer (carried over to the layers tied to it) and keeps it if the policy still fits.
    Deterministic for a seed."""
    rng = _random.Random(seed)
    names = [li.name for li in problem.layers]
    totals = {li.name: li for li in problem.layers}

    def cheapness(name: str, c: Choice) -> float:
        li = totals[name]
        return li.params * c[0] + li.macs * c[0] * c[1] + li.act_elems * c[1]

    assignment = {n: min(problem.choices[n], key=lambda c, n=n: cheapness(n, c)) for n in names}
    for n in names:  # make the start honour the ties
        assignment = _carry_ties(problem, assignment, n) or assignment
    if not ties_hold(problem, assignment) or not fits(problem, total_cost(problem, assignment)):
        raise InfeasibleBudgetError("even the cheapest policy exceeds the budget")
    for _ in range(steps_per_layer * len(names)):
        n = rng.choice(names)
        proposal = _carry_ties(problem, {**assignment, n: rng.choice(problem.choices[n])}, n)
        if proposal is not None and fits(problem, total_cost(problem, proposal)):
            assignment = proposal
    return assignment


def _carry_ties(problem: Problem, assignment: dict[str, Choice], changed: str) -> dict[str, Choice] | None:
    """Copy the tied sides of ``changed`` to its tie partners (transitively); None if a partner cannot take them."""
    out, todo = dict(assignment), [changed]
    while todo:
        n = todo.pop()
        for a, b, side in problem.ties:
            if n not in (a, b):
                continue
            other = b if n == a else a
            if out[other][side] == out[n][side]:
                continue
            new = (out[n][0], out[other][1]) if side == 0 else (out[other][0], out[n][1])
            if new not in problem.choices[other]:
                return None
            out[other] = new
            todo.append(other)
    return out
