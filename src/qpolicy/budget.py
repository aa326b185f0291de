"""Budgets a policy must meet: weight size, BitOPs, average weight bits, average activation bits, latency.

Size and BitOPs are relative to the same model at W8A8 unless given with units (``size=70KB``, ``bitops=1.2G``);
average bits are bits (``wbits=4``, ``abits=8``). Latency is measured, not computed: it needs a latency table
(:mod:`qpolicy.latency`, from ``qpolicy profile``) carried by the budget, and is relative to the float model's
measured latency unless given with units (``latency=0.7``, ``latency=1.2ms``). Several limits may hold at once.
Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, shorten

if TYPE_CHECKING:
    from .layers import LayerInfo

__all__ = ["Budget", "BudgetLimits"]

_SIZE_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}
_KEYS = {"size": "size", "bitops": "bitops", "wbits": "wbits", "abits": "abits",
         "avg_weight_bits": "wbits", "avg_act_bits": "abits", "latency": "latency"}
_LIMITS = ("size", "size_bytes", "bitops", "bitops_abs", "wbits", "abits", "latency", "latency_ms")


@dataclass(frozen=True, kw_only=True)
class BudgetLimits:
    """Absolute limits on one model (None: no limit). ``*_bit_sum`` are the weighted sums behind the averages."""

    size_bytes: float | None
    bitops: float | None
    weight_bit_sum: float | None  # sum of params x weight bits
    act_bit_sum: float | None  # sum of input activation elements x act bits
    latency_ms: float | None = None  # predicted end-to-end latency from the budget's latency table


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
        latency: Predicted latency relative to the float model's measured latency (e.g. 0.7), or None.
        latency_ms: Predicted latency in milliseconds, or None.
        latency_table: The :class:`~qpolicy.latency.LatencyTable` that prices latency (needed by a latency limit;
            without one a search still reports the policy's predicted latency).
        latency_batch: The table's batch size to price at (default: its only one).
    """

    size: float | None = None
    size_bytes: float | None = None
    bitops: float | None = None
    bitops_abs: float | None = None
    wbits: float | None = None
    abits: float | None = None
    latency: float | None = None
    latency_ms: float | None = None
    latency_table: Any = field(default=None, compare=False, repr=False)
    latency_batch: int | None = None

    def __post_init__(self) -> None:
        for k in _LIMITS:
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise ConfigError(f"budget {k} must be a positive finite number, got {shorten(v)}")
        if all(getattr(self, k) is None for k in _LIMITS):
            raise ConfigError("a budget needs at least one limit: size, bitops, wbits, abits or latency")
        table = self.latency_table
        if table is None:
            if self.latency is not None or self.latency_ms is not None:
                raise ConfigError("a latency budget needs a latency table measured on the deployment target "
                                  "(--latency-table FILE, written by `qpolicy profile`)")
            if self.latency_batch is not None:
                raise ConfigError("latency_batch needs a latency table")
            return
        if not hasattr(table, "predict") or not hasattr(table, "check_batch"):
            raise ConfigError(f"latency_table must be a qpolicy.latency.LatencyTable, got {type(table).__name__}")
        object.__setattr__(self, "latency_batch", table.check_batch(self.latency_batch))

    @classmethod
    def parse(cls, specs: str | Iterable[str], *, latency_table: Any = None,
              latency_batch: int | None = None) -> Budget:
        """From ``"bitops=0.25"``, ``"size=70KB"``, ``"abits=8"``, ``"latency=0.7"`` (of float),
        ``"latency=1.2ms"`` or several (a list, or comma-separated); a latency limit needs ``latency_table``."""
        items = [specs] if isinstance(specs, str) else list(specs)
        parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
        if not parts:
            raise ConfigError("an empty budget: give size=..., bitops=..., wbits=..., abits=... or latency=... "
                              "(e.g. bitops=0.25)")
        kw: dict[str, float] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            key = _KEYS.get(key.strip().lower())
            if not sep or key is None:
                raise ConfigError(f"bad budget {shorten(part)}: expected size=..., bitops=..., wbits=..., abits=... "
                                  "or latency=... (e.g. bitops=0.25, size=70KB, abits=8, latency=1.2ms)")
            kw.update(_parse_value(key, value.strip(), part))
        return cls(**kw, latency_table=latency_table, latency_batch=latency_batch)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in _LIMITS if getattr(self, k) is not None}
        t = self.latency_table
        if t is not None:
            d["latency_table"] = {"model": t.model, "target": t.target, "batch": self.latency_batch,
                                  "created": t.provenance.get("created"),
                                  "cpu": t.provenance.get("machine", {}).get("cpu")}
        return d

    def __str__(self) -> str:
        names = {"size": "size={:g}x", "size_bytes": "size={:g}B", "bitops": "bitops={:g}x",
                 "bitops_abs": "bitops={:g}", "wbits": "wbits={:g}", "abits": "abits={:g}",
                 "latency": "latency={:g}x", "latency_ms": "latency={:g}ms"}
        text = ",".join(names[k].format(getattr(self, k)) for k in _LIMITS if getattr(self, k) is not None)
        if self.latency_table is not None and (self.latency is not None or self.latency_ms is not None):
            text += f" ({self.latency_table.target}, batch {self.latency_batch})"
        return text

    def predicted_latency_ms(self, policy: Any) -> float | None:
        """The policy's predicted latency from the budget's latency table (None without a table, or when the
        policy has layers the target has no kernel for)."""
        if self.latency_table is None:
            return None
        try:
            return float(self.latency_table.predict(policy, self.latency_batch))
        except ConfigError:
            return None

    def has_latency(self) -> bool:
        return self.latency is not None or self.latency_ms is not None

    def limits(self, layers: Sequence[LayerInfo], *, without_latency: str | None = None) -> BudgetLimits:
        """The absolute limits on a model with these layers (the tightest where two are given).
        ``without_latency``: the name of a search that prices formula costs only (a latency limit is then a
        ConfigError)."""
        from .costs import w8a8_cost

        if without_latency is not None and self.has_latency():
            raise ConfigError(f"strategy {without_latency} prices size, BitOPs and bits only; a latency budget is "
                              "for the validated search and the table strategies (ilp, ...)")
        ref = w8a8_cost(layers)
        params, acts = ref["weight_bit_sum"] / 8, ref["act_bit_sum"] / 8
        size8, bitops8 = ref["size_bytes"], ref["bitops"]
        size = _min(self.size and self.size * size8, self.size_bytes)
        bitops = _min(self.bitops and self.bitops * bitops8, self.bitops_abs)
        latency = None
        if self.has_latency():
            self.latency_table.check_layers(layers)
            flt = self.latency_table.float_ms[self.latency_batch].median
            latency = _min(self.latency and self.latency * flt, self.latency_ms)
        return BudgetLimits(size_bytes=size, bitops=bitops,
                            weight_bit_sum=None if self.wbits is None else self.wbits * params,
                            act_bit_sum=None if self.abits is None else self.abits * acts, latency_ms=latency)


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
    if key == "latency":
        if unit in ("", "x", "rel"):
            return {"latency": number}
        if unit not in _TIME_UNITS:
            raise ConfigError(f"unknown latency unit {shorten(m[2])} in {shorten(part)}; use ms, us or s (or none: "
                              "relative to the float model)")
        return {"latency_ms": number * _TIME_UNITS[unit]}
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
