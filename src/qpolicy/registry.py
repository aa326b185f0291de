"""A small generic name -> object registry for metrics, strategies and models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to objects; registering a name twice is an error, unknown names get suggestions.

    Args:
        kind: What the registry holds, used in error messages ("model", "metric", ...).
        builtins: Modules registering the built-in entries, imported on the first lookup.
    """

    def __init__(self, kind: str, *, builtins: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins  # modules that register the built-in entries, imported on first lookup
        self._loaded = not builtins

    def _load(self) -> None:
        """Import the modules that register the built-in entries (once), so that light packages (torch-free
        ones among them) need not import their heavy plugins until a name is looked up."""
        if not self._loaded:
            self._loaded = True
            import importlib

            for module in self._builtins:
                importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; raises ConfigError if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; raises UnknownNameError with suggestions."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        self._load()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._items)

    def __len__(self) -> int:
        self._load()
        return len(self._items)
