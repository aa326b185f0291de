"""The policy: per-layer weight and activation bit-widths, as versioned JSON with provenance.

A policy file looks like::

    {
      "format": "qpolicy.policy",
      "version": 1,
      "model": "resnet20",
      "layers": {"conv1": {"weight_bits": 8, "act_bits": 8}, "layer1.0.conv1": {"weight_bits": 4, "act_bits": 4}},
      "provenance": {"method": "uniform", "spec": "w4a4", "qpolicy_version": "0.1.0", ...}
    }

Every quantizable layer is listed by its module name; ``null`` bits keep that side of the layer in float.
Loading reads these known fields only (no pickle, no imports of names found in the file).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._io import write_json
from .bits import MAX_BITS, MIN_BITS, check_bits
from .errors import BitWidthError, ConfigError, PolicyError, PolicyMismatchError, shorten, suggest

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FORMAT", "VERSION", "LayerBits", "Policy", "parse_uniform_spec", "uniform_policy", "versions"]

FORMAT = "qpolicy.policy"
VERSION = 1
MAX_NAME = 1000  # characters of a layer name (a module path); longer is not a module name, and slows every report
_SPEC = re.compile(r"^w(?P<w>[2-8]|f)(?:a(?P<a>[2-8]|16|f))?$", re.IGNORECASE)


def _check_name(name: Any, where: str = "") -> None:
    """A layer name is a non-empty module path of at most MAX_NAME characters."""
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}layer names must be non-empty strings, got {shorten(name)}")
    if len(name) > MAX_NAME:
        raise PolicyError(f"{where}layer name {shorten(name)} is longer than {MAX_NAME} characters: not a module name")


@dataclass(frozen=True, kw_only=True)
class LayerBits:
    """Bit-widths of one layer; ``None`` keeps that side in float."""

    weight_bits: int | None
    act_bits: int | None

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits", allow_float=True)
        check_bits(self.act_bits, "act_bits", allow_float=True, act=True)

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None and self.act_bits is None

    def to_dict(self) -> dict[str, int | None]:
        return {"weight_bits": self.weight_bits, "act_bits": self.act_bits}

    def short(self) -> str:
        return f"w{self.weight_bits or 'f'}a{self.act_bits or 'f'}"


def versions() -> dict[str, str]:
    """Versions recorded in provenance (torch's read from its package metadata unless it is already imported, so
    that the torch-free search does not import it)."""
    import sys
    from importlib import metadata

    from . import __version__

    torch = sys.modules.get("torch")
    if torch is not None:
        tv = str(torch.__version__)
    else:
        try:
            tv = metadata.version("torch")
        except metadata.PackageNotFoundError:
            tv = "not installed"
    return {"qpolicy": __version__, "torch": tv, "python": platform.python_version()}


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Per-layer bit-widths for one model.

    Args:
        layers: Module name -> LayerBits, in the model's execution order.
        model: Name of the model it was made for (zoo name or ``package.module:factory``), if known.
        provenance: How the policy was made (method, spec, metric, strategy, budget, cost, seed, versions).
    """

    layers: Mapping[str, LayerBits]
    model: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping) or not self.layers:
            raise PolicyError("a policy needs at least one layer")
        layers = {}
        for name, bits in self.layers.items():
            _check_name(name)
            if not isinstance(bits, LayerBits):
                raise PolicyError(f"layer {name!r}: expected LayerBits, got {type(bits).__name__}")
            layers[name] = bits
        object.__setattr__(self, "layers", MappingProxyType(layers))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return (
            list(self.layers.items()) == list(other.layers.items())
            and self.model == other.model
            and dict(self.provenance) == dict(other.provenance)
        )

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, name: str) -> LayerBits:
        try:
            return self.layers[name]
        except KeyError:
            raise PolicyError(f"layer {name!r} is not in the policy{suggest(name, self.layers)}") from None

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    # ---- JSON ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "layers": {n: b.to_dict() for n, b in self.layers.items()},
            "provenance": _plain(self.provenance),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | os.PathLike) -> None:
        """Write the policy as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "policy") -> Policy:
        """Build a policy from parsed JSON, checking every field."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not a qpolicy policy (format is {data.get('format')!r}, expected {FORMAT!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise PolicyError(f"{source}: version must be an integer, got {version!r}")
        if version > VERSION:
            raise PolicyError(f"{source}: policy version {version} is newer than this qpolicy reads ({VERSION})")
        layers = data.get("layers")
        if not isinstance(layers, dict) or not layers:
            raise PolicyError(f"{source}: 'layers' must be a non-empty object of layer name -> bits")
        parsed = {}
        for name, entry in layers.items():
            _check_name(name, f"{source}: ")
            if not isinstance(entry, dict) or "weight_bits" not in entry or "act_bits" not in entry:
                raise PolicyError(f"{source}: layer {shorten(name)} needs 'weight_bits' and 'act_bits' (integer or "
                                  "null)")
            try:
                parsed[name] = LayerBits(weight_bits=entry["weight_bits"], act_bits=entry["act_bits"])
            except BitWidthError as e:
                raise PolicyError(f"{source}: layer {shorten(name)}: {e}") from None
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise PolicyError(f"{source}: 'model' must be a string or null, got {model!r}")
        prov = data.get("provenance", {})
        if not isinstance(prov, dict):
            raise PolicyError(f"{source}: 'provenance' must be an object")
        return cls(layers=parsed, model=model, provenance=prov)

    @classmethod
    def from_json(cls, text: str, *, source: str = "policy") -> Policy:
        from ._io import parse_json

        return cls.from_dict(parse_json(text, source), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """Read a policy file; every problem is a PolicyError naming the file."""
        from ._io import read_json

        return cls.from_dict(read_json(path, "policy file"), source=str(Path(path)))

    # ---- checks and edits ---------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise PolicyMismatchError unless the policy names exactly the model's quantizable layers."""
        from .layers import quantizable_modules

        self.validate_names([n for n, _ in quantizable_modules(model)])

    def validate_names(self, names: Sequence[str]) -> None:
        """Raise PolicyMismatchError unless the policy names exactly ``names``."""
        known = set(names)
        missing = [n for n in names if n not in self.layers]
        extra = [n for n in self.layers if n not in known]
        if not missing and not extra:
            return
        parts = []
        if missing:
            parts.append(f"{len(missing)} model layer(s) missing from the policy: {_head(missing)}")
        if extra:
            parts.append(f"{len(extra)} policy layer(s) not in the model: {_head(extra)}{suggest(extra[0], names)}")
        who = f" (policy made for {self.model!r})" if self.model else ""
        raise PolicyMismatchError("policy does not match the model" + who + ": " + "; ".join(parts),
                                  missing=missing, extra=extra)

    def with_provenance(self, **updates: Any) -> Policy:
        """A copy with provenance fields added or replaced."""
        return Policy(layers=self.layers, model=self.model, provenance={**self.provenance, **updates})

    def replace_layers(self, updates: Mapping[str, LayerBits]) -> Policy:
        """A copy with some layers' bits replaced (names must exist)."""
        for n in updates:
            self[n]
        return Policy(layers={**self.layers, **updates}, model=self.model, provenance=self.provenance)


def _head(names: Iterable[str], k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def parse_uniform_spec(spec: str) -> LayerBits:
    """Parse ``w4a8`` (4-bit weights, 8-bit activations); ``f`` means float, ``w4`` alone means ``w4af``."""
    if not isinstance(spec, str):
        raise ConfigError(f"uniform spec must be a string like 'w4a8', got {spec!r}")
    m = _SPEC.match(spec.strip())
    if not m:
        raise ConfigError(
            f"bad uniform spec {spec!r}: expected w<bits>a<bits> with bits in {MIN_BITS}..{MAX_BITS} or 'f' "
            "for float (activations may also be 16), e.g. w4a8, w8a8, w3af, w8a16"
        )

    def conv(s: str | None) -> int | None:
        return None if s is None or s.lower() == "f" else int(s)

    return LayerBits(weight_bits=conv(m["w"]), act_bits=conv(m["a"]))


def _first_last_bits(first_last: int | str | None, rest: LayerBits) -> LayerBits:
    if first_last is None or first_last == "same":
        return rest
    if first_last == "float":
        return LayerBits(weight_bits=None, act_bits=None)
    if isinstance(first_last, str) and first_last.isdigit() and len(first_last) < 10:
        first_last = int(first_last)
    if isinstance(first_last, bool) or not isinstance(first_last, int):
        raise ConfigError(f"first_last must be bits in {MIN_BITS}..{MAX_BITS}, 'same' or 'float', got "
                          f"{shorten(first_last)}")
    b = check_bits(first_last, "first_last")
    # A float side of the rest stays float: w4af with first/last 8 gives w8af there.
    return LayerBits(weight_bits=None if rest.weight_bits is None else b, act_bits=None if rest.act_bits is None else b)


def uniform_policy(
    model: nn.Module,
    spec: str,
    *,
    first_last: int | str | None = 8,
    model_name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Policy:
    """The same bits for every quantizable layer, with a rule for the first and last layer.

    Args:
        model: The model whose layers the policy covers.
        spec: ``w<bits>a<bits>``, e.g. ``"w4a8"``; ``f`` for float.
        first_last: Bits of the first and last layer in execution order: an integer (default 8, the common
            practice), ``"same"`` for no exception, or ``"float"`` to keep them unquantized.
        model_name: Recorded in the policy's ``model`` field.
        input_shape: Per-sample input shape, when the model has no ``input_shape`` attribute.
    """
    from .costs import policy_cost
    from .layers import quantizable_layers

    rest = parse_uniform_spec(spec)
    edge = _first_last_bits(first_last, rest)
    infos = quantizable_layers(model, input_shape)
    edges = {infos[0].name, infos[-1].name}
    layers = {li.name: (edge if li.name in edges else rest) for li in infos}
    cost = policy_cost(infos, layers)
    fl = "same" if first_last is None else first_last
    provenance = {
        "method": "uniform",
        "spec": spec.lower(),
        "first_last": fl,
        "cost": cost.to_dict(per_layer=False),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    return Policy(layers=layers, model=model_name, provenance=provenance)
