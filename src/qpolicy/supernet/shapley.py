"""Monte Carlo Shapley values of players removed one by one from a game (SMPQ's estimator).

A game starts with every player present and reports a value (validation accuracy). A sample draws a random
permutation and removes the players in that order; player j's **marginal contribution** in the sample is the
value just before its removal minus the value just after. The Shapley value is the expected marginal
contribution over uniform permutations (removal order reversed is a uniform joining order, so this is the usual
definition), and the sample mean is an unbiased estimate of it.

Guarantees: without truncation, every sample's contributions sum to ``v(all) - v(none)`` (the sum telescopes),
so the estimates satisfy efficiency exactly; with every permutation of a small game, the mean is the exact
Shapley value. Truncation (TMC-Shapley): once the value has fallen to ``truncation`` or below (accuracy has
collapsed), the rest of the permutation is not evaluated and its players get 0, saving most of the evaluations;
the sum then telescopes to ``v(all) - v(state at the cut)``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError

__all__ = ["Game", "ShapleyEstimate", "monte_carlo_shapley", "exact_shapley"]


class Game(Protocol):
    def reset(self) -> None:
        """Every player present."""

    def remove(self, player: Hashable) -> None:
        """Take one player out."""

    def value(self) -> float:
        """The value of the players present now."""


@dataclass(frozen=True, kw_only=True)
class ShapleyEstimate:
    """Per-player statistics of the marginal contributions over the sampled permutations.

    Attributes:
        players: The players, in the order of ``mean`` and ``std``.
        mean: Estimated Shapley value of each player.
        std: Standard deviation of its marginal contributions over the samples.
        samples: Permutations drawn.
        evaluations: Game values computed (the cost).
        truncated: Permutations cut short by truncation.
        full_value: ``v(all)``.
    """

    players: tuple[Hashable, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int
    evaluations: int
    truncated: int
    full_value: float
    seed: int
    contributions: tuple[tuple[float, ...], ...] = field(repr=False, default=())

    def risk_adjusted(self) -> dict[Hashable, float]:
        """``mean - std`` per player: SMPQ's aggregate, which prefers candidates that help reliably."""
        return {p: m - s for p, m, s in zip(self.players, self.mean, self.std, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return {"players": [list(p) if isinstance(p, tuple) else p for p in self.players], "mean": list(self.mean),
                "std": list(self.std), "samples": self.samples, "evaluations": self.evaluations,
                "truncated": self.truncated, "full_value": self.full_value, "seed": self.seed}


def _permutation(shared: dict[str, Any], item: tuple[int, tuple[int, ...]]) -> tuple[list[float], int, bool]:
    """One permutation's marginal contributions, evaluations and whether it was cut (a ``run_many`` task)."""
    game, players, truncation = shared["game"], shared["players"], shared["truncation"]
    _, perm = item
    contrib = [0.0] * len(players)
    game.reset()
    before, evaluations = shared["full"], 0
    for k, j in enumerate(perm):
        game.remove(players[j])
        after = float(game.value())
        evaluations += 1
        contrib[j] = before - after
        before = after
        if truncation is not None and after <= truncation and k < len(perm) - 1:
            return contrib, evaluations, True
    return contrib, evaluations, False


def monte_carlo_shapley(players: Sequence[Hashable], game: Game, *, samples: int, truncation: float | None = None,
                        seed: int = 0, permutations: Sequence[Sequence[int]] | None = None,
                        desc: str = "shapley", workers: int | None = None,
                        address: str | None = None) -> ShapleyEstimate:
    """Estimate Shapley values by removing players in random order (module docs).

    Args:
        players: The players (hashable, e.g. ``(layer, side, bits)``).
        game: Starts full on ``reset()``; ``remove(player)``; ``value()``.
        samples: Permutations to draw.
        truncation: Cut a permutation once the value is at or below this (None: never).
        seed: Seeds the permutations.
        permutations: Use these index permutations instead of random ones (tests, exact enumeration).
        workers, address: Play the permutations on a local Ray with this many CPUs, or on the Ray cluster at this
            address (:func:`qpolicy.runner.run_many`; each task plays a copy of ``game``, so it must pickle).
            The permutations are drawn here, so the estimate equals the serial one.
    """
    from ..runner import run_many

    n = len(players)
    if n == 0:
        raise ConfigError("Shapley estimation needs at least one player")
    if permutations is None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"samples must be a positive integer, got {samples!r}")
        rng = random.Random(seed)
        permutations = [rng.sample(range(n), n) for _ in range(samples)]
    game.reset()
    full = float(game.value())
    shared = {"game": game, "players": tuple(players), "truncation": truncation, "full": full}
    items = [(s, tuple(int(j) for j in perm)) for s, perm in enumerate(permutations)]
    played = run_many(_permutation, items, shared=shared, workers=workers, address=address, desc=desc,
                      key=lambda it: str(it[0]))
    game.reset()
    contrib = [c for c, _, _ in played]
    evaluations = 1 + sum(e for _, e, _ in played)
    truncated = sum(1 for _, _, cut in played if cut)
    m = len(permutations)
    mean = [sum(c[j] for c in contrib) / m for j in range(n)]
    std = [math.sqrt(sum((c[j] - mean[j]) ** 2 for c in contrib) / m) for j in range(n)]
    return ShapleyEstimate(players=tuple(players), mean=tuple(mean), std=tuple(std), samples=m,
                           evaluations=evaluations, truncated=truncated, full_value=full, seed=seed,
                           contributions=tuple(tuple(c) for c in contrib))


def exact_shapley(players: Sequence[Hashable], value: Callable[[frozenset], float]) -> dict[Hashable, float]:
    """The exact Shapley values of a small game given as ``value(set of present players)`` (n! permutations)."""
    n = len(players)
    out = dict.fromkeys(players, 0.0)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        present: set = set()
        before = value(frozenset())
        for j in perm:  # joining order
            present.add(players[j])
            after = value(frozenset(present))
            out[players[j]] += after - before
            before = after
    return {p: v / len(perms) for p, v in out.items()}
