"""Progress bars that stay quiet when output is not a terminal (or when the CLI is given --quiet)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["progress", "set_enabled"]

_enabled: bool | None = None  # None: only on a terminal


def set_enabled(enabled: bool | None) -> None:
    """Force progress bars on (True), off (False), or back to terminal-only (None)."""
    global _enabled
    _enabled = enabled


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr when enabled."""
    from tqdm.auto import tqdm

    disable = None if _enabled is None else not _enabled
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True, **kwargs)

