"""``kl``: how far the network's prediction moves when one layer alone is quantized (end-to-end error).

For layer l and width b, the damage is the mean KL divergence ``KL(p || p_b)`` between the float model's softmax
output p and the output p_b of the same model with only layer l's weights (or only its input activations)
quantized to b bits as apply_policy would (MSE clipping or min-max, ``quantizer``); where the layer feeds a
BatchNorm and PTQ re-estimates BatchNorm (``bn_reestimate``), that BatchNorm's statistics are re-measured on the
quantized layer's output for the duration (the BatchNorms further down keep theirs: a second-order effect).
Unlike ``qerror`` (the error at the layer's own output) it sees how much of that error survives to the prediction,
the signal per-layer sensitivity analysis in AIMET's AMP and similar tools is built on. Cost: two forward passes
per (layer, bits) on the calibration batches (ResNet-20, one batch of 128: about 20 s on 2 CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._modes import eval_mode
from ..errors import ConfigError
from ..quant.primitives import fake_quantize
from ..task import task_of
from ._common import act_scale, batches_of, bn_after, bn_stats, capture_inputs, layer_forward, quantize_weight
from .base import METRICS, BatchMetric

__all__ = ["KLMetric"]


@METRICS.register("kl")
@dataclass(kw_only=True)
class KLMetric(BatchMetric):
    """Args: batches: calibration batches (labels unused); quantizer: "mse" or "minmax"."""

    name: str = "kl"

    @torch.no_grad()
    def score(self, model, calib, *, layers, bits, seed):
        device = next(model.parameters()).device
        if not task_of(calib).is_classification:
            raise ConfigError("the kl metric compares class distributions (softmax of logits): it is for "
                              "classifiers; for another task use fisher, hessian or qerror")
        xs = [x for x, _ in batches_of(calib, self.batches, device)]
        weight = {li.name: dict.fromkeys(bits, 0.0) for li in layers}
        act = {li.name: dict.fromkeys(bits, 0.0) for li in layers}
        with eval_mode(model):
            inputs = capture_inputs(model, layers, xs)  # the activation range is set on all batches at once
            ref = [F.log_softmax(model(x), dim=1) for x in xs]
            n = sum(len(x) for x in xs)

            def divergence() -> float:
                return sum(F.kl_div(F.log_softmax(model(x), dim=1), r, log_target=True, reduction="sum").item()
                           for x, r in zip(xs, ref, strict=True)) / n

            followed = bn_after(model, layers, xs[0]) if self.bn_reestimate else {}

            def scored(mod, name, w, x_in) -> float:
                """The divergence with the BN after ``mod`` (if any) re-measured on the output for (w, x_in)."""
                bn = followed.get(name)
                if bn is None:
                    return divergence()
                saved = bn.running_mean.clone(), bn.running_var.clone()
                try:
                    mean, var = bn_stats(layer_forward(mod, x_in, w))
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                    return divergence()
                finally:
                    bn.running_mean.copy_(saved[0])
                    bn.running_var.copy_(saved[1])

            for li in layers:
                if li.name not in inputs:  # never called: quantizing it cannot hurt
                    continue
                mod = model.get_submodule(li.name)
                x_in = inputs[li.name]
                w0 = mod.weight.data
                try:
                    for b in bits:
                        mod.weight.data = quantize_weight(w0, b, self.quantizer)
                        weight[li.name][b] = scored(mod, li.name, mod.weight.data, x_in)
                finally:
                    mod.weight.data = w0  # the user's tensor itself is put back, never modified
                for b in bits:  # one range from every batch's input, as calibration sets it
                    scale, signed = act_scale(x_in, b, seed, self.quantizer)
                    handle = mod.register_forward_pre_hook(
                        lambda m, a, s=scale, b=b, sg=signed: (fake_quantize(a[0], s, b, sg), *a[1:]))
                    try:
                        act[li.name][b] = scored(mod, li.name, w0, fake_quantize(x_in, scale, b, signed))
                    finally:
                        handle.remove()
        return weight, act
