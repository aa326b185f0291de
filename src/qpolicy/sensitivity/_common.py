"""Helpers shared by metrics: capture layer inputs, quantize one tensor the way apply_policy would."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..layers import LayerInfo
from ..quant.primitives import fake_quantize, mse_scale, scale_from_absmax
from ..task import call, cut, move, task_of

__all__ = ["frozen_copy", "batches_of", "capture_inputs", "quantize_weight", "quantize_act", "act_scale",
           "layer_forward", "bn_after", "bn_matched", "bn_stats"]

_ACT_SAMPLE = 2**16


def frozen_copy(model: nn.Module, layers: Sequence[LayerInfo]) -> tuple[nn.Module, dict[str, nn.Module], torch.device]:
    """A private eval-mode copy with every parameter frozen, its quantizable layers by name, and its device.
    Gradient metrics change requires_grad and hook intermediate tensors, so they work on a copy."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, {li.name: m.get_submodule(li.name) for li in layers}, next(m.parameters()).device


def batches_of(calib: Iterable[Any], n: int, device: torch.device) -> list[tuple[Any, Any]]:
    """``(model inputs, batch)`` of the first ``n`` batches of ``calib``, on ``device``, under its task
    (:func:`qpolicy.task.task_of`)."""
    task = task_of(calib)
    out = []
    for b in itertools.islice(calib, n):
        b = move(b, device)
        out.append((task.inputs(b), b))
    if not out:
        raise ValueError("the calibration data yielded no batch")
    return out


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: Sequence[LayerInfo], xs: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The input of every layer (first call) on the batches ``xs``, concatenated along the batch axis."""
    seen: dict[str, list[torch.Tensor]] = {li.name: [] for li in layers}
    handles = []
    for li in layers:
        mod = model.get_submodule(li.name)

        def hook(m, inputs, out, name=li.name):
            if len(seen[name]) < len(xs):
                seen[name].append(inputs[0].detach())

        handles.append(mod.register_forward_hook(hook))
    try:
        for x in xs:
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items() if v}


def quantize_weight(w: torch.Tensor, bits: int, method: str = "mse") -> torch.Tensor:
    """Per-output-channel symmetric weight quantization as apply_policy does it: MSE clipping (its default) or
    plain min-max ranges (``method="minmax"``)."""
    if method == "minmax":
        scale = scale_from_absmax(w.detach().abs().reshape(w.shape[0], -1).amax(dim=1), bits, True)
    else:
        scale = mse_scale(w, bits, True, axis=0)
    return fake_quantize(w, scale, bits, True, axis=0)


def act_scale(x: torch.Tensor, bits: int, seed: int = 0, method: str = "mse") -> tuple[torch.Tensor, bool]:
    """The per-tensor step size and signedness apply_policy would calibrate for activations ``x``: MSE clipping
    on a seeded subsample (its default) or the min-max range (``method="minmax"``)."""
    signed = bool(x.min() < 0)
    if method == "minmax":
        return scale_from_absmax(x.detach().abs().amax().reshape(1), bits, signed), signed
    flat = x.detach().reshape(-1)
    if flat.numel() > _ACT_SAMPLE:
        idx = torch.randint(flat.numel(), (_ACT_SAMPLE,), generator=torch.Generator().manual_seed(seed))
        flat = flat[idx.to(flat.device)]
    return mse_scale(flat, bits, signed), signed


def quantize_act(x: torch.Tensor, bits: int, seed: int = 0, method: str = "mse") -> torch.Tensor:
    """Per-tensor activation quantization as apply_policy does it (see :func:`act_scale`)."""
    scale, signed = act_scale(x, bits, seed, method)
    return fake_quantize(x, scale, bits, signed)


def layer_forward(mod: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's output for input ``x`` with weight ``w`` in place of its own."""
    if isinstance(mod, nn.Conv2d):
        return mod._conv_forward(x, w, mod.bias)
    return nn.functional.linear(x, w, mod.bias)


@torch.no_grad()
def bn_after(model: nn.Module, layers: Sequence[LayerInfo], x: Any) -> dict[str, nn.Module]:
    """The BatchNorm each layer's output goes into directly (conv -> BN), found by one traced forward on ``x``.
    Layers whose output goes elsewhere first (or nowhere) are left out."""
    # Each output is kept (not just its id) until the trace ends: a freed tensor's id can be given to a later
    # tensor, which would then be taken for that layer's output.
    made: dict[int, tuple[str, torch.Tensor]] = {}
    out: dict[str, nn.Module] = {}
    handles = []
    for li in layers:
        def hook(m, inputs, y, name=li.name):
            made.setdefault(id(y), (name, y))
        handles.append(model.get_submodule(li.name).register_forward_hook(hook))
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            def pre(m, inputs):
                entry = made.get(id(inputs[0]))
                if entry is not None and entry[1] is inputs[0]:
                    out.setdefault(entry[0], m)
            handles.append(bn.register_forward_pre_hook(pre))
    try:
        from .._modes import eval_mode

        with eval_mode(model):
            call(model, cut(x, 2))
    finally:
        for h in handles:
            h.remove()
    return out


def bn_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a layer output ``y`` (N, C, ...), as BatchNorm measures them."""
    dims = [d for d in range(y.dim()) if d != 1]
    return y.mean(dim=dims), y.var(dim=dims, unbiased=False)


def bn_matched(y_q: torch.Tensor, y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """What a quantized layer's output ``y_q`` amounts to, in the float output's units, once the BatchNorm after it
    is re-estimated (as apply_policy does): the BN normalizes ``y_q`` by its own per-channel mean and variance,
    which equals mapping ``y_q`` onto the float output's statistics. (N, C, ...) -> (N, C, ...)."""
    mq, vq = bn_stats(y_q)
    m, v = bn_stats(y)
    shape = (1, -1) + (1,) * (y.dim() - 2)
    return (y_q - mq.view(shape)) * ((v + eps) / (vq + eps)).sqrt().view(shape) + m.view(shape)
