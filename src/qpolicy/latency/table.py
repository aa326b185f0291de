"""The latency table: what each layer of one model costs at each precision of one target, measured in context.

How it is measured (:func:`qpolicy.latency.profile_latency`): the whole model is exported at the target's base
precision (every layer ``int8``) and timed end to end; then, one layer at a time, the same model with only that
layer switched to another precision is timed against it, the two sessions alternating so that drift cancels. A
layer's entry is the median of those paired differences, with their quartiles (the spread) and count. So an entry
holds what the switch costs in that place of the real graph: the kernel, and the quantize/dequantize operators a
float layer needs around it. A policy's predicted latency is additive:

    latency(policy) = base + sum over layers of delta[layer][precision of the layer]
                           + sum over neighbouring layers a, b both float of pair[a, b]

A policy with every layer in float is the float model itself (exported without a single integer operator, a
different graph), priced at its own measured latency. The pair terms model what depends on two layers at once: two
neighbouring layers (consecutive in execution order) that both run in float share the quantize/dequantize pair
between them that each one's own entry pays for, and the runtime fuses float operators it could not fuse across an
integer one. ``pair[a, b]`` is measured the same way, with only a and b in float, minus both single entries.
Anything longer-range (a float layer feeding a residual addition far downstream) stays unmodelled; the latency
benchmark measures what is left. The table is a versioned JSON artefact keyed by layer name, like the sensitivity
table; it names the model's layers and their shapes, the target, the batch sizes, the machine and the versions,
and refuses to price another model. Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, PolicyError, shorten
from .targets import PRECISIONS, precision_of

__all__ = ["FORMAT", "VERSION", "Stat", "LatencyTable", "layer_signature"]

FORMAT = "qpolicy.latency"
VERSION = 1
BASE = "int8"


def layer_signature(layers: Sequence[Any]) -> dict[str, str]:
    """``name -> kind in_shape -> out_shape`` of each quantizable layer (``LayerInfo`` records): what a latency
    table was measured on, checked before the table prices a policy."""
    def shape(s: Any) -> str:
        return "x".join(str(d) for d in s) if s else "?"

    return {li.name: f"{li.kind} {shape(li.in_shape)} -> {shape(li.out_shape)}" for li in layers}


@dataclass(frozen=True, kw_only=True)
class Stat:
    """A measured time in milliseconds: median and quartiles of ``n`` repeats."""

    median: float
    q1: float
    q3: float
    n: int

    def __post_init__(self) -> None:
        for k in ("median", "q1", "q3"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PolicyError(f"latency {k} must be a finite number of milliseconds, got {shorten(v)}")
        if not self.q1 <= self.median <= self.q3:
            raise PolicyError(f"latency quartiles must bracket the median: {self.q1} <= {self.median} <= {self.q3}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise PolicyError(f"latency repeat count must be a positive integer, got {shorten(self.n)}")

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        import statistics

        v = sorted(float(x) for x in values)
        if len(v) == 1:
            return cls(median=v[0], q1=v[0], q3=v[0], n=1)
        q1, med, q3 = statistics.quantiles(v, n=4, method="inclusive")
        return cls(median=med, q1=min(q1, med), q3=max(q3, med), n=len(v))

    @property
    def spread(self) -> float:
        """The interquartile range."""
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "n": self.n}


@dataclass(frozen=True, kw_only=True)
class LatencyTable:
    """Measured latencies of one model on one target (see the module docs).

    Attributes:
        model: The model's name, if it has one.
        target: The target's registered name (``ort-cpu``).
        layers: ``name -> kind in_shape -> out_shape`` of every quantizable layer, in execution order.
        batches: The batch sizes measured.
        base: The precision of every layer in the base model (``int8``).
        base_ms: End-to-end latency of the base model, per batch size.
        float_ms: End-to-end latency of the float model, per batch size (what relative budgets multiply).
        delta_ms: ``layer -> precision -> batch -> Stat``: the measured change when only that layer takes that
            precision (the base precision is 0 by definition and not stored).
        float_pairs_ms: ``"a>b" -> batch -> Stat``: the measured change when only the consecutive layers a and b
            run in float (their pair term is this minus both single float entries); empty: no pair terms.
        provenance: Machine, versions, threads, repeats, command, creation time.
    """

    model: str | None
    target: str
    layers: Mapping[str, str]
    batches: tuple[int, ...]
    base: str
    base_ms: Mapping[int, Stat]
    float_ms: Mapping[int, Stat]
    delta_ms: Mapping[str, Mapping[str, Mapping[int, Stat]]]
    float_pairs_ms: Mapping[str, Mapping[int, Stat]] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise PolicyError("a latency table needs at least one layer")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise PolicyError(f"latency table batch sizes must be positive integers, got {shorten(self.batches)}")
        if self.base not in PRECISIONS:
            raise PolicyError(f"latency table base precision {shorten(self.base)} is not one of {list(PRECISIONS)}")
        for what, per_batch in (("base_ms", self.base_ms), ("float_ms", self.float_ms)):
            if set(per_batch) != set(self.batches):
                raise PolicyError(f"latency table {what} must have the batch sizes {list(self.batches)}")
        if set(self.delta_ms) != set(self.layers):
            missing = [n for n in self.layers if n not in self.delta_ms]
            extra = [n for n in self.delta_ms if n not in self.layers]
            raise PolicyError(f"latency table entries do not match its layers: missing {shorten(missing)}, "
                              f"extra {shorten(extra)}")
        for name, per in self.delta_ms.items():
            for prec, per_batch in per.items():
                if prec not in PRECISIONS or prec == self.base:
                    raise PolicyError(f"latency table layer {shorten(name)}: precision {shorten(prec)} is not one "
                                      f"of {[p for p in PRECISIONS if p != self.base]}")
                if set(per_batch) != set(self.batches):
                    raise PolicyError(f"latency table layer {shorten(name)} {prec}: needs the batch sizes "
                                      f"{list(self.batches)}")

        names = list(self.layers)
        consecutive = {f"{a}>{b}" for a, b in zip(names, names[1:], strict=False)}
        for key, per_batch in self.float_pairs_ms.items():
            if key not in consecutive:
                raise PolicyError(f"latency table float pair {shorten(key)} is not two consecutive layers 'a>b'")
            if set(per_batch) != set(self.batches):
                raise PolicyError(f"latency table float pair {shorten(key)}: needs the batch sizes "
                                  f"{list(self.batches)}")
            a, b = key.split(">")
            if "float" not in self.delta_ms[a] or "float" not in self.delta_ms[b]:
                raise PolicyError(f"latency table float pair {shorten(key)}: both layers need a float entry")

    # ---- use -------------------------------------------------------------------------------------------------
    def pair_terms(self, batch: int) -> list[tuple[str, str, float]]:
        """``(a, b, ms)``: what running consecutive layers a and b both in float adds beyond their single entries."""
        out = []
        for key, per_batch in self.float_pairs_ms.items():
            a, b = key.split(">")
            out.append((a, b, per_batch[batch].median - self.delta_ms[a]["float"][batch].median
                        - self.delta_ms[b]["float"][batch].median))
        return out

    def precisions(self, name: str) -> tuple[str, ...]:
        """The precisions layer ``name`` was measured at (the base one included)."""
        return (self.base, *self.delta_ms[name])

    def check_layers(self, layers: Sequence[Any], *, model: str | None = None) -> None:
        """Raise PolicyError unless this table was measured on a model with exactly these layers (``LayerInfo``)."""
        sig = layer_signature(layers)
        if sig != dict(self.layers):
            diff = [n for n in list(sig) + [n for n in self.layers if n not in sig]
                    if sig.get(n) != self.layers.get(n)]
            raise PolicyError(f"this latency table was measured on {self.model or 'another model'} "
                              f"({len(self.layers)} layers), not on {model or 'this model'} ({len(sig)} layers): "
                              f"they differ at {shorten(diff[:3])}; profile this model (qpolicy profile)")

    def check_target(self, name: str | None) -> None:
        """Raise ConfigError unless this table was measured on target ``name`` (None: any)."""
        from .targets import target

        if name is not None and target(name).name != self.target:
            raise ConfigError(f"this latency table was measured on {self.target}, not on {name}: profile the model "
                              f"on {name} (qpolicy profile --target {name})")

    def check_batch(self, batch: int | None) -> int:
        """The batch size to price at: ``batch``, or the table's only one; a batch it lacks is a ConfigError."""
        if batch is None:
            if len(self.batches) > 1:
                raise ConfigError(f"the latency table has batch sizes {list(self.batches)}: say which one "
                                  "(--latency-batch)")
            return self.batches[0]
        if batch not in self.batches:
            raise ConfigError(f"the latency table was measured at batch sizes {list(self.batches)}, not {batch}")
        return batch

    def layer_ms(self, name: str, precision: str, batch: int) -> float:
        """What layer ``name`` at ``precision`` adds to the base latency (0 at the base precision)."""
        if precision == self.base:
            return 0.0
        try:
            return self.delta_ms[name][precision][batch].median
        except KeyError:
            raise ConfigError(f"latency table has no entry for layer {shorten(name)} at {precision}, batch "
                              f"{batch}") from None

    def predict(self, policy: Any, batch: int | None = None) -> float:
        """The predicted end-to-end latency (ms) of ``policy`` (a Policy or ``name -> (weight_bits, act_bits)``);
        a ConfigError names the layers whose bits the target has no kernel for."""
        b = self.check_batch(batch)
        entries = policy.layers if hasattr(policy, "layers") else policy
        missing = [n for n in self.layers if n not in entries]
        if missing or len(entries) != len(self.layers):
            raise PolicyError(f"the policy and the latency table name different layers (missing "
                              f"{shorten(missing[:3])})")
        precs = {n: precision_of(*_bits(entries[n])) for n in self.layers}
        bad = [f"{n} (W{_bits(entries[n])[0] or 'f'}A{_bits(entries[n])[1] or 'f'})"
               for n, p in precs.items() if p is None]
        if bad:
            raise ConfigError(f"target {self.target} has no kernel for " + ", ".join(bad[:4])
                              + (" ..." if len(bad) > 4 else "") + ": a latency-priced layer takes 8-bit inputs "
                              "(weights 2..8 bits) or float ones")
        floats = {n for n, p in precs.items() if p == "float"}
        if len(floats) == len(self.layers):  # no integer operator at all: the float model, measured as such
            return self.float_ms[b].median
        total = self.base_ms[b].median + sum(self.layer_ms(n, p, b) for n, p in precs.items())
        total += sum(ms for a, c, ms in self.pair_terms(b) if a in floats and c in floats)
        return total

    # ---- file ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "target": self.target,
                "layers": dict(self.layers), "batches": list(self.batches), "base": self.base,
                "base_ms": {str(b): s.to_dict() for b, s in self.base_ms.items()},
                "float_ms": {str(b): s.to_dict() for b, s in self.float_ms.items()},
                "delta_ms": {n: {p: {str(b): s.to_dict() for b, s in per.items()} for p, per in d.items()}
                             for n, d in self.delta_ms.items()},
                "float_pairs_ms": {k: {str(b): s.to_dict() for b, s in per.items()}
                                   for k, per in self.float_pairs_ms.items()},
                "provenance": dict(self.provenance)}

    def save(self, path: str | os.PathLike) -> None:
        from .._io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not a qpolicy latency table (format should be {FORMAT!r})")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
            raise PolicyError(f"{source}: latency table version {shorten(version)} (this qpolicy reads "
                              f"1..{VERSION})")
        try:
            batches = tuple(_batch(b) for b in data["batches"])

            def per_batch(d: Any, what: str) -> dict[int, Stat]:
                if not isinstance(d, dict):
                    raise PolicyError(f"{what} must be an object keyed by batch size")
                return {_batch(b): _stat(v, what) for b, v in d.items()}

            layers = data["layers"]
            if not isinstance(layers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in layers.items()):
                raise PolicyError("layers must map layer names to their shapes")
            delta = data["delta_ms"]
            if not isinstance(delta, dict) or not all(isinstance(v, dict) for v in delta.values()):
                raise PolicyError("delta_ms must map layer -> precision -> batch -> time")
            table = cls(model=data.get("model"), target=str(data["target"]), layers=layers, batches=batches,
                        base=data["base"], base_ms=per_batch(data["base_ms"], "base_ms"),
                        float_ms=per_batch(data["float_ms"], "float_ms"),
                        delta_ms={n: {p: per_batch(v, f"{n} {p}") for p, v in d.items()} for n, d in delta.items()},
                        float_pairs_ms={k: per_batch(v, f"float pair {k}")
                                        for k, v in _object(data.get("float_pairs_ms", {}), "float_pairs_ms").items()},
                        provenance=data.get("provenance") or {})
        except KeyError as e:
            raise PolicyError(f"{source}: missing field {e}") from None
        except (TypeError, ValueError, PolicyError) as e:
            raise PolicyError(f"{source}: {e}") from None
        return table

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        from .._io import read_json

        return cls.from_dict(read_json(path, "latency table"), source=str(path))


def _bits(e: Any) -> tuple[Any, Any]:
    return (e.weight_bits, e.act_bits) if hasattr(e, "weight_bits") else tuple(e)


def _object(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise PolicyError(f"{what} must be an object")
    return v


def _batch(b: Any) -> int:
    try:
        v = int(b)
    except (TypeError, ValueError):
        raise PolicyError(f"batch size {shorten(b)} is not an integer") from None
    if v < 1 or isinstance(b, bool) or (isinstance(b, float) and b != v):
        raise PolicyError(f"batch size {shorten(b)} must be a positive integer")
    return v


def _stat(v: Any, what: str) -> Stat:
    if not isinstance(v, dict) or set(v) != {"median", "q1", "q3", "n"}:
        raise PolicyError(f"{what}: a time must be {{median, q1, q3, n}}, got {shorten(v)}")
    return Stat(**v)
