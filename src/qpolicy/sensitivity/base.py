"""Sensitivity metrics score layers; the SensitivityTable carries the scores and the layer sizes to the search.

A metric returns, for every quantizable layer and candidate bit-width, the expected damage of quantizing that
layer's weights (and, separately, its input activations) to that width. Damage is non-increasing in bits; the
table enforces this (a score at b bits is raised to the largest score at any width >= b), so a search never
prefers fewer bits for less damage. Metrics never choose bits and never change the model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from .._io import write_json
from ..bits import check_bits
from ..errors import ConfigError, PolicyError, shorten
from ..layers import LayerInfo
from ..policy import MAX_NAME
from ..registry import Registry

__all__ = ["DEFAULT_BITS", "Metric", "BatchMetric", "METRICS", "SensitivityTable", "analyze", "monotone"]

log = logging.getLogger(__name__)
DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
FORMAT = "qpolicy.sensitivity"
VERSION = 1
Scores = Mapping[str, Mapping[int, float]]


class Metric(Protocol):
    """What a metric implements. ``name`` is its registry name."""

    name: str

    def score(self, model: Any, calib: Iterable[Any], *, layers: Sequence[LayerInfo], bits: Sequence[int],
              seed: int) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
        """Return ``(weight_scores, act_scores)``: ``scores[layer][bits]`` = expected damage."""
        ...


# the built-in metrics import torch: they are imported when a metric is first looked up, so that reading a table
# (the search) stays torch-free
METRICS: Registry[Callable[[], Metric]] = Registry("metric", builtins=tuple(
    f"qpolicy.sensitivity.{m}" for m in ("fisher", "hessian", "kl", "qerror", "te")))


@dataclass(kw_only=True)
class BatchMetric:
    """Shared configuration of metrics that read a number of calibration batches.

    Args:
        batches: Calibration batches the metric uses.
        quantizer: How the metric quantizes a tensor to score it, matching the calibration the policy will get:
            ``"mse"`` (MSE clipping, apply_policy's default) or ``"minmax"`` (plain min-max ranges).
        bn_reestimate: Match apply_policy's BatchNorm re-estimation (its default): a layer whose output goes into a
            BatchNorm is scored after that BatchNorm's statistics are re-measured on the quantized output, so a
            shift or scaling of the output that the re-estimated BatchNorm absorbs costs nothing. False for a
            deployment that keeps the float statistics.
    """

    batches: int = 1
    quantizer: str = "mse"
    bn_reestimate: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError(f"batches must be a positive integer, got {self.batches!r}")
        if self.quantizer not in ("mse", "minmax"):
            raise ConfigError(f"quantizer must be 'mse' or 'minmax', got {self.quantizer!r}")
        if not isinstance(self.bn_reestimate, bool):
            raise ConfigError(f"bn_reestimate must be true or false, got {self.bn_reestimate!r}")

    def config_dict(self) -> dict[str, Any]:
        """The settings recorded in a table's provenance."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


def monotone(scores: Mapping[int, float]) -> dict[int, float]:
    """Scores made non-increasing in bits: each value becomes the max over its width and all wider ones."""
    out, running = {}, float("-inf")
    for b in sorted(scores, reverse=True):
        running = max(running, float(scores[b]))
        out[b] = running
    return {b: out[b] for b in sorted(out)}


@dataclass(frozen=True, kw_only=True)
class SensitivityTable:
    """Scores of one metric on one model, with what the search needs to price a policy (layer sizes).

    Attributes:
        metric: Registry name of the metric.
        bits: Candidate bit-widths scored.
        layers: The model's quantizable layers (names, params, MACs, shapes), in execution order.
        weight: ``weight[layer][bits]`` expected damage of quantizing the layer's weights.
        act: ``act[layer][bits]`` expected damage of quantizing the layer's input activations.
        model: Model name, if known.
        provenance: How the table was made (seed, data, seconds, versions).
        monotone: Enforce damage non-increasing in bits (default). Tables of preferences rather than damage
            (the architecture parameters or Shapley values of a differentiable search) set it False, so that a
            narrower width that was preferred stays preferred.
    """

    metric: str
    bits: tuple[int, ...]
    layers: tuple[LayerInfo, ...]
    weight: Scores
    act: Scores
    model: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    monotone: bool = True

    def __post_init__(self) -> None:
        bits = tuple(sorted({check_bits(b, "candidate bits") for b in self.bits}))
        if not bits:
            raise ConfigError("a sensitivity table needs at least one candidate bit-width")
        names = [li.name for li in self.layers]
        if not names:
            raise ConfigError("a sensitivity table needs at least one layer")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"layer {shorten(dup)} appears twice in the table")
        for what, scores in (("weight", self.weight), ("act", self.act)):
            for n in names:
                if n not in scores or set(scores[n]) != set(bits):
                    raise ConfigError(f"{what} scores of layer {n!r} must cover bits {bits}")
        for li in self.layers:
            if li.shares_input_with is not None and li.shares_input_with not in names:
                raise ConfigError(f"layer {li.name!r} shares its input with {li.shares_input_with!r}, "
                                  "which is not a layer of the table")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "layers", tuple(self.layers))
        for what in ("weight", "act"):
            fixed = {n: MappingProxyType(monotone(getattr(self, what)[n]) if self.monotone else
                                         {b: float(getattr(self, what)[n][b]) for b in bits}) for n in names}
            object.__setattr__(self, what, MappingProxyType(fixed))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))

    @property
    def names(self) -> list[str]:
        return [li.name for li in self.layers]

    def ranking(self, bits: int | None = None) -> list[str]:
        """Layer names, most sensitive first, by weight + activation damage at ``bits`` (default: the lowest)."""
        b = self.bits[0] if bits is None else bits
        return sorted(self.names, key=lambda n: -(self.weight[n][b] + self.act[n][b]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "metric": self.metric, "model": self.model,
            "bits": list(self.bits), "layers": [li.to_dict() for li in self.layers],
            "weight": {n: {str(b): v for b, v in s.items()} for n, s in self.weight.items()},
            "act": {n: {str(b): v for b, v in s.items()} for n, s in self.act.items()},
            "provenance": dict(self.provenance),
            **({} if self.monotone else {"monotone": False}),
        }

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "table") -> SensitivityTable:
        """Build a table from parsed JSON, checking every field it reads (types, signs, finiteness, integer bits
        in range, unique layer names); a problem is a PolicyError naming the field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not a qpolicy sensitivity table (format should be {FORMAT!r})")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
            raise PolicyError(f"{source}: unsupported sensitivity table version {shorten(version)} (this qpolicy "
                              f"reads 1..{VERSION})")
        try:
            return _table_from_dict(cls, data)
        except (ConfigError, PolicyError, ValueError, TypeError) as e:
            raise PolicyError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityTable:
        from pathlib import Path

        from .._io import read_json

        return cls.from_dict(read_json(path, "sensitivity table"), source=str(Path(path)))


def _field(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{where} has no {key!r}")
    return d[key]


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {shorten(v)}")
    return v


def _name(v: Any, what: str, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError(f"{what} must be a non-empty string, got {shorten(v)}")
    if len(v) > MAX_NAME:
        raise ValueError(f"{what} {shorten(v)} is longer than {MAX_NAME} characters: not a module name")
    return v


def _shape(v: Any, what: str) -> tuple[int, ...] | None:
    if v is None or v == []:
        return None
    if not isinstance(v, list) or not all(not isinstance(x, bool) and isinstance(x, int) and x > 0 for x in v):
        raise ValueError(f"{what} must be a list of positive integers or null, got {shorten(v)}")
    return tuple(v)


def _table_from_dict(cls: type[SensitivityTable], data: dict[str, Any]) -> SensitivityTable:
    raw_layers = _field(data, "layers", "the table")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ValueError("'layers' must be a non-empty list of layers")
    layers = []
    for i, d in enumerate(raw_layers):
        where = f"layers[{i}]"
        layers.append(LayerInfo(
            name=_name(_field(d, "name", where), f"{where}.name"), kind=_name(_field(d, "kind", where),
                                                                               f"{where}.kind"),
            params=_count(_field(d, "params", where), f"{where}.params"),
            macs=_count(_field(d, "macs", where), f"{where}.macs"),
            in_shape=_shape(d.get("in_shape"), f"{where}.in_shape"),
            out_shape=_shape(d.get("out_shape"), f"{where}.out_shape"),
            order=_count(d.get("order", i), f"{where}.order"),
            shares_input_with=_name(d.get("shares_input_with"), f"{where}.shares_input_with", optional=True)))
    bits = _field(data, "bits", "the table")
    if not isinstance(bits, list) or not bits:
        raise ValueError(f"'bits' must be a non-empty list of bit-widths, got {shorten(bits)}")
    bits = [check_bits(b, "bits") for b in bits]
    if len(set(bits)) != len(bits):
        raise ValueError(f"'bits' lists a width twice: {shorten(bits)}")
    monotone_ = data.get("monotone", True)
    if not isinstance(monotone_, bool):
        raise ValueError(f"'monotone' must be true or false, got {shorten(monotone_)}")
    names = {li.name for li in layers}
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for side in ("weight", "act"):
        raw = _field(data, side, "the table")
        if not isinstance(raw, dict):
            raise ValueError(f"'{side}' must be an object of layer name -> scores")
        extra = [n for n in raw if n not in names]
        if extra:
            raise ValueError(f"'{side}' scores layer {shorten(extra[0])}, which is not in 'layers'")
        scores[side] = {}
        for n, per in raw.items():
            if not isinstance(per, dict) or set(per) != {str(b) for b in bits}:
                raise ValueError(f"{side} scores of layer {shorten(n)} must be an object with one score for each "
                                 f"of bits {sorted(bits)}")
            scores[side][n] = {int(b): _score(v, f"{side} score of layer {shorten(n)} at {b} bits", monotone_)
                               for b, v in per.items()}
    metric = _name(_field(data, "metric", "the table"), "'metric'")
    model = _name(data.get("model"), "'model'", optional=True)
    prov = data.get("provenance") or {}
    if not isinstance(prov, dict):
        raise ValueError("'provenance' must be an object")
    return cls(metric=metric, bits=tuple(bits), layers=tuple(layers), weight=scores["weight"], act=scores["act"],
               model=model, provenance=prov, monotone=monotone_)


def _score(v: Any, what: str, nonnegative: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {shorten(v)}")
    if nonnegative and v < 0:
        raise ValueError(f"{what} is negative ({v:g}): a damage is at least 0")
    return float(v)


def analyze(model: Any, calib: Iterable[Any], *, metric: str | Metric = "qerror",
            bits: Sequence[int] = DEFAULT_BITS, seed: int = 0, model_name: str | None = None,
            input_shape: tuple[int, ...] | None = None) -> SensitivityTable:
    """Score every quantizable layer of ``model`` with ``metric``; the model is left unchanged.

    Args:
        model: The float model.
        calib: Batches ``(x, y)`` the metric runs on.
        metric: A registered name (``qpolicy list metrics``) or a metric instance.
        bits: Candidate bit-widths.
        seed: Seeds any randomness of the metric (recorded in provenance).
    """
    from ..layers import quantizable_layers
    from ..policy import versions

    m = METRICS.get(metric)() if isinstance(metric, str) else metric
    bits = tuple(sorted({check_bits(b, "candidate bits") for b in bits}))
    layers = quantizable_layers(model, input_shape)
    t = time.perf_counter()
    weight, act = m.score(model, calib, layers=layers, bits=bits, seed=seed)
    seconds = time.perf_counter() - t
    log.info("%s sensitivity of %d layers in %.2f s", m.name, len(layers), seconds)
    return SensitivityTable(metric=m.name, bits=bits, layers=tuple(layers), weight=weight, act=act,
                            model=model_name or getattr(model, "zoo_name", None),
                            provenance={"seed": seed, "seconds": seconds, "versions": versions(),
                                        "config": getattr(m, "config_dict", lambda: {})()})
