"""A mixed-precision supernet: every quantizable layer holds all candidate bit-widths over one shared float weight.

Layer l has candidate weight widths ``W_l`` and activation widths ``A_l``, each with its own quantizer (per-channel
weight step sizes, a per-tensor input step size; LSQ-learnable), and architecture parameters ``alpha_w``,
``alpha_a`` mixed by a softmax::

    y = f(sum_i p_a[i] * Q_{A_i}(x),  sum_j p_w[j] * Q_{W_j}(w))      p = softmax(alpha / T)

(the temperature ``T`` is 1 unless the search anneals it, see :meth:`Supernet.set_temperature`).

Conv and Linear are bilinear in (input, weight), so this equals ``sum_ij p_a[i] p_w[j] f(Q_{A_i}(x), Q_{W_j}(w))``:
the expected output over every (weight, act) pair, computed with one convolution per layer (EdMIPS's trick).

A **mask** removes candidates (Shapley players, or a one-hot subnet): masked candidates get weight 0 and the rest
are renormalized; a layer with every candidate of a side masked contributes a zero input (or weight) on that side.
With one candidate left per side the layer is exactly the plain fake-quant layer of :func:`qpolicy.apply_policy`
with the same step sizes, and :meth:`Supernet.subnet` builds that plain model.

The expected cost under alpha (``expected_cost``) treats the weight and act choices of a layer as independent, so
E[BitOPs] = sum_l MACs_l * E[w_l] * E[a_l]; on one-hot mixing weights it is the cost model of ``qpolicy.costs``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers import LayerInfo, quantizable_layers
from ..policy import LayerBits, Policy
from ..quant.apply import calibrate_bn_and_acts_
from ..quant.fake_quant import ACT_QUANTIZERS, CalibConfig, QuantConv2d, QuantLinear, WeightQuantizer
from ..task import move, task_of

__all__ = ["MixedQuantLayer", "Supernet", "build_supernet"]

SIDES = ("weight", "act")


class MixedQuantLayer(nn.Module):
    """A Conv2d/Linear whose weight and input are softmax mixtures of their candidate quantizations.

    Args:
        layer: The float layer (the supernet owns a copy); its weight and bias are the shared parameters.
        weight_bits, act_bits: Candidate widths (a single width fixes that side).
        act_quantizer: The activation quantizer of every candidate ("lsq", "batchquant": ``ACT_QUANTIZERS``).
    """

    def __init__(self, layer: nn.Module, weight_bits: Sequence[int], act_bits: Sequence[int],
                 act_quantizer: str = "lsq"):
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ConfigError(f"a mixed-precision layer wraps Conv2d or Linear, got {type(layer).__name__}")
        self.layer = layer
        self.bits = {"weight": tuple(weight_bits), "act": tuple(act_bits)}
        self.weight_quants = nn.ModuleList(WeightQuantizer(b, layer.weight.shape[0]) for b in weight_bits)
        self.act_quantizer = act_quantizer
        self.act_quants = nn.ModuleList(ACT_QUANTIZERS.get(act_quantizer)(b) for b in act_bits)
        self.alpha_weight = nn.Parameter(torch.zeros(len(weight_bits)))
        self.alpha_act = nn.Parameter(torch.zeros(len(act_bits)))
        # removed candidates (Shapley players, one-hot subnets): plain Python, never trained or saved
        self.keep = {"weight": [True] * len(weight_bits), "act": [True] * len(act_bits)}
        # softmax temperature (plain Python, set by the search's annealing schedule; 1 is the plain softmax)
        self.temperature = 1.0
        self.to(layer.weight.device)

    def alpha(self, side: str) -> nn.Parameter:
        return self.alpha_weight if side == "weight" else self.alpha_act

    def probs(self, side: str) -> torch.Tensor:
        """Mixing weights of one side: softmax of alpha / temperature over the kept candidates, 0 for removed
        ones."""
        keep = self.keep[side]
        alpha = self.alpha(side) if self.temperature == 1.0 else self.alpha(side) / self.temperature
        if all(keep):
            return F.softmax(alpha, dim=0)
        mask = torch.tensor(keep, device=alpha.device)
        if not mask.any():
            return torch.zeros_like(alpha)
        return F.softmax(alpha.masked_fill(~mask, float("-inf")), dim=0)

    def expected_bits(self, side: str) -> torch.Tensor:
        bits = torch.tensor(self.bits[side], dtype=torch.float32, device=self.alpha_act.device)
        return (self.probs(side) * bits).sum()

    def _mix(self, quants: nn.ModuleList, side: str, x: torch.Tensor) -> torch.Tensor:
        p = self.probs(side)  # exactly 1.0 for a lone kept candidate, so a one-hot layer is the plain layer
        terms = [p[i] * q(x) for i, (q, kept) in enumerate(zip(quants, self.keep[side], strict=True)) if kept]
        if not terms:
            return torch.zeros_like(x)
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self._mix(self.act_quants, "act", x)
        wq = self._mix(self.weight_quants, "weight", self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(xq, wq, self.layer.bias)
        return F.linear(xq, wq, self.layer.bias)

    def extra_repr(self) -> str:
        return f"weight_bits={self.bits['weight']}, act_bits={self.bits['act']}"


class Supernet(nn.Module):
    """A copy of a float model with every quantizable layer replaced by a :class:`MixedQuantLayer`.

    Attributes:
        model: The wrapped copy (call the supernet like the model).
        layers: ``LayerInfo`` of the original quantizable layers, in execution order (the cost model's input).
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerInfo], candidates: Mapping[str, tuple[tuple[int, ...],
                                                                                                    tuple[int, ...]]],
                 act_quantizer: str = "lsq"):
        super().__init__()
        self.model = model
        self.layers = tuple(layers)
        self._names = [li.name for li in layers]
        for name in self._names:
            wb, ab = candidates[name]
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    MixedQuantLayer(model.get_submodule(name), wb, ab, act_quantizer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def mixed(self, name: str) -> MixedQuantLayer:
        m = self.model.get_submodule(name)
        assert isinstance(m, MixedQuantLayer)  # internal invariant: built by __init__
        return m

    def mixed_layers(self) -> list[tuple[str, MixedQuantLayer]]:
        return [(n, self.mixed(n)) for n in self._names]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The alphas of every side with more than one candidate."""
        return [m.alpha(s) for _, m in self.mixed_layers() for s in SIDES if len(m.bits[s]) > 1]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for _, m in self.mixed_layers() for p in (m.alpha_weight, m.alpha_act)}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- masks -------------------------------------------------------------------------------------------------
    def players(self) -> list[tuple[str, str, int]]:
        """``(layer, side, bits)`` for every candidate of every side that has a choice: the Shapley players."""
        return [(n, s, b) for n, m in self.mixed_layers() for s in SIDES if len(m.bits[s]) > 1 for b in m.bits[s]]

    def reset_masks(self) -> None:
        for _, m in self.mixed_layers():
            for s in SIDES:
                m.keep[s] = [True] * len(m.bits[s])

    def remove(self, player: tuple[str, str, int]) -> None:
        name, side, bits = player
        m = self.mixed(name)
        m.keep[side][m.bits[side].index(bits)] = False

    def set_policy_masks(self, policy: Policy) -> None:
        """Keep only the policy's candidate on each side (one-hot mixing weights)."""
        for name, m in self.mixed_layers():
            lb = policy[name]
            for side, b in (("weight", lb.weight_bits), ("act", lb.act_bits)):
                if b not in m.bits[side]:
                    raise ConfigError(f"layer {name!r}: {side} bits {b} is not a candidate {m.bits[side]}")
                m.keep[side] = [c == b for c in m.bits[side]]

    # -- alphas, costs, policies -------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """The softmax temperature of every mixed layer (alpha / temperature; 1 is the plain softmax)."""
        return self.mixed(self._names[0]).temperature if self._names else 1.0

    def set_temperature(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"the softmax temperature must be a positive number, got {value!r}")
        for _, m in self.mixed_layers():
            m.temperature = float(value)

    def probabilities(self) -> dict[str, dict[str, dict[int, float]]]:
        """``{layer: {"weight": {bits: p}, "act": {bits: p}}}`` under the current alphas and temperature (no
        masks)."""
        out = {}
        with torch.no_grad():
            for n, m in self.mixed_layers():
                out[n] = {s: {b: float(p) for b, p in zip(m.bits[s], F.softmax(m.alpha(s) / m.temperature, 0),
                                                          strict=True)}
                          for s in SIDES}
        return out

    def alphas(self) -> dict[str, dict[str, dict[int, float]]]:
        with torch.no_grad():
            return {n: {s: {b: float(a) for b, a in zip(m.bits[s], m.alpha(s), strict=True)} for s in SIDES}
                    for n, m in self.mixed_layers()}

    def set_alphas_(self, alphas: Mapping[str, Mapping[str, Mapping[int, float]]]) -> None:
        with torch.no_grad():
            for n, m in self.mixed_layers():
                for s in SIDES:
                    m.alpha(s).copy_(torch.tensor([float(alphas[n][s][b]) for b in m.bits[s]]))

    def expected_cost(self) -> dict[str, torch.Tensor]:
        """Differentiable expected costs under the mixing weights: size_bytes, bitops, weight_bit_sum,
        act_bit_sum (the quantities budgets limit; see the module docs)."""
        from ..costs import COST_KEYS, layer_cost

        info = {li.name: li for li in self.layers}
        zero = torch.zeros((), device=next(self.parameters()).device)
        total = dict.fromkeys(COST_KEYS, zero)
        for n, m in self.mixed_layers():
            # the one cost formula on the expected bits (weights and activations mix independently)
            for k, v in layer_cost(info[n], m.expected_bits("weight"), m.expected_bits("act")).items():
                total[k] = total[k] + v
        return total

    def argmax_policy(self, *, model_name: str | None = None) -> Policy:
        """Per layer and side, the candidate with the largest alpha (DMPQ's rule, before any budget step)."""
        layers = {}
        for n, m in self.mixed_layers():
            pick = {s: m.bits[s][int(torch.argmax(m.alpha(s)))] for s in SIDES}
            layers[n] = LayerBits(weight_bits=pick["weight"], act_bits=pick["act"])
        return Policy(layers=layers, model=model_name, provenance={"method": "argmax"})

    @torch.no_grad()
    def subnet(self, policy: Policy) -> nn.Module:
        """The plain fake-quant model of ``policy`` with this supernet's weights, BatchNorm statistics and the
        chosen candidates' step sizes (what ``apply_policy`` builds, calibrated by the search instead)."""
        plain = copy.deepcopy(self.model)
        for name in self._names:
            m = plain.get_submodule(name)
            lb = policy[name]
            if lb.weight_bits not in m.bits["weight"] or lb.act_bits not in m.bits["act"]:
                raise ConfigError(f"layer {name!r}: {lb.short()} is not among the supernet's candidates")
            cls = QuantConv2d if isinstance(m.layer, nn.Conv2d) else QuantLinear
            q = cls.from_float(m.layer, weight_bits=lb.weight_bits, act_bits=lb.act_bits,
                               act_quantizer=m.act_quantizer)
            wq = m.weight_quants[m.bits["weight"].index(lb.weight_bits)]
            aq = m.act_quants[m.bits["act"].index(lb.act_bits)]
            q.weight_quant.load_state_dict(wq.state_dict())  # step sizes (and running ranges), bits, signedness
            q.act_quant.load_state_dict(aq.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, attr, q)
        return plain.eval()

    @torch.no_grad()
    def calibrate_(self, calib: Iterable[Any], config: CalibConfig | None = None) -> Supernet:
        """Initial step sizes: every weight candidate from the weights, BatchNorm statistics re-estimated on the
        supernet with its (uniform) weight mixture, then every activation candidate from its layer's inputs."""
        config = config or CalibConfig()
        device = next(self.parameters()).device
        task = task_of(calib)
        batches = [move(task.inputs(b), device) for b in itertools.islice(calib, config.batches_needed)]
        if not batches:
            raise ConfigError("the calibration data yielded no batch")
        acts = [q for _, m in self.mixed_layers() for q in m.act_quants]
        for _, m in self.mixed_layers():
            for q in m.weight_quants:
                q.calibrate_(m.layer.weight, config)
        calibrate_bn_and_acts_(self, acts, batches, config)
        return self


def build_supernet(model: nn.Module, *, weight_bits: Sequence[int] = (2, 3, 4, 6, 8),
                   act_bits: Sequence[int] = (2, 3, 4, 6, 8), first_last: int | None = 8,
                   calib: Iterable[Any] | None = None, calib_config: CalibConfig | None = None,
                   input_shape: tuple[int, ...] | None = None) -> Supernet:
    """A calibrated mixed-precision supernet over a copy of ``model`` (which is left untouched).

    Args:
        model: The float model.
        weight_bits, act_bits: Candidate widths of every searched layer.
        first_last: Fix the first and last layer (execution order) at this width on both sides; None searches them.
        calib: Batches for the initial step sizes and BatchNorm statistics (:func:`qpolicy.data.calib_loader`).
        calib_config: Calibration rules; its ``act_quantizer`` is every activation candidate's quantizer.
        input_shape: For models without an ``input_shape`` attribute.
    """
    from ..bits import check_bits

    wb = tuple(sorted({check_bits(b, "weight bits") for b in weight_bits}))
    ab = tuple(sorted({check_bits(b, "act bits") for b in act_bits}))
    if not wb or not ab:
        raise ConfigError("the supernet needs at least one candidate width per side")
    layers = quantizable_layers(model, input_shape)
    if not layers:
        raise ConfigError("the model has no quantizable layer (Conv2d or Linear)")
    edges = {layers[0].name, layers[-1].name} if first_last is not None else set()
    fixed = (check_bits(first_last, "first_last"),) if first_last is not None else ()
    candidates = {li.name: ((fixed, fixed) if li.name in edges else (wb, ab)) for li in layers}
    copy_ = copy.deepcopy(model)
    for p in copy_.parameters():
        p.requires_grad_(True)
    net = Supernet(copy_, layers, candidates, (calib_config or CalibConfig()).act_quantizer)
    net.train(model.training)
    if calib is not None:
        net.calibrate_(calib, calib_config)
    return net
