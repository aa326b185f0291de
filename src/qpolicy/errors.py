"""Exception types raised by qpolicy.

Every error a user can cause derives from :class:`QPolicyError`, so the CLI can print one clear line for
each of them and exit non-zero without a traceback. Each subclass also derives from the closest built-in
type, so ``except ValueError`` keeps working for callers that expect it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "QPolicyError",
    "UnknownNameError",
    "PolicyError",
    "PolicyMismatchError",
    "BitWidthError",
    "ConfigError",
    "DataNotFoundError",
    "DataError",
    "WeightsError",
    "CheckpointError",
    "CalibrationError",
    "InfeasibleBudgetError",
    "OutputError",
    "shorten",
]


class QPolicyError(Exception):
    """Base class of every error qpolicy raises on bad input."""


class UnknownNameError(QPolicyError, KeyError):
    """A name that no registry, model or layer knows, with close matches when there are any."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        msg = f"unknown {kind} {shorten(name)}" + suggest(name, self.known)
        if self.known:
            shown = ", ".join(self.known[:12]) + (", ..." if len(self.known) > 12 else "")
            msg += f" (known: {shown})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConfigError(QPolicyError, ValueError):
    """A configuration value outside what is allowed."""


class BitWidthError(ConfigError):
    """A bit-width outside the supported range."""


class PolicyError(QPolicyError, ValueError):
    """A policy file that cannot be read: not JSON, truncated, wrong schema or version."""


class PolicyMismatchError(PolicyError):
    """A policy whose layer names do not match the model's quantizable layers."""

    def __init__(self, message: str, *, missing: Iterable[str] = (), extra: Iterable[str] = ()):
        self.missing = tuple(missing)
        self.extra = tuple(extra)
        super().__init__(message)


class DataNotFoundError(QPolicyError, FileNotFoundError):
    """A data set that is not in any of the searched locations."""


class DataError(QPolicyError, ValueError):
    """A data file that exists but cannot be read (corrupt, truncated, wrong layout)."""


class WeightsError(QPolicyError, OSError):
    """Pretrained weights that are missing, corrupt or fail their hash check."""


class CheckpointError(QPolicyError, OSError):
    """A training checkpoint that is missing, truncated or from another run."""


class CalibrationError(QPolicyError, RuntimeError):
    """Quantizer calibration that cannot run (no data, or no statistics collected)."""


class InfeasibleBudgetError(QPolicyError, ValueError):
    """No policy over the candidate bit-widths meets the budget; the message gives the smallest achievable cost."""

    def __init__(self, message: str, *, smallest: dict | None = None):
        self.smallest = dict(smallest or {})
        super().__init__(message)


class SolverTimeoutError(QPolicyError, RuntimeError):
    """The solver found no policy within its time limit."""


class PreflightError(ConfigError):
    """The model and the data do not fit each other (found by one batch through the model, before any work)."""


class OutputError(QPolicyError, OSError):
    """An output path that cannot be written (a directory, a path under a file, no permission)."""


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length noted, for error messages that echo input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def close_matches(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` names of ``known`` similar to ``name``, closest (fewest case-insensitive edits) first."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    pool = set(difflib.get_close_matches(name.lower(), list(lowered), n=10, cutoff=0.5))
    ranked = sorted(pool, key=lambda k: (_edit_distance(name.lower(), k), k))
    return [lowered[k] for k in ranked[:n]]


def suggest(name: str, known: Iterable[str]) -> str:
    """Return a ``"; did you mean 'x'?"`` suffix for ``name`` among ``known``, or ``""`` (also for a name too long
    to be a misspelling, whose comparison would cost more than it helps)."""
    if not isinstance(name, str) or len(name) > 100:
        return ""
    close = close_matches(name, known)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` of an exception, for one-line error reports."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
