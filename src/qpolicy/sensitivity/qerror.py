"""``qerror``: relative output error of each layer quantized alone.

For layer l and width b, the damage is ``||f_l(Q_b(.)) - f_l(.)||^2 / ||f_l(.)||^2`` on the layer's real inputs
from calibration batches, with the weights (or the input activations) quantized as apply_policy would (MSE clipping),
and, where the layer feeds a BatchNorm and PTQ re-estimates it (``bn_reestimate``), the quantized output taken
through that re-estimation (:func:`~qpolicy.sensitivity._common.bn_matched`).
Cheap: one forward pass captures the inputs, then each (layer, bits) costs one layer evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._modes import eval_mode
from ._common import batches_of, bn_after, bn_matched, capture_inputs, layer_forward, quantize_act, quantize_weight
from .base import METRICS, BatchMetric

__all__ = ["QErrorMetric"]


@METRICS.register("qerror")
@dataclass(kw_only=True)
class QErrorMetric(BatchMetric):
    """Args: batches: calibration batches whose layer inputs are used."""

    name: str = "qerror"

    @torch.no_grad()
    def score(self, model, calib, *, layers, bits, seed):
        # no copy needed: the model only runs forward in eval mode, with hooks removed afterwards
        m = model
        device = next(m.parameters()).device
        xs = [x for x, _ in batches_of(calib, self.batches, device)]  # model inputs (the loss is not used)
        with eval_mode(m):
            inputs = capture_inputs(m, layers, xs)
        followed = bn_after(m, layers, xs[0]) if self.bn_reestimate else {}
        weight, act = {}, {}
        for li in layers:
            mod = m.get_submodule(li.name)
            x = inputs.get(li.name)
            if x is None:  # never called in the forward pass: quantizing it cannot hurt
                weight[li.name] = act[li.name] = {b: 0.0 for b in bits}
                continue
            y = layer_forward(mod, x, mod.weight)
            energy = float(y.pow(2).mean()) or 1.0
            q = self.quantizer

            def err(y_q, y=y, bn=li.name in followed, energy=energy):
                return float(((bn_matched(y_q, y) if bn else y_q) - y).pow(2).mean()) / energy

            weight[li.name] = {b: err(layer_forward(mod, x, quantize_weight(mod.weight, b, q))) for b in bits}
            act[li.name] = {b: err(layer_forward(mod, quantize_act(x, b, seed, q), mod.weight)) for b in bits}
        return weight, act
