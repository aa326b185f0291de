"""BatchQuant (Bai et al., "Quantized-for-all Architecture Search with Robust Quantizer", NeurIPS 2021): an activation
quantizer whose range follows the batch, so a weight-sharing supernet whose subnets see very different activation
distributions trains stably.

For an input batch ``x`` (N, C, ...):

* range: ``m = mean over channels of min over (batch, space) of x[:, c]`` and ``M`` likewise with max, clamped to
  include 0 (``m <= 0 <= M``); in eval mode the running averages of ``m`` and ``M`` are used instead;
* observer step and zero point on the unsigned b-bit grid: ``s = (M - m) / (2^b - 1)``,
  ``z = clamp(-round(m / s), 0, 2^b - 1)``;
* a learned correction: ``a = softplus_{ln 2}(alpha)`` (1 at ``alpha = 0``, its initial value) scales, ``o`` (0
  initially) offsets: ``q = clamp(round(x a / s + z + o), 0, 2^b - 1)``, output ``(q - z - o) s / a``;
* gradients: straight-through for ``x`` inside the range (zero where clipped), and through ``a`` and ``o``.

The running statistics are set like BatchNorm's: averaged over the calibration batches (``apply_policy`` calls it
with the other activation quantizers), and tracked with momentum while training. Select it with
``CalibConfig(act_quantizer="batchquant")`` (``--act-quantizer batchquant``); weights keep the LSQ quantizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CalibrationError
from .fake_quant import ACT_QUANTIZERS, ActQuantizer, CalibConfig

__all__ = ["BatchQuantizer", "batch_range", "channel_range"]

_BETA = math.log(2.0)  # softplus(0) = 1 with this beta


def channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's (dim 1) min and max over the batch and space."""
    y = x.detach().transpose(0, 1).reshape(x.shape[1], -1) if x.dim() > 1 else x.detach().reshape(1, -1)
    return y.amin(dim=1), y.amax(dim=1)


def batch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchQuant range of a batch: the mean over channels (dim 1) of each channel's min and max."""
    lo, hi = channel_range(x)
    return lo.mean(), hi.mean()


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return (v.round() - v).detach() + v


class BatchQuantizer(ActQuantizer):
    """The BatchQuant activation quantizer (module docs). ``scale`` holds ``alpha`` (the softplus argument)."""

    kind = "batchquant"

    def __init__(self, bits: int, *, learnable: bool = True, momentum: float = 0.1):
        super().__init__(bits, learnable=learnable)
        self.signed = False
        with torch.no_grad():
            self.scale.zero_()  # softplus_{ln 2}(0) = 1
        self.offset = nn.Parameter(torch.zeros(1), requires_grad=learnable)
        self.momentum = momentum
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self._seen = 0  # batches averaged since reset_running_stats (momentum None: a cumulative average)

    def reset_running_stats(self) -> None:
        """Forget the running range (as BatchNorm's method of the same name)."""
        self.running_min.zero_()
        self.running_max.zero_()
        self._seen = 0

    def start_calibration_(self, config: CalibConfig) -> None:
        self.observing = True
        self._stats = {"min": 0.0, "max": 0.0, "batches": 0}

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        st = self._stats
        assert st is not None  # internal invariant: start_calibration_ ran
        lo, hi = batch_range(x)
        st["min"] += float(lo)
        st["max"] += float(hi)
        st["batches"] += 1

    @torch.no_grad()
    def finish_calibration_(self) -> None:
        """Set the running range to the average batch range over the calibration batches."""
        st, self._stats, self.observing = self._stats, None, False
        if st is None or not st["batches"]:
            raise CalibrationError("activation quantizer saw no data during calibration")
        self.running_min.fill_(st["min"] / st["batches"])
        self.running_max.fill_(st["max"] / st["batches"])

    def qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observer step and zero point of the range ``[lo, hi]`` (clamped to include 0)."""
        q_max = 2 ** self.bits - 1
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        s = ((hi - lo) / q_max).clamp_min(1e-8)
        z = (-(lo / s)).round().clamp(0, q_max)
        return s, z

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training-mode range (data-parallel training replaces it with the global batch's)."""
        return batch_range(x)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = self._batch_range(x)
            with torch.no_grad():
                weight = self.momentum if self.momentum is not None else 1.0 / (self._seen + 1)
                self._seen += 1
                self.running_min.lerp_(lo, weight)
                self.running_max.lerp_(hi, weight)
        else:
            lo, hi = self.running_min, self.running_max
        s, z = self.qparams(lo, hi)
        a = F.softplus(self.scale, beta=_BETA)
        q = _round_ste(x * a / s + z + self.offset).clamp(0, 2 ** self.bits - 1)
        return (q - z - self.offset) * s / a

    def extra_repr(self) -> str:
        return f"bits={self.bits}, batchquant, momentum={self.momentum}"



ACT_QUANTIZERS.add("batchquant", BatchQuantizer)
