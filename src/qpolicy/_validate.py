"""Shared checks for config dataclasses: clear errors naming the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

__all__ = ["require_ints", "require_numbers", "require_probability"]


def require_ints(cfg: Any, names: Iterable[str], *, minimum: int) -> None:
    """Each field is an int (not a bool) >= ``minimum`` (1: "positive", 0: "non-negative")."""
    what = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{name} must be {what}, got {v!r}")


def require_numbers(cfg: Any, names: Iterable[str], *, positive: bool, message: str | None = None) -> None:
    """Each field is a finite real number (not a bool), > 0 when ``positive``, else >= 0."""
    what = message or ("a positive number" if positive else "a finite non-negative number")
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (v <= 0 if positive else v < 0):
            raise ConfigError(f"{name} must be {what}, got {v!r}")


def require_probability(cfg: Any, names: Iterable[str], *, example: str = "0.001") -> None:
    """Each field is a probability strictly between 0 and 1 (a failure probability, a test level)."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ConfigError(f"{name} must be a probability strictly between 0 and 1 (e.g. {example}), got {v!r}")
