"""``hessian``: HAWQ-V2/V3 sensitivity, average Hessian trace x quantization perturbation.

For layer l: ``damage_w(b) = |Tr(H_W)| / n_W * ||Q_b(W) - W||^2`` (Dong et al., HAWQ-V2, 2020), where ``Tr(H_W)`` is
the trace of the Hessian of the cross-entropy loss with respect to the layer's weights, estimated with Hutchinson's
method (``E[v^T H v]`` over Rademacher ``v``, ``samples`` draws, each one Hessian-vector product by double
backpropagation). Activations get the same treatment with the Hessian with respect to the layer's input tensor:
``damage_a(b) = |Tr(H_x)| / n_x * ||Q_b(x) - x||^2``. The absolute value of the trace is used, as in HAWQ.
The estimate is unbiased; its variance falls as 1/samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..task import call, task_of, with_grad
from ._common import batches_of, frozen_copy, quantize_act, quantize_weight
from .base import METRICS, BatchMetric

__all__ = ["HessianMetric"]


@METRICS.register("hessian")
@dataclass(kw_only=True)
class HessianMetric(BatchMetric):
    """Args: batches: calibration batches in the loss; samples: Hutchinson draws."""

    samples: int = 16
    name: str = "hessian"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")

    def score(self, model, calib, *, layers, bits, seed):
        m, mods, device = frozen_copy(model, layers)
        for mod in mods.values():
            mod.weight.requires_grad_(True)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        tr_w = {n: 0.0 for n in mods}
        tr_a = {n: 0.0 for n in mods}
        inputs_seen: dict[str, torch.Tensor] = {}
        task = task_of(calib)
        for x, batch in batches_of(calib, self.batches, device):
            acts: dict[str, torch.Tensor] = {}
            handles = []
            for n, mod in mods.items():
                def pre(module, args, n=n, acts=acts):
                    if n not in acts:
                        acts[n] = args[0]
                handles.append(mod.register_forward_pre_hook(pre))
            try:
                x = with_grad(x)  # so the first layer's input is in the graph too
                loss = task.loss(call(m, x), batch).mean()
            finally:
                for h in handles:
                    h.remove()
            names = list(acts)
            tensors = [mods[n].weight for n in mods] + [acts[n] for n in names]
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            for _ in range(self.samples):
                vs = [(torch.randint(0, 2, t.shape, generator=gen).float() * 2 - 1).to(device) for t in tensors]
                hv = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
                for i, n in enumerate(mods):
                    tr_w[n] += float((hv[i] * vs[i]).sum()) / self.samples
                for j, n in enumerate(names):
                    k = len(mods) + j
                    tr_a[n] += float((hv[k] * vs[k]).sum()) / self.samples
            for n in names:
                inputs_seen.setdefault(n, acts[n].detach())
        weight, act, q = {}, {}, self.quantizer
        with torch.no_grad():
            for n, mod in mods.items():
                w = mod.weight.detach()
                avg_w = abs(tr_w[n]) / w.numel()
                weight[n] = {b: avg_w * float((quantize_weight(w, b, q) - w).pow(2).sum()) for b in bits}
                xin = inputs_seen.get(n)
                if xin is None:
                    act[n] = {b: 0.0 for b in bits}
                    continue
                avg_a = abs(tr_a[n]) / xin.numel()
                act[n] = {b: avg_a * float((quantize_act(xin, b, seed, q) - xin).pow(2).sum()) for b in bits}
        return weight, act
