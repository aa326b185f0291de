"""Intervals and verdicts: how qpolicy says whether a measured effect is real.

:func:`bootstrap_interval` is the percentile bootstrap over the measured items (images): resample them with
replacement, recompute the statistic, take the middle ``level`` of the values. Paired statistics (two models on the
same images) resample the images once for both, which is what makes small differences decidable.
:func:`verdict` turns an interval and a threshold into held / not held / undecided: a verdict only when the whole
interval is on one side.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_interval", "paired_difference_interval", "verdict", "overall_verdict", "pack_outcomes",
           "unpack_outcomes", "HELD", "NOT_HELD", "UNDECIDED"]

HELD, NOT_HELD, UNDECIDED = "held", "not held", "undecided"


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, *, reps: int = 2000,
                       level: float = 0.95, seed: int = 0, max_undefined: float = 0.05
                       ) -> tuple[float, float] | None:
    """The ``level`` percentile-bootstrap interval of ``statistic(indices)`` over ``n`` items (``indices``: a
    resample of ``range(n)``, with replacement). None when ``n`` is 0 or the statistic is undefined (NaN) on more
    than ``max_undefined`` of the resamples (e.g. a median of successful attacks where few succeed)."""
    if n <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(reps)], dtype=float)
    ok = values[~np.isnan(values)]
    if len(ok) < (1 - max_undefined) * reps:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                               scale: float = 1.0, reps: int = 2000, level: float = 0.95, seed: int = 0
                               ) -> tuple[float, float] | None:
    """The ``level`` bootstrap interval of ``scale * (mean(a) - mean(b))`` where ``a[i]`` and ``b[i]`` are two
    models' outcomes on the same item ``i`` (``scale=100`` with 0/1 correctness: a top-1 difference in points).
    Paired: the items are resampled once for both, so the images both get right or both get wrong add no noise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired outcomes must be two equal-length vectors, got shapes {a.shape} and {b.shape}")
    d = a - b
    return bootstrap_interval(lambda idx: scale * float(d[idx].mean()), len(d), reps=reps, level=level, seed=seed)


def pack_outcomes(values: Any) -> dict[str, Any]:
    """Per-sample outcomes for a JSON record: 0/1 outcomes as base64 of their packed bits (``{"n", "bits"}``: 5,000
    images in 836 characters), anything else as a list of floats (``{"n", "values"}``)."""
    v = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float).ravel()
    if np.isin(v, (0.0, 1.0)).all():
        return {"n": int(v.size), "bits": base64.b64encode(np.packbits(v.astype(np.uint8)).tobytes()).decode()}
    return {"n": int(v.size), "values": [float(x) for x in v]}


def unpack_outcomes(packed: Mapping[str, Any]) -> np.ndarray:
    """The outcomes :func:`pack_outcomes` stored, as a float array."""
    n = int(packed["n"])
    if "bits" in packed:
        raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
        return np.unpackbits(raw)[:n].astype(float)
    return np.asarray(packed["values"], dtype=float)[:n]


def verdict(interval: tuple[float, float] | None, threshold: float, *, held_above: bool = True,
            inclusive: bool = False) -> str:
    """Held when the whole interval satisfies the rule ``value > threshold`` (``value < threshold`` with
    ``held_above=False``; ``>=`` / ``<=`` when ``inclusive``), not held when the whole interval violates it, else
    undecided."""
    if interval is None:
        return UNDECIDED
    lo, hi = interval
    if held_above:  # the rule: value > threshold (>= when inclusive)
        held = lo >= threshold if inclusive else lo > threshold
        failed = hi < threshold if inclusive else hi <= threshold
    else:  # the rule: value < threshold (<= when inclusive)
        held = hi <= threshold if inclusive else hi < threshold
        failed = lo > threshold if inclusive else lo >= threshold
    return HELD if held else NOT_HELD if failed else UNDECIDED


def overall_verdict(verdicts: Sequence[str]) -> str:
    """One line for several rows: held / not held / undecided when they agree, else the counts."""
    if not verdicts:
        return "not measured"
    counts = {v: sum(x == v for x in verdicts) for v in (HELD, NOT_HELD, UNDECIDED)}
    for v, k in counts.items():
        if k == len(verdicts):
            return v
    return "mixed (" + ", ".join(f"{k} {v}" for v, k in counts.items() if k) + f" of {len(verdicts)})"
