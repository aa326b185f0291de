"""Cost model of a policy: weight size, BitOPs and average bit-widths, per layer and in total.

Definitions (a float layer counts as 32-bit weights and 32-bit activations):

* size_bytes = sum over layers of params x weight_bits / 8 (weights only; biases and BN stay float and are the
  same for every policy, so they are left out of comparisons);
* bitops = sum over layers of MACs x weight_bits x act_bits (per input sample);
* avg_weight_bits = parameter-weighted mean of weight bits (= 8 x size / size at 8 bits);
* avg_act_bits = mean of activation bits weighted by each layer's input activation elements;
* ``*_rel_w8a8`` = the value divided by the same model's value with every layer at W8A8.

This module is plain arithmetic on :class:`~qpolicy.layers.LayerInfo` records and never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layers import LayerInfo
    from .policy import Policy

__all__ = ["FLOAT_BITS", "LayerCost", "CostReport", "policy_cost", "layer_cost", "w8a8_cost", "COST_KEYS"]

FLOAT_BITS = 32
COST_KEYS = ("size_bytes", "bitops", "weight_bit_sum", "act_bit_sum")


def layer_cost(li: LayerInfo, weight_bits: Any, act_bits: Any) -> dict[str, Any]:
    """The one cost formula: the budgeted quantities of one layer at (weight bits, act bits). The bits may be
    numbers or tensors (the expected bits of a supernet's mixed layer), so the same arithmetic prices a policy,
    a search candidate and a differentiable supernet.

    size_bytes = params x weight_bits / 8; bitops = MACs x weight_bits x act_bits; weight_bit_sum = params x
    weight_bits; act_bit_sum = input activation elements x act_bits.
    """
    return {"size_bytes": li.params * weight_bits / 8, "bitops": li.macs * weight_bits * act_bits,
            "weight_bit_sum": li.params * weight_bits, "act_bit_sum": li.act_elems * act_bits}


def w8a8_cost(layers: Sequence[LayerInfo]) -> dict[str, float]:
    """The same quantities with every layer at W8A8: what relative budgets and ``*_rel_w8a8`` divide by."""
    out = dict.fromkeys(COST_KEYS, 0.0)
    for li in layers:
        for k, v in layer_cost(li, 8, 8).items():
            out[k] += v
    return out


@dataclass(frozen=True, kw_only=True)
class LayerCost:
    """Cost of one layer under a policy (``None`` bits mean float)."""

    name: str
    weight_bits: int | None
    act_bits: int | None
    params: int
    macs: int
    act_elems: int
    size_bytes: float
    bitops: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True)
class CostReport:
    """Totals and per-layer costs of a policy on a model."""

    layers: tuple[LayerCost, ...]
    size_bytes: float
    bitops: int
    avg_weight_bits: float
    avg_act_bits: float
    size_rel_w8a8: float
    bitops_rel_w8a8: float

    def to_dict(self, *, per_layer: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "layers"}
        if per_layer:
            d["layers"] = [lc.to_dict() for lc in self.layers]
        return d

    def summary(self) -> str:
        """One line: size, BitOPs and average bits, with the ratios to W8A8."""
        return (
            f"size {self.size_bytes / 1024:.1f} KiB ({self.size_rel_w8a8:.3f} of W8A8), "
            f"BitOPs {self.bitops / 1e9:.3f} G ({self.bitops_rel_w8a8:.3f} of W8A8), "
            f"avg bits w {self.avg_weight_bits:.2f} / a {self.avg_act_bits:.2f}"
        )


def _bits(b: int | None) -> int:
    return FLOAT_BITS if b is None else b


def policy_cost(layers: Sequence[LayerInfo], policy: Policy | Mapping[str, Any]) -> CostReport:
    """Cost of ``policy`` on the layers of a model.

    Args:
        layers: From :func:`qpolicy.layers.quantizable_layers`.
        policy: A Policy, or a mapping ``name -> (weight_bits, act_bits)``.

    Raises:
        PolicyMismatchError: when the policy and the layers name different layers.
    """
    from .errors import PolicyMismatchError

    entries = policy.layers if hasattr(policy, "layers") else policy
    names = [li.name for li in layers]
    missing = [n for n in names if n not in entries]
    extra = [n for n in entries if n not in set(names)]
    if missing or extra:
        raise PolicyMismatchError(
            f"policy does not match the layers: missing {missing[:5]}, extra {extra[:5]}", missing=missing, extra=extra
        )
    per_layer = []
    for li in layers:
        e = entries[li.name]
        wb, ab = (e.weight_bits, e.act_bits) if hasattr(e, "weight_bits") else tuple(e)
        c = layer_cost(li, _bits(wb), _bits(ab))
        per_layer.append(LayerCost(name=li.name, weight_bits=wb, act_bits=ab, params=li.params, macs=li.macs,
                                   act_elems=li.act_elems, size_bytes=c["size_bytes"], bitops=c["bitops"]))
    size = sum(c.size_bytes for c in per_layer)
    bitops = sum(c.bitops for c in per_layer)
    params = sum(c.params for c in per_layer)
    acts = sum(c.act_elems for c in per_layer)
    ref = w8a8_cost(layers)
    size8, bitops8 = ref["size_bytes"], ref["bitops"]
    return CostReport(
        layers=tuple(per_layer),
        size_bytes=size,
        bitops=bitops,
        avg_weight_bits=8.0 * size / params if params else 0.0,
        avg_act_bits=sum(c.act_elems * _bits(c.act_bits) for c in per_layer) / acts if acts else 0.0,
        size_rel_w8a8=size / size8 if size8 else 0.0,
        bitops_rel_w8a8=bitops / bitops8 if bitops8 else 0.0,
    )
