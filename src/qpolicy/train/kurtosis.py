"""KURE: kurtosis regularization (Shkolnik et al., "Robust Quantization: One Model to Rule Them All", NeurIPS 2020),
a loss term of the training engine.

``lambda * mean over layers l of (Kurt[W_l] - K_T)^2`` with ``Kurt[W] = E[((W - mu) / sigma)^4]`` (the population
standardized fourth moment) and ``K_T = 1.8``, the kurtosis of a uniform distribution (normal: 3, Laplace: 6).
Uniform-like weights spread over their range instead of piling up at zero, so a quantizer's grid is used evenly
and its step size matters less: one trained model tolerates many bit-widths and step-size errors.

As in the co-authors' prototype the term covers every ``Conv2d`` weight except the first layer's; ``bn_folded``
regularizes each convolution's weight as BatchNorm folding would deploy it (``W * gamma / sqrt(var + eps)`` per
output channel, with the running variance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .._validate import require_numbers
from ..errors import ConfigError

__all__ = ["KurtosisConfig", "KurtosisTerm", "kurtosis", "kure_layers", "layer_kurtosis", "UNIFORM_KURTOSIS"]

UNIFORM_KURTOSIS = 1.8


def kurtosis(w: torch.Tensor) -> torch.Tensor:
    """The population kurtosis ``E[((w - mu) / sigma)^4]`` of all elements of ``w`` (differentiable)."""
    w = w.reshape(-1).float()
    z = (w - w.mean()) / w.std(unbiased=False).clamp_min(1e-12)
    return (z ** 4).mean()


def kure_layers(model: nn.Module) -> list[str]:
    """The layers KURE regularizes by default: every ``Conv2d`` but the first in execution order."""
    from ..layers import quantizable_layers

    return [li.name for li in quantizable_layers(model)
            if isinstance(model.get_submodule(li.name), nn.Conv2d)][1:]


@dataclass(frozen=True, kw_only=True)
class KurtosisConfig:
    """KURE settings.

    Args:
        lam: Weight of the term (the paper and prototype: 1.0); 0 disables it.
        target: Target kurtosis K_T (1.8: uniform).
        bn_folded: Regularize BatchNorm-folded weights.
        layers: Layer names (default: every Conv2d but the first).
    """

    lam: float = 1.0
    target: float = UNIFORM_KURTOSIS
    bn_folded: bool = False
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        require_numbers(self, ("lam",), positive=False, message="a finite number >= 0 (e.g. 1.0)")
        require_numbers(self, ("target",), positive=True)
        if self.layers is not None and (not isinstance(self.layers, tuple) or not all(
                isinstance(n, str) and n for n in self.layers)):
            raise ConfigError("layers must be a tuple of layer names")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


class KurtosisTerm:
    """The KURE loss term ``term(model, x, y, logits)`` of :mod:`qpolicy.train` for ``model``'s layers."""

    def __init__(self, model: nn.Module, config: KurtosisConfig | None = None, *,
                 input_shape: Sequence[int] | None = None):
        self.config = c = config or KurtosisConfig()
        names = list(c.layers) if c.layers is not None else kure_layers(model)
        known = {n for n, _ in model.named_modules()}
        bad = [n for n in names if n not in known or not hasattr(model.get_submodule(n), "weight")]
        if bad:
            from ..errors import shorten

            raise ConfigError(f"kurtosis layers not in the model (or without weights): {shorten(bad[:5])}")
        if not names:
            raise ConfigError("no layer to regularize: KURE needs at least one weight layer")
        self.names = names
        self.bn: dict[str, nn.Module] = {}
        if c.bn_folded:
            from ..layers import model_input_shape, quantizable_layers
            from ..sensitivity._common import bn_after

            layers = [li for li in quantizable_layers(model) if li.name in set(names)]
            x = torch.zeros(2, *model_input_shape(model, tuple(input_shape) if input_shape else None),
                            device=next(model.parameters()).device)
            self.bn = bn_after(model, layers, x)

    def weight(self, model: nn.Module, name: str) -> torch.Tensor:
        w = model.get_submodule(name).weight
        bn = self.bn.get(name)
        if bn is None:
            return w
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return w * scale.view(-1, *([1] * (w.dim() - 1)))

    def values(self, model: nn.Module) -> dict[str, float]:
        """Each regularized layer's current kurtosis."""
        with torch.no_grad():
            return {n: float(kurtosis(self.weight(model, n))) for n in self.names}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        terms = torch.stack([(kurtosis(self.weight(model, n)) - c.target) ** 2 for n in self.names])
        return c.lam * terms.mean()


def layer_kurtosis(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """The kurtosis of each named layer's weight (default: every quantizable layer)."""
    from ..layers import quantizable_layers

    names = list(names) if names is not None else [li.name for li in quantizable_layers(model)]
    with torch.no_grad():
        return {n: float(kurtosis(model.get_submodule(n).weight)) for n in names}
