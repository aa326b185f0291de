"""Adversarial defenses (the six of "David and Goliath"): each gives a float model that is then quantized under
the same policies as the undefended one.

* **train-based** ones train the float model (a recipe on the one training engine, :func:`qpolicy.train.train_float`,
  cached as ``<trained dir>/<model>-<defense>``): PGD adversarial training (``pgd_at``), defensive distillation
  (``distillation``), ensemble adversarial training (``ensemble_at``), Sinkhorn adversarial training
  (``sinkhorn_at``);
* **pre-processing** ones put a pixel-space transform in front of the classifier: feature squeezing (``squeeze``,
  with its detector) and PixelDefend (``pixeldefend``, with a small PixelCNN trained here).

A :class:`DefenseSpec` names its settings (a frozen dataclass with the paper's values as defaults); ``qpolicy
train --defense NAME --defense-option KEY=VALUE`` trains one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError, close_matches
from ...registry import Registry

__all__ = ["DefenseSpec", "DEFENSES", "parse_options", "make_options"]

DEFENSES: Registry[DefenseSpec] = Registry("defense", builtins=(
    "qpolicy.robust.defenses.adversarial", "qpolicy.robust.defenses.distillation",
    "qpolicy.robust.defenses.squeeze", "qpolicy.robust.defenses.pixeldefend"))


def make_options(cls: type, options: dict[str, Any], what: str) -> Any:
    """``cls(**options)`` with one clear line for an unknown key or a value of the wrong type."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in options.items():
        if k not in names:
            near = close_matches(k, names)
            raise ConfigError(f"{what} has no option {k!r} (it has: {', '.join(sorted(names))})"
                              + (f"; did you mean {', '.join(map(repr, near))}?" if near else ""))
        default = names[k].default
        if default is not dataclasses.MISSING and default is not None:
            ok = (isinstance(v, bool) if isinstance(default, bool) else
                  isinstance(v, int) and not isinstance(v, bool) if isinstance(default, int) else
                  isinstance(v, (int, float)) and not isinstance(v, bool) if isinstance(default, float) else
                  isinstance(v, type(default)))
            if not ok:
                raise ConfigError(f"{what} option {k!r} must be {type(default).__name__} (like {default!r}), got "
                                  f"{v!r}")
    return cls(**options)


@dataclass(frozen=True, kw_only=True)
class DefenseSpec:
    """A registered defense.

    Attributes:
        name: Registry name (also the cache variant of a train-based one).
        kind: "train" or "preprocess".
        options: The frozen dataclass of its settings.
        train: Train-based: ``train(model, data, options, *, config, out_dir, resume, device, model_name,
            trained_dir) -> TrainOutcome`` (in place).
        build: Pre-processing: ``build(model, options, *, trained_dir, model_name, data_dir, device) -> nn.Module``
            (a pixel-space transform).
        description: One line for ``qpolicy list defenses``.
        cache_name: What it trains is cached under this name whatever the model (PixelDefend's PixelCNN), instead
            of ``<model>-<name>``.
    """

    name: str
    kind: str
    options: type
    description: str
    train: Callable[..., Any] | None = None
    build: Callable[..., Any] | None = None
    cache_name: str | None = None

    def make_config(self, options: dict[str, Any] | None = None) -> Any:
        return make_options(self.options, dict(options or {}), f"defense {self.name!r}")


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["eps=0.008", "steps=10"]`` -> ``{"eps": 0.008, "steps": 10}`` (ints, floats, true/false, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"a defense option must look like KEY=VALUE, got {item!r}")
        out[key.strip()] = _value(val)
    return out
