"""Sensitivity metrics score layers; the SensitivityTable carries the scores and the layer sizes to the search.

A metric returns, for every quantizable layer and candidate bit-width, the expected damage of quantizing that
layer's weights (and, separately, its input activations) to that width. Damage is non-increasing in bits; the
table enforces this (a score at b bits is raised to the largest score at any width >= b), so a search never
prefers fewer bits for less damage. Metrics never choose bits and never change the model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from .._io import write_json
from ..bits import check_bits
from ..errors import ConfigError, PolicyError
from ..layers import LayerInfo
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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not a qpolicy sensitivity table (format should be {FORMAT!r})")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise PolicyError(f"{source}: unsupported sensitivity table version {data.get('version')!r}")
        try:
            layers = tuple(LayerInfo(name=d["name"], kind=d["kind"], params=int(d["params"]), macs=int(d["macs"]),
                                     in_shape=tuple(d["in_shape"]) if d["in_shape"] else None,
                                     out_shape=tuple(d["out_shape"]) if d["out_shape"] else None,
                                     order=int(d["order"]), shares_input_with=d.get("shares_input_with"))
                           for d in data["layers"])
            scores = {w: {n: {int(b): float(v) for b, v in s.items()} for n, s in data[w].items()}
                      for w in ("weight", "act")}
            return cls(metric=str(data["metric"]), bits=tuple(int(b) for b in data["bits"]), layers=layers,
                       weight=scores["weight"], act=scores["act"], model=data.get("model"),
                       provenance=data.get("provenance") or {}, monotone=bool(data.get("monotone", True)))
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{source}: malformed sensitivity table ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityTable:
        import json
        from pathlib import Path

        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"sensitivity table not found: {p}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PolicyError(f"cannot read sensitivity table {p}: {e}") from None
        return cls.from_dict(data, source=str(p))


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
