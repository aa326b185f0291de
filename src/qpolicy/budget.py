"""Budgets a policy must meet: weight size, BitOPs, average weight bits, average activation bits.

Size and BitOPs are relative to the same model at W8A8 unless given with units (``size=70KB``, ``bitops=1.2G``);
average bits are bits (``wbits=4``, ``abits=8``). Several limits may hold at once. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, shorten

if TYPE_CHECKING:
    from .layers import LayerInfo

__all__ = ["Budget", "BudgetLimits"]

_SIZE_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_KEYS = {"size": "size", "bitops": "bitops", "wbits": "wbits", "abits": "abits",
         "avg_weight_bits": "wbits", "avg_act_bits": "abits"}


@dataclass(frozen=True, kw_only=True)
class BudgetLimits:
    """Absolute limits on one model (None: no limit). ``*_bit_sum`` are the weighted sums behind the averages."""

    size_bytes: float | None
    bitops: float | None
    weight_bit_sum: float | None  # sum of params x weight bits
    act_bit_sum: float | None  # sum of input activation elements x act bits


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Upper limits on a policy's cost.

    Args:
        size: Weight size relative to W8A8 (e.g. 0.375), or None.
        size_bytes: Absolute weight size in bytes, or None.
        bitops: BitOPs relative to W8A8 (e.g. 0.25), or None.
        bitops_abs: Absolute BitOPs per sample, or None.
        wbits: Average weight bits (parameter-weighted), or None.
        abits: Average activation bits (weighted by input activation elements), or None.
    """

    size: float | None = None
    size_bytes: float | None = None
    bitops: float | None = None
    bitops_abs: float | None = None
    wbits: float | None = None
    abits: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise ConfigError(f"budget {f.name} must be a positive finite number, got {shorten(v)}")
        if all(getattr(self, f.name) is None for f in fields(self)):
            raise ConfigError("a budget needs at least one limit: size, bitops, wbits or abits")

    @classmethod
    def parse(cls, specs: str | Iterable[str]) -> Budget:
        """From ``"bitops=0.25"``, ``"size=70KB"``, ``"abits=8"`` or several (a list, or comma-separated)."""
        items = [specs] if isinstance(specs, str) else list(specs)
        parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
        if not parts:
            raise ConfigError("an empty budget: give size=..., bitops=..., wbits=... or abits=... (e.g. bitops=0.25)")
        kw: dict[str, float] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            key = _KEYS.get(key.strip().lower())
            if not sep or key is None:
                raise ConfigError(f"bad budget {shorten(part)}: expected size=..., bitops=..., wbits=... or abits=... "
                                  "(e.g. bitops=0.25, size=70KB, abits=8)")
            kw.update(_parse_value(key, value.strip(), part))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __str__(self) -> str:
        names = {"size": "size={:g}x", "size_bytes": "size={:g}B", "bitops": "bitops={:g}x",
                 "bitops_abs": "bitops={:g}", "wbits": "wbits={:g}", "abits": "abits={:g}"}
        return ",".join(names[k].format(v) for k, v in self.to_dict().items())

    def limits(self, layers: Sequence[LayerInfo]) -> BudgetLimits:
        """The absolute limits on a model with these layers (the tightest where two are given)."""
        from .costs import w8a8_cost

        ref = w8a8_cost(layers)
        params, acts = ref["weight_bit_sum"] / 8, ref["act_bit_sum"] / 8
        size8, bitops8 = ref["size_bytes"], ref["bitops"]
        size = _min(self.size and self.size * size8, self.size_bytes)
        bitops = _min(self.bitops and self.bitops * bitops8, self.bitops_abs)
        return BudgetLimits(size_bytes=size, bitops=bitops,
                            weight_bit_sum=None if self.wbits is None else self.wbits * params,
                            act_bit_sum=None if self.abits is None else self.abits * acts)


def _min(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v is not None]
    return min(vals) if vals else None


def _parse_value(key: str, value: str, part: str) -> dict[str, float]:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)", value)
    if not m:
        raise ConfigError(f"bad budget value in {shorten(part)}: expected a number, optionally with units")
    number, unit = float(m[1]), m[2].lower()
    if key in ("wbits", "abits"):
        if unit not in ("", "b", "bits"):
            raise ConfigError(f"{key} is in bits, got unit {shorten(m[2])} in {shorten(part)}")
        return {key: number}
    if key == "size":
        if unit == "":
            return {"size": number}
        if unit in ("x", "rel"):
            return {"size": number}
        if unit not in _SIZE_UNITS:
            raise ConfigError(f"unknown size unit {shorten(m[2])} in {shorten(part)}; use B, KB, MB (KiB, MiB)")
        return {"size_bytes": number * _SIZE_UNITS[unit]}
    if unit in ("x", "rel"):
        return {"bitops": number}
    if unit == "":
        return {"bitops": number}
    if unit not in _COUNT_UNITS:
        raise ConfigError(f"unknown BitOPs unit {shorten(m[2])} in {shorten(part)}; use K, M, G or T")
    return {"bitops_abs": number * _COUNT_UNITS[unit]}
