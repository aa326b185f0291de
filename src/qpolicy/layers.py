"""Quantizable-layer discovery: which layers a policy covers, and their sizes measured by one traced forward.

torch is imported inside the functions, so the torch-free parts of qpolicy (costs, budgets, search) can use
:class:`LayerInfo` without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._modes import eval_mode
from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["LayerInfo", "quantizable_modules", "quantizable_layers", "model_input_shape"]


@dataclass(frozen=True, kw_only=True)
class LayerInfo:
    """One quantizable layer.

    Attributes:
        name: Module name in ``model.named_modules()``; the key of the layer in a policy.
        kind: "conv", "depthwise", "grouped" or "linear".
        params: Number of weight elements (the bias is kept in float and not counted).
        macs: Multiply-accumulates per input sample, summed over every call in the traced forward.
        in_shape: Input shape of the first call, without the batch dimension (``None`` if never called).
        out_shape: Output shape of the first call, without the batch dimension.
        order: Position in execution order (layers never called come last, in definition order).
        shares_input_with: The earliest layer (execution order) that reads the very same input tensor, if another
            does (branches fed by one tensor: a deployed runtime quantizes that tensor once, so the search ties
            their activation bits). ``None`` for the first reader and for layers with an input of their own.
    """

    name: str
    kind: str
    params: int
    macs: int
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    order: int
    shares_input_with: str | None = None

    @property
    def act_elems(self) -> int:
        """Input activation elements per sample (what an activation quantizer sees)."""
        return math.prod(self.in_shape) if self.in_shape else 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["in_shape"] = list(self.in_shape) if self.in_shape else None
        d["out_shape"] = list(self.out_shape) if self.out_shape else None
        return d


def quantizable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every Conv2d and Linear in definition order (no forward pass)."""
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n]


def _kind(m: nn.Module) -> str:
    from torch import nn

    if isinstance(m, nn.Linear):
        return "linear"
    if m.groups == 1:
        return "conv"
    if m.groups == m.in_channels and m.groups == m.out_channels:
        return "depthwise"
    return "grouped"


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    from torch import nn

    per_out = math.prod(out.shape[1:])  # output elements per sample
    if isinstance(m, nn.Linear):
        return per_out * m.in_features
    kh, kw = m.kernel_size
    return per_out * (m.in_channels // m.groups) * kh * kw


def model_input_shape(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The per-sample input shape: the argument, else the model's ``input_shape`` attribute (zoo models)."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            "the model's input shape is unknown: pass input_shape=(C, H, W) (CLI: --input-shape C,H,W) "
            "or set model.input_shape"
        )
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape must be positive integers, got {shape}")
    return shape


def quantizable_layers(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[LayerInfo]:
    """Every quantizable layer with its size, MACs and shapes, from one forward pass of a single sample: zeros of
    ``input_shape`` (the argument, else ``model.input_shape``), or, for a model whose input is not one tensor (a
    dict, several tensors, token ids), ``model.example_inputs``: one sample's inputs with a batch dimension of 1,
    called as :func:`qpolicy.task.call` does (tuple: positional, dict: keyword).

    The model is left as it was: same parameters, buffers and train/eval mode (the pass runs in eval mode
    under ``torch.no_grad`` and the hooks are removed in ``finally``).

    Returns:
        Layers in execution order.
    """
    import torch

    from .task import call, move

    example = getattr(model, "example_inputs", None) if input_shape is None else None
    shape = None if example is not None else model_input_shape(model, input_shape)
    modules = quantizable_modules(model)
    seen: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    readers: dict[tuple[int, int], str] = {}  # (tensor id, in-place version) -> first layer that read it
    alive: list[torch.Tensor] = []  # keeps the inputs alive during the pass, so ids are not reused

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            rec = seen.get(name)
            if rec is None:
                order.append(name)
                x = inputs[0]
                first = readers.setdefault((id(x), x._version), name)
                alive.append(x)
                seen[name] = {"in": tuple(x.shape[1:]), "out": tuple(out.shape[1:]), "macs": 0,
                              "shares": first if first != name else None}
                rec = seen[name]
            rec["macs"] += _macs(mod, out)

        return hook

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules]
    try:
        with eval_mode(model), torch.no_grad():
            if example is not None:
                call(model, move(example, device))
            else:
                model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # a wrong input shape, in the user's forward
        from .errors import PreflightError, first_line

        if example is not None:
            raise PreflightError(f"the model does not take its example_inputs: {first_line(e)[:300]}") from None
        raise PreflightError(f"the model does not take an input of shape {'x'.join(map(str, shape))} (per sample; "
                             f"--input-shape or model.input_shape): {first_line(e)[:300]}") from None
    finally:
        for h in handles:
            h.remove()

    rank = {n: i for i, n in enumerate(order)}
    unreached = [n for n, _ in modules if n not in rank]
    for i, n in enumerate(unreached):
        rank[n] = len(order) + i
    infos = []
    for n, m in modules:
        rec = seen.get(n)
        infos.append(
            LayerInfo(
                name=n,
                kind=_kind(m),
                params=m.weight.numel(),
                macs=rec["macs"] if rec else 0,
                in_shape=rec["in"] if rec else None,
                out_shape=rec["out"] if rec else None,
                order=rank[n],
                shares_input_with=rec["shares"] if rec else None,
            )
        )
    return sorted(infos, key=lambda li: li.order)
