"""Fake-quantization modules: quantizers with (optionally learnable, LSQ) step sizes, and the quantized layers.

``QuantConv2d`` / ``QuantLinear`` are subclasses of ``nn.Conv2d`` / ``nn.Linear`` that keep the parameter names of
the layer they replace (``conv1.weight`` stays ``conv1.weight``), so module names, and therefore policies, mean the
same thing in the float and the quantized model. Activation quantization applies to the layer's **input**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CalibrationError, CheckpointError, ConfigError
from ..registry import Registry
from .primitives import (
    check_bits,
    fake_quantize,
    mse_scale,
    percentile_absmax,
    qrange,
    scale_from_absmax,
)

__all__ = [
    "CALIB_METHODS",
    "CalibConfig",
    "WeightQuantizer",
    "ActQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QUANT_LAYER_TYPES",
    "ACT_QUANTIZERS",
]

CALIB_METHODS = ("minmax", "percentile", "mse")


@dataclass(frozen=True, kw_only=True)
class CalibConfig:
    """How quantizer ranges are calibrated.

    Args:
        weight_method: Clipping rule for weights, per output channel: one of CALIB_METHODS.
        act_method: Clipping rule for activations, per tensor: one of CALIB_METHODS.
        percentile: Percentile of |x| used by the "percentile" method.
        batches: Number of calibration batches whose activations set the activation ranges.
        bn_batches: Number of calibration batches BatchNorm statistics are re-estimated on (more batches give
            less noisy statistics; the forward passes are cheap compared with the range searches).
        samples_per_batch: Activation values kept per layer and batch (a seeded uniform subsample) for the
            percentile and MSE searches; the running min/max always see every value.
        seed: Seed of that subsample.
        act_quantizer: The activation quantizer (``ACT_QUANTIZERS``): "lsq" (a step size set by ``act_method``,
            learnable in QAT) or "batchquant" (a range that follows the batch: :mod:`qpolicy.quant.batchquant`).
        bn_reestimate: Re-estimate BatchNorm running statistics of the weight-quantized model on the calibration
            batches before the activation ranges are measured. Quantizing weights shifts every layer's output
            statistics; the float model's BN statistics no longer fit them, and re-estimating them recovers much
            of the loss at 2-4-bit weights (it changes BN buffers of the quantized copy only). The calibration
            batches should then look like training batches, augmentation included
            (:func:`qpolicy.data.calib_loader`).
    """

    weight_method: str = "mse"
    act_method: str = "mse"
    percentile: float = 99.99
    batches: int = 8
    bn_batches: int = 32
    samples_per_batch: int = 2**17
    seed: int = 0
    bn_reestimate: bool = True
    act_quantizer: str = "lsq"

    def __post_init__(self) -> None:
        ACT_QUANTIZERS.get(self.act_quantizer)  # unknown names: "did you mean"
        for field in ("weight_method", "act_method"):
            value = getattr(self, field)
            if value not in CALIB_METHODS:
                raise ConfigError(f"{field} must be one of {', '.join(CALIB_METHODS)}, got {value!r}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile!r}")
        for field in ("batches", "bn_batches", "samples_per_batch"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")

    @property
    def batches_needed(self) -> int:
        """How many calibration batches ``calibrate_`` reads."""
        return max(self.batches, self.bn_batches if self.bn_reestimate else 0)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Quantizer(nn.Module):
    """Common state: bit-width, signedness, and a step size kept as a parameter (trainable for LSQ)."""

    kind = "lsq"  # the quantizer family, saved with the state: a checkpoint loads only into the same family

    def __init__(self, bits: int, num_scales: int, signed: bool, learnable: bool):
        super().__init__()
        self.bits = check_bits(bits, act=True)
        self.signed = bool(signed)
        self.scale = nn.Parameter(torch.ones(num_scales), requires_grad=learnable)

    @property
    def q_max(self) -> int:
        return qrange(self.bits, self.signed)[1]

    # bits and signedness travel in the state dict, so a checkpoint cannot be loaded into a different policy.
    def get_extra_state(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "kind": self.kind}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("bits") != self.bits:
            got = state.get("bits") if isinstance(state, dict) else state
            raise CheckpointError(f"quantizer state is for {got}-bit, this layer is {self.bits}-bit")
        if state.get("kind", "lsq") != self.kind:
            raise CheckpointError(f"quantizer state is for a {state.get('kind')} quantizer, this layer has "
                                  f"{self.kind}")
        self.signed = bool(state.get("signed", self.signed))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, scales={self.scale.numel()}"


class WeightQuantizer(_Quantizer):
    """Symmetric signed per-output-channel weight quantizer (channel axis 0)."""

    def __init__(self, bits: int, num_channels: int, *, learnable: bool = True):
        super().__init__(bits, num_channels, signed=True, learnable=learnable)

    @torch.no_grad()
    def calibrate_(self, weight: torch.Tensor, config: CalibConfig) -> None:
        """Set the per-channel step sizes from ``weight`` with ``config.weight_method``."""
        w = weight.detach().float().reshape(weight.shape[0], -1)  # (C_out, K)
        if config.weight_method == "minmax":
            scale = scale_from_absmax(w.abs().amax(dim=1), self.bits, True)
        elif config.weight_method == "percentile":
            absmax = torch.quantile(w.abs(), config.percentile / 100.0, dim=1)
            scale = scale_from_absmax(absmax, self.bits, True)
        else:
            scale = mse_scale(w, self.bits, True, axis=0)
        self.scale.copy_(scale.to(self.scale.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        grad_scale = 1.0 / math.sqrt(weight[0].numel() * self.q_max)
        return fake_quantize(weight, self.scale, self.bits, True, axis=0, grad_scale=grad_scale)


class ActQuantizer(_Quantizer):
    """Per-tensor activation quantizer: unsigned when calibration saw no negative value, symmetric otherwise.

    While ``observing`` is true the quantizer passes its input through unchanged and collects statistics; call
    :meth:`finish_calibration_` to turn them into a step size.
    """

    def __init__(self, bits: int, *, learnable: bool = True):
        super().__init__(bits, 1, signed=False, learnable=learnable)
        self.observing = False
        self.enabled = True  # False: pass the input through unchanged (used while BN statistics are re-estimated)
        self._stats: dict[str, Any] | None = None

    def start_calibration_(self, config: CalibConfig) -> None:
        self.observing = True
        gen = torch.Generator().manual_seed(config.seed)
        self._stats = {"min": math.inf, "max": -math.inf, "samples": [], "gen": gen, "config": config}

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        st = self._stats
        assert st is not None  # internal invariant: start_calibration_ ran
        flat = x.detach().float().reshape(-1)
        st["min"] = min(st["min"], float(flat.min()))
        st["max"] = max(st["max"], float(flat.max()))
        k = st["config"].samples_per_batch
        if flat.numel() > k:
            idx = torch.randint(flat.numel(), (k,), generator=st["gen"]).to(flat.device)
            flat = flat[idx]
        st["samples"].append(flat.cpu())

    @torch.no_grad()
    def finish_calibration_(self) -> None:
        """Set ``signed`` and the step size from the collected statistics."""
        st, self._stats, self.observing = self._stats, None, False
        if st is None or not st["samples"]:
            raise CalibrationError("activation quantizer saw no data during calibration")
        config: CalibConfig = st["config"]
        self.signed = st["min"] < 0.0
        samples = torch.cat(st["samples"])
        if config.act_method == "minmax":
            absmax = torch.tensor([max(abs(st["min"]), abs(st["max"]))])
            scale = scale_from_absmax(absmax, self.bits, self.signed)
        elif config.act_method == "percentile":
            scale = scale_from_absmax(percentile_absmax(samples, config.percentile), self.bits, self.signed)
        else:
            scale = mse_scale(samples, self.bits, self.signed)
        self.scale.copy_(scale.reshape(self.scale.shape).to(self.scale.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        if not self.enabled:
            return x
        return self._quantize(x)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized ``x`` (a subclass, such as BatchQuant, changes this and the calibration)."""
        grad_scale = 1.0 / math.sqrt(max(1, x[0].numel()) * self.q_max)
        return fake_quantize(x, self.scale, self.bits, self.signed, grad_scale=grad_scale)


class _QuantLayer:
    """What QuantConv2d and QuantLinear share: the two quantizers and how they wrap the float computation."""

    weight: nn.Parameter
    weight_quant: WeightQuantizer | None
    act_quant: ActQuantizer | None

    def _init_quantizers(self) -> None:
        self.register_module("weight_quant", None)  # type: ignore[attr-defined]
        self.register_module("act_quant", None)  # type: ignore[attr-defined]

    def _adopt(self, src: nn.Module, weight_bits: int | None, act_bits: int | None, learnable: bool,
               act_quantizer: str = "lsq"):
        """Take ``src``'s parameters (the caller passes a copy it owns) and add the quantizers."""
        self.weight, self.bias = src.weight, src.bias
        if weight_bits is not None:
            self.weight_quant = WeightQuantizer(weight_bits, src.weight.shape[0], learnable=learnable)
        if act_bits is not None:
            self.act_quant = ACT_QUANTIZERS.get(act_quantizer)(act_bits, learnable=learnable)
        self.to(src.weight.device)  # type: ignore[attr-defined]
        self.train(src.training)  # type: ignore[attr-defined]
        return self

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fake-quantized input and weight."""
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        return x, w


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weights and input."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._init_quantizers()

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, *, weight_bits: int | None, act_bits: int | None, learnable: bool = True,
        act_quantizer: str = "lsq",
    ) -> QuantConv2d:
        """A quantized layer sharing ``conv``'s parameters (the caller passes a copy it owns)."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device="meta")
        return q._adopt(conv, weight_bits, act_bits, learnable, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return self._conv_forward(x, w, self.bias)


class QuantLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` with fake-quantized weights and input."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._init_quantizers()

    @classmethod
    def from_float(
        cls, linear: nn.Linear, *, weight_bits: int | None, act_bits: int | None, learnable: bool = True,
        act_quantizer: str = "lsq",
    ) -> QuantLinear:
        """A quantized layer sharing ``linear``'s parameters (the caller passes a copy it owns)."""
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        return q._adopt(linear, weight_bits, act_bits, learnable, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return F.linear(x, w, self.bias)


QUANT_LAYER_TYPES = (QuantConv2d, QuantLinear)

# activation quantizers by name (CalibConfig.act_quantizer); BatchQuant registers itself on first lookup
ACT_QUANTIZERS: Registry[type[ActQuantizer]] = Registry("activation quantizer",
                                                        builtins=("qpolicy.quant.batchquant",))
ACT_QUANTIZERS.add("lsq", ActQuantizer)
