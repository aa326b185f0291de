"""``fisher``: gradient-weighted output perturbation (a diagonal empirical-Fisher estimate of the loss increase).

For layer l with output y and per-sample loss gradient g = dL/dy: ``damage(b) = sum (g^2 * (y_b - y)^2) / N``, where
y_b is the layer's output with its weights (or its input activations) quantized to b bits as apply_policy would
(and, where the layer feeds a BatchNorm that PTQ re-estimates, taken through that re-estimation: ``bn_reestimate``).
Under the Fisher approximation of the Hessian, this is twice the expected loss increase from quantizing that layer
alone. One forward/backward pass captures every layer's input, output and output gradient; then each
(layer, bits) costs one layer evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..task import batch_size, call, task_of, with_grad
from ._common import batches_of, bn_after, bn_matched, frozen_copy, layer_forward, quantize_act, quantize_weight
from .base import METRICS, BatchMetric

__all__ = ["FisherMetric"]


@METRICS.register("fisher")
@dataclass(kw_only=True)
class FisherMetric(BatchMetric):
    """Args: batches: labelled calibration batches."""

    name: str = "fisher"

    def score(self, model, calib, *, layers, bits, seed):
        m, mods, device = frozen_copy(model, layers)
        weight = {n: dict.fromkeys(bits, 0.0) for n in mods}
        act = {n: dict.fromkeys(bits, 0.0) for n in mods}
        total = 0
        followed: dict | None = None
        task = task_of(calib)
        for x, batch in batches_of(calib, self.batches, device):
            if followed is None:
                followed = bn_after(m, layers, x) if self.bn_reestimate else {}
            seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            handles = []
            for n, mod in mods.items():
                def hook(module, inputs, out, n=n, seen=seen):
                    if n not in seen and out.requires_grad:
                        out.retain_grad()
                        seen[n] = (inputs[0].detach(), out)
                handles.append(mod.register_forward_hook(hook))
            try:
                x = with_grad(x)  # so every layer output is in the graph
                task.loss(call(m, x), batch).sum().backward()  # per-sample gradients dL_i/dy_i
            finally:
                for h in handles:
                    h.remove()
            total += batch_size(batch)
            with torch.no_grad():
                for n, (xin, out) in seen.items():
                    mod, g2, y0 = mods[n], out.grad.pow(2), out.detach()
                    for b in bits:
                        yw = layer_forward(mod, xin, quantize_weight(mod.weight, b, self.quantizer))
                        ya = layer_forward(mod, quantize_act(xin, b, seed, self.quantizer), mod.weight)
                        if n in followed:
                            yw, ya = bn_matched(yw, y0), bn_matched(ya, y0)
                        dw, da = yw - y0, ya - y0
                        weight[n][b] += float((g2 * dw.pow(2)).sum())
                        act[n][b] += float((g2 * da.pow(2)).sum())
        return ({n: {b: v / total for b, v in s.items()} for n, s in weight.items()},
                {n: {b: v / total for b, v in s.items()} for n, s in act.items()})
