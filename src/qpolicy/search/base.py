"""Policy search: strategies are pure functions of (sensitivity table, allowed choices, budget limits).

This package never imports ``torch.nn``: a strategy sees layer sizes and scores only.

A strategy is ``solve(problem, seed) -> {layer: (weight_bits, act_bits)}``, deterministic for a seed, and raises
``InfeasibleBudgetError`` when nothing fits. :func:`search` builds the problem (candidate pairs per layer, fixed
first/last layers, fixed activation bits, ties), checks feasibility, calls the strategy and wraps the answer in a
Policy with provenance.

Ties. Layers that read the very same tensor (``LayerInfo.shares_input_with``, found when the layers are traced)
are tied: with ``tie="act"`` (the default) they get the same activation bits, because a deployed runtime quantizes
that tensor once; ``tie="all"`` ties their weight bits too (one kernel for sibling branches); ``tie="none"`` lets
them differ. A tie with a fixed layer (first/last) pins the tied side of its partners. Every strategy honours ties;
:func:`search` checks that it did.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..bits import check_bits
from ..budget import Budget, BudgetLimits
from ..costs import COST_KEYS, FLOAT_BITS, CostReport, layer_cost, policy_cost, w8a8_cost
from ..errors import ConfigError, InfeasibleBudgetError
from ..layers import LayerInfo
from ..policy import LayerBits, Policy
from ..registry import Registry
from ..sensitivity.base import SensitivityTable

__all__ = ["Choice", "Problem", "SearchResult", "STRATEGIES", "ModelStrategy", "table_strategies", "TIE_MODES",
           "BUDGET_RTOL", "FLOAT_CHOICE", "choice_bits", "choice_layer_bits", "search", "build_problem", "check_budget",
           "zero_table", "choice_cost", "total_cost", "fits", "tie_pairs", "ties_hold", "fastest_latency",
           "check_float_layers"]

Choice = tuple[int, int]  # (weight_bits, act_bits)
# a layer kept in float, as a choice: costs are priced at FLOAT_BITS (the cost formula's float), damage is 0
FLOAT_CHOICE: Choice = (FLOAT_BITS, FLOAT_BITS)


def choice_bits(choice: Choice) -> tuple[int | None, int | None]:
    """A choice as a policy's (weight_bits, act_bits): the float choice as ``(None, None)``."""
    return (None, None) if tuple(choice) == FLOAT_CHOICE else (choice[0], choice[1])


def choice_layer_bits(choice: Choice) -> LayerBits:
    """A choice as a policy's layer bits (the float choice as ``f``)."""
    w, a = choice_bits(choice)
    return LayerBits(weight_bits=w, act_bits=a)
TIE_MODES = {"none": (), "act": (1,), "all": (0, 1)}  # tie mode -> tied sides (0 weight bits, 1 act bits)
BUDGET_RTOL = 1e-9  # a policy fits when its cost is at most limit * (1 + BUDGET_RTOL): one rule for all checks


def choice_cost(li: LayerInfo, choice: Choice) -> dict[str, float]:
    """The four budgeted quantities of one layer at one (weight_bits, act_bits) choice (the one cost formula,
    :func:`qpolicy.costs.layer_cost`)."""
    return layer_cost(li, *choice)


@dataclass(frozen=True, kw_only=True)
class Problem:
    """What a strategy solves: for each layer, pick one of ``choices[layer]`` within ``limits``, least damage."""

    table: SensitivityTable
    choices: Mapping[str, tuple[Choice, ...]]
    limits: BudgetLimits
    ties: tuple[tuple[str, str, int], ...] = ()  # (a, b, side): bits[a][side] == bits[b][side]
    # a latency limit: each layer's measured latency change per choice, and the base model's latency (ms)
    latency: Mapping[str, Mapping[Choice, float]] | None = None
    latency_base: float = 0.0
    # (a, b, ms): what consecutive layers a and b both kept in float add beyond their own entries
    latency_pairs: tuple[tuple[str, str, float], ...] = ()
    # the float model's measured latency: what a policy with every layer in float costs (exported without any
    # integer operator, it is a different graph from the int8 one the table's entries are measured in)
    latency_float: float | None = None

    def all_float(self) -> dict[str, Choice] | None:
        """Every layer in float, when every layer may be."""
        if all(FLOAT_CHOICE in cs for cs in self.choices.values()):
            return dict.fromkeys(self.choices, FLOAT_CHOICE)
        return None

    def damage(self, name: str, choice: Choice) -> float:
        if tuple(choice) == FLOAT_CHOICE:  # float loses nothing
            return 0.0
        return self.table.weight[name][choice[0]] + self.table.act[name][choice[1]]

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        return self.table.layers


def total_cost(problem: Problem, assignment: Mapping[str, Choice]) -> dict[str, float]:
    """The budgeted quantities of an assignment (``latency_ms`` too when the problem has a latency limit)."""
    out = dict.fromkeys(COST_KEYS, 0.0)
    for li in problem.layers:
        for k, v in choice_cost(li, assignment[li.name]).items():
            out[k] += v
    if problem.latency is not None:
        if problem.latency_float is not None and all(c == FLOAT_CHOICE for c in assignment.values()):
            out["latency_ms"] = problem.latency_float
        else:
            out["latency_ms"] = problem.latency_base + sum(problem.latency[n][c] for n, c in assignment.items()) + sum(
                ms for a, b, ms in problem.latency_pairs if assignment[a] == FLOAT_CHOICE == assignment[b])
    return out


def fastest_latency(problem: Problem) -> float:
    """The least predicted latency over the problem's choices (exact along the chain of consecutive pair terms;
    ties between layers are not imposed, so with ties it is a lower bound)."""
    pair = {(a, b): ms for a, b, ms in problem.latency_pairs}
    best: dict[Choice, float] = {}
    prev = None
    for li in problem.layers:
        here = problem.latency[li.name]
        if prev is None:
            best = dict(here)
        else:
            best = {c: v + min(bv + (pair.get((prev, li.name), 0.0) if c == FLOAT_CHOICE == bc else 0.0)
                               for bc, bv in best.items()) for c, v in here.items()}
        prev = li.name
    fastest = problem.latency_base + min(best.values())
    if problem.latency_float is not None and problem.all_float() is not None:
        fastest = min(fastest, problem.latency_float)
    return fastest


def tie_pairs(layers: Sequence[LayerInfo], mode: str) -> tuple[tuple[str, str, int], ...]:
    """The ``(layer, first reader, side)`` equalities of tie ``mode`` ("none", "act" or "all")."""
    if mode not in TIE_MODES:
        raise ConfigError(f"tie must be one of {', '.join(TIE_MODES)}; got {mode!r}")
    return tuple((li.name, li.shares_input_with, side) for li in layers if li.shares_input_with
                 for side in TIE_MODES[mode])


def ties_hold(problem: Problem, assignment: Mapping[str, Choice]) -> bool:
    return all(assignment[a][side] == assignment[b][side] for a, b, side in problem.ties)


def fits(problem: Problem, cost: Mapping[str, float], rtol: float = BUDGET_RTOL) -> bool:
    lim = problem.limits
    return all(getattr(lim, k) is None or cost[k] <= getattr(lim, k) * (1 + rtol) for k in COST_KEYS) and (
        lim.latency_ms is None or cost["latency_ms"] <= lim.latency_ms * (1 + rtol))


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """A searched policy and what it costs and is predicted to lose."""

    policy: Policy
    cost: CostReport
    predicted_damage: float
    strategy: str
    seconds: float
    status: str = "optimal"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "cost": self.cost.to_dict(per_layer=False),
                "predicted_damage": self.predicted_damage, "strategy": self.strategy, "seconds": self.seconds,
                "status": self.status, **dict(self.extra)}


Strategy = Callable[[Problem, int], dict[str, Choice]]


@dataclass(frozen=True)
class ModelStrategy:
    """A model-in-the-loop strategy: it needs the model and data, not only a sensitivity table (the validated
    default search, the differentiable supernet searches). Registered beside the table strategies by the name of
    its function (``"package.module:function"``, imported when used, so this package stays torch-free); ``runner``
    says which kind of run it is ("validated", "supernet", "arq" or "qfa"), which is what the CLI dispatches on."""

    target: str
    runner: str
    latency: bool = False  # takes a latency budget (a latency table's measured prices)

    def load(self) -> Callable[..., Any]:
        import importlib

        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


STRATEGIES: Registry[Strategy | ModelStrategy] = Registry("strategy")


def table_strategies() -> list[str]:
    """The names of the registered strategies that solve a sensitivity table alone (pure, torch-free)."""
    return [n for n in STRATEGIES.names() if not isinstance(STRATEGIES.get(n), ModelStrategy)]


STRATEGIES.add("validated", ModelStrategy("qpolicy.select:search_validated", "validated", latency=True))
STRATEGIES.add("dmpq", ModelStrategy("qpolicy.supernet.differentiable:search_differentiable", "supernet"))
STRATEGIES.add("smpq", ModelStrategy("qpolicy.supernet.differentiable:search_differentiable", "supernet"))
STRATEGIES.add("arq", ModelStrategy("qpolicy.rl.arq:search_arq", "arq"))
STRATEGIES.add("qfa", ModelStrategy("qpolicy.supernet.qfa_search:search_qfa", "qfa"))


def _check_feasible(problem: Problem) -> None:
    """Raise InfeasibleBudgetError naming the smallest achievable value of each limit that cannot be met."""
    smallest = dict.fromkeys(COST_KEYS, 0.0)
    for li in problem.layers:
        for k in COST_KEYS:
            smallest[k] += min(choice_cost(li, c)[k] for c in problem.choices[li.name])
    ref = w8a8_cost(problem.layers)
    params, acts = ref["weight_bit_sum"] / 8 or 1, ref["act_bit_sum"] / 8 or 1
    bitops8 = ref["bitops"] or 1
    shown = {"size_bytes": lambda v: f"size {v:,.0f} B ({v / params:.4f} of W8A8)",
             "bitops": lambda v: f"BitOPs {v / 1e9:.4f} G ({v / bitops8:.4f} of W8A8)",
             "weight_bit_sum": lambda v: f"average weight bits {v / params:.3f}",
             "act_bit_sum": lambda v: f"average activation bits {v / acts:.3f}"}
    bad = [k for k in COST_KEYS if getattr(problem.limits, k) is not None
           and smallest[k] > getattr(problem.limits, k) * (1 + BUDGET_RTOL)]
    if problem.latency is not None and problem.limits.latency_ms is not None:
        smallest["latency_ms"] = fastest_latency(problem)
        shown["latency_ms"] = lambda v: f"predicted latency {v:.4g} ms (from the latency table)"
        if smallest["latency_ms"] > problem.limits.latency_ms * (1 + BUDGET_RTOL):
            bad.append("latency_ms")
    if bad:
        raise InfeasibleBudgetError(
            "budget cannot be met with the candidate bit-widths: the smallest achievable "
            + "; ".join(shown[k](smallest[k]) for k in bad) + " (with fixed first/last layers and ties, if any)",
            smallest={k: smallest[k] for k in bad})


def search(table: SensitivityTable, budget: Budget, *, strategy: str | Strategy = "ilp", seed: int = 0,
           weight_bits: Sequence[int] | None = None, act_bits: Sequence[int] | int | None = None,
           first_last: int | None = None, tie: str = "act", model_name: str | None = None,
           float_layers: bool = False) -> SearchResult:
    """Search the least-damage policy that meets ``budget``.

    Args:
        table: Sensitivity scores and layer sizes (from :func:`qpolicy.analyze` or a saved table).
        budget: Limits; see :class:`qpolicy.Budget`.
        strategy: A registered name (``qpolicy list strategies``) or a ``solve(problem, seed)`` function.
        seed: Seed of stochastic strategies (recorded in provenance).
        weight_bits: Candidate weight bits (default: the table's).
        act_bits: Candidate activation bits (default: the table's), or one integer to hold activations fixed.
        first_last: Fix the first and last layer (execution order) at these bits, weights and activations.
        tie: Which bits layers reading the same tensor share: "act" (default), "all" or "none" (module docs).
        float_layers: Let the search also keep a layer in float (no damage; priced at 32 bits, and by the latency
            table's measured float entry): where a runtime's float kernel is faster than its integer one, a
            latency budget takes it. Solved by ``ilp``.
    """
    name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom")
    solve = STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy
    if isinstance(solve, ModelStrategy):
        raise ConfigError(f"strategy {name!r} needs the model and data, not a sensitivity table: run it with "
                          f"`qpolicy search --model MODEL --strategy {name}` (or {solve.target.replace(':', '.')})")
    check_float_layers(name, float_layers)
    problem = build_problem(table, budget, weight_bits=weight_bits, act_bits=act_bits, first_last=first_last,
                            tie=tie, float_layers=float_layers)
    choices, ties = problem.choices, problem.ties
    t = time.perf_counter()
    assignment = solve(problem, seed)
    seconds = time.perf_counter() - t
    if set(assignment) != set(choices) or any(assignment[n] not in choices[n] for n in choices):
        raise RuntimeError(f"strategy {name!r} returned an assignment outside the allowed choices")
    if not fits(problem, total_cost(problem, assignment)):
        raise RuntimeError(f"strategy {name!r} returned a policy over budget")
    if not ties_hold(problem, assignment):
        raise RuntimeError(f"strategy {name!r} returned a policy that breaks a tie between layers")
    layers = {li.name: choice_layer_bits(assignment[li.name]) for li in table.layers}
    cost = policy_cost(table.layers, layers)
    damage = sum(problem.damage(n, c) for n, c in assignment.items())
    from ..policy import versions

    policy = Policy(layers=layers, model=model_name or table.model, provenance={
        "method": "search", "metric": table.metric, "strategy": name, "budget": budget.to_dict(),
        "candidates": {"weight_bits": list(_candidates(weight_bits, table, "weight_bits")),
                       "act_bits": [act_bits] if isinstance(act_bits, int) else
                       list(_candidates(act_bits, table, "act_bits")), "float_layers": float_layers},
        "first_last": first_last,
        "tie": tie, "tied": [list(t) for t in ties],
        "seed": seed, "predicted_damage": damage, "cost": cost.to_dict(per_layer=False),
        "search_seconds": seconds, "sensitivity": dict(table.provenance),
        "predicted_latency_ms": budget.predicted_latency_ms(layers),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "versions": versions()})
    return SearchResult(policy=policy, cost=cost, predicted_damage=damage, strategy=name, seconds=seconds)


def build_problem(table: SensitivityTable, budget: Budget, *, weight_bits: Sequence[int] | None = None,
                  act_bits: Sequence[int] | int | None = None, first_last: int | None = None,
                  tie: str = "act", float_layers: bool = False) -> Problem:
    """The problem :func:`search` solves (arguments as there), checked for feasibility."""
    wbits = _candidates(weight_bits, table, "weight_bits")
    abits = (check_bits(act_bits, "act_bits"),) if isinstance(act_bits, int) else _candidates(act_bits, table,
                                                                                              "act_bits")
    pairs = tuple((w, a) for w in wbits for a in abits) + ((FLOAT_CHOICE,) if float_layers else ())
    edges = {table.layers[0].name, table.layers[-1].name} if first_last is not None else set()
    if first_last is not None:
        fl = check_bits(first_last, "first_last")
        if fl not in table.bits:
            raise ConfigError(f"first_last={fl} is not among the table's scored bits {table.bits}")
    choices = {li.name: (((first_last, first_last),) if li.name in edges else pairs) for li in table.layers}
    limits = budget.limits(table.layers)  # a latency limit checks the latency table against these layers
    latency, latency_base = None, 0.0
    if limits.latency_ms is not None:
        choices, latency, latency_base = _latency_choices(budget, choices)
    ties = tie_pairs(table.layers, tie)
    choices = _pin_ties(choices, ties)
    pairs = ()
    if latency is not None:
        pairs = tuple((a, b, ms) for a, b, ms in budget.latency_table.pair_terms(budget.latency_batch)
                      if FLOAT_CHOICE in choices.get(a, ()) and FLOAT_CHOICE in choices.get(b, ()))
        latency = {n: {c: v for c, v in per.items() if c in choices[n]} for n, per in latency.items()}
    problem = Problem(table=table, choices=choices, limits=limits, ties=ties, latency=latency,
                      latency_base=latency_base, latency_pairs=pairs,
                      latency_float=None if latency is None else
                      budget.latency_table.float_ms[budget.latency_batch].median)
    _check_feasible(problem)
    return problem


def check_float_layers(strategy: str, float_layers: bool) -> None:
    """Float as a search choice is solved by the ILP and by the validated search built on it (a ConfigError for
    any other strategy)."""
    if float_layers and strategy not in ("ilp", "validated"):
        raise ConfigError(f"float layers as a search choice are solved by strategy ilp (or validated, which measures "
                          f"ILP candidates), not {strategy!r}")


def zero_table(layers: Sequence[LayerInfo], bits: Sequence[int]) -> SensitivityTable:
    """A sensitivity table of zeros: prices a problem's costs and choices without any measured damage."""
    zeros = {li.name: dict.fromkeys(bits, 0.0) for li in layers}
    return SensitivityTable(metric="none", bits=tuple(bits), layers=tuple(layers), weight=zeros, act=zeros)


def check_budget(layers: Sequence[LayerInfo], budget: Budget, *, bits: Sequence[int], **choices: Any) -> None:
    """The budget's checks (feasibility, the latency table's model and kernels, ties) on these layers, before any
    sensitivity is measured; ``choices`` as for :func:`build_problem`."""
    build_problem(zero_table(layers, bits), budget, **choices)


def _latency_choices(budget: Budget, choices: Mapping[str, tuple[Choice, ...]]
                     ) -> tuple[dict[str, tuple[Choice, ...]], dict[str, dict[Choice, float]], float]:
    """Under a latency limit: keep the choices the target has kernels for, priced from the budget's table."""
    from ..latency import precision_of

    table, batch = budget.latency_table, budget.latency_batch
    kept = {n: tuple(c for c in cs if precision_of(*choice_bits(c)) is not None) for n, cs in choices.items()}
    empty = [n for n, cs in kept.items() if not cs]
    if empty:
        raise ConfigError(f"a latency budget on {table.target} prices layers with 8-bit inputs (int8 kernels; "
                          f"weights 2..8 bits) or float ones, and layer(s) {', '.join(empty[:3])} have no such "
                          f"candidate among {list(choices[empty[0]])}: include 8 in the activation bits")
    priced = {n: {c: table.layer_ms(n, precision_of(*choice_bits(c)), batch) for c in cs} for n, cs in kept.items()}
    return kept, priced, table.base_ms[batch].median


def _pin_ties(choices: dict[str, tuple[Choice, ...]], ties: Sequence[tuple[str, str, int]]
              ) -> dict[str, tuple[Choice, ...]]:
    """Restrict choices so tied sides can agree: repeat until stable, keeping in each layer only the choices whose
    tied side is a value its partner allows (a fixed layer pins its partners)."""
    out = dict(choices)
    changed = True
    while changed:
        changed = False
        for a, b, side in ties:
            common = {c[side] for c in out[a]} & {c[side] for c in out[b]}
            for n in (a, b):
                kept = tuple(c for c in out[n] if c[side] in common)
                if not kept:
                    raise InfeasibleBudgetError(f"layers {a!r} and {b!r} read the same tensor but have no "
                                                f"common {'weight' if side == 0 else 'activation'} bits to tie")
                if kept != out[n]:
                    out[n], changed = kept, True
    return out


def _candidates(bits: Sequence[int] | None, table: SensitivityTable, what: str) -> tuple[int, ...]:
    if bits is None:
        return table.bits
    out = tuple(sorted({check_bits(b, what) for b in bits}))
    missing = [b for b in out if b not in table.bits]
    if not out or missing:
        raise ConfigError(f"{what} {list(out)} must be non-empty and among the table's scored bits {table.bits}")
    return out
