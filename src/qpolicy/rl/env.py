"""The bit-allocation environment of HAQ (Wang et al., CVPR 2019), as ARQ uses it: one step per searched side
(weight or activation bits) of each layer, in execution order.

* **State** of a step (normalized to [0, 1] per feature over the episode's steps, as in HAQ): layer
  index, kind (conv 1, depthwise 0.5, linear 0), input channels, output channels, kernel, stride, log params,
  log MACs, input feature-map size, whether the step sets weight (1) or activation (0) bits, and the previous
  action.
* **Action** a in [0, 1] -> the candidate bit-width at position ``floor(a * len(bits))`` (the last for a = 1).
* **Action wall**: when the episode ends, while the policy is over budget, the searched sides are lowered one
  candidate step at a time, in layer order (HAQ's rule), until it fits; it always ends within budget, since the
  environment refuses a budget that even the lowest bits exceed.
* The first and last layer keep ``first_last`` bits (the usual rule), layers that read one tensor share activation
  bits (``tie="act"``: the later reader copies the first, and takes no step of its own).

Plain arithmetic on :class:`~qpolicy.layers.LayerInfo` records through the one cost formula
(:func:`qpolicy.costs.layer_cost`): no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..bits import check_bits
from ..budget import BudgetLimits
from ..costs import COST_KEYS, layer_cost
from ..errors import ConfigError, InfeasibleBudgetError
from ..layers import LayerInfo

__all__ = ["BitEnv", "Step", "STATE_DIM"]

STATE_DIM = 11
_KIND = {"conv": 1.0, "grouped": 0.75, "depthwise": 0.5, "linear": 0.0}


@dataclass(frozen=True)
class Step:
    layer: int  # index into the layers
    side: int  # 0 weight bits, 1 activation bits


def _features(li: LayerInfo, index: int) -> list[float]:
    cin = li.in_shape[0] if li.in_shape else 1
    cout = li.out_shape[0] if li.out_shape else 1
    spatial_in = li.in_shape[-1] if li.in_shape and len(li.in_shape) > 2 else 1
    spatial_out = li.out_shape[-1] if li.out_shape and len(li.out_shape) > 2 else 1
    per_filter = li.params / max(cout * (1 if li.kind == "depthwise" else cin), 1)
    kernel = math.sqrt(per_filter) if li.kind != "linear" else 1.0
    stride = spatial_in / spatial_out if spatial_out else 1.0
    fmap = math.prod(li.in_shape[1:]) if li.in_shape and len(li.in_shape) > 1 else 1
    return [float(index), _KIND.get(li.kind, 1.0), float(cin), float(cout), kernel, stride,
            math.log(max(li.params, 1)), math.log(max(li.macs, 1)), float(fmap)]


class BitEnv:
    """HAQ's environment over ``layers`` under ``limits`` (module docs).

    Args:
        layers: The model's quantizable layers (execution order).
        limits: Absolute budget limits (``Budget.limits(layers)``).
        weight_bits: Candidate weight bits.
        act_bits: Candidate activation bits, or one integer to hold activations fixed (no activation steps).
        first_last: Bits of the first and last layer (weights and activations), or None to search them.
        tie: "act" (default): layers reading one tensor share activation bits; "none": independent.
    """

    def __init__(self, layers: Sequence[LayerInfo], limits: BudgetLimits, *, weight_bits: Sequence[int],
                 act_bits: Sequence[int] | int, first_last: int | None = 8, tie: str = "act"):
        if not layers:
            raise ConfigError("the model has no quantizable layers")
        if tie not in ("act", "none"):
            raise ConfigError(f"tie must be 'act' or 'none' for this search, got {tie!r}")
        self.layers = tuple(layers)
        self.limits = limits
        self.bits = (tuple(sorted({check_bits(b, "weight_bits") for b in weight_bits})),
                     (check_bits(act_bits, "act_bits"),) if isinstance(act_bits, int)
                     else tuple(sorted({check_bits(b, "act_bits") for b in act_bits})))
        if not self.bits[0] or not self.bits[1]:
            raise ConfigError("candidate weight and activation bits must not be empty")
        self.first_last = None if first_last is None else check_bits(first_last, "first_last")
        names = [li.name for li in self.layers]
        self.fixed = {0, len(self.layers) - 1} if self.first_last is not None else set()
        # act side of a later reader of a shared tensor copies its first reader's
        self.copy_act = {i: names.index(li.shares_input_with) for i, li in enumerate(self.layers)
                         if tie == "act" and li.shares_input_with in names}
        self.steps = tuple(Step(i, side) for i in range(len(self.layers)) if i not in self.fixed
                           for side in (0, 1) if len(self.bits[side]) > 1 and not (side == 1 and i in self.copy_act))
        feats = [_features(self.layers[s.layer], s.layer) + [float(s.side == 0)] for s in self.steps]
        lo = [min(col) for col in zip(*feats, strict=True)] if feats else []
        hi = [max(col) for col in zip(*feats, strict=True)] if feats else []
        self._states = [[(v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(f, lo, hi, strict=True)]
                        for f in feats]
        lowest = self.assignment_of({s: 0 for s in self.steps})
        if not self.fits(lowest):
            c = self.cost(lowest)
            over = [k for k in COST_KEYS if getattr(limits, k) is not None and c[k] > getattr(limits, k)]
            raise InfeasibleBudgetError(f"budget cannot be met with the candidate bits: even the lowest bits exceed "
                                        f"{', '.join(over)} (with fixed first/last layers)")
        self.reset()

    @property
    def state_dim(self) -> int:
        return STATE_DIM

    def reset(self) -> list[float]:
        """Start an episode; returns the first state (an empty episode when nothing is searched)."""
        self.t, self.prev, self.choice = 0, 0.0, {}
        return self.state()

    def state(self) -> list[float]:
        if self.t >= len(self.steps):
            return [0.0] * STATE_DIM
        return [*self._states[self.t], self.prev]

    def bits_of(self, side: int, action: float) -> int:
        """The candidate bit-width of ``action`` in [0, 1] (clipped) on ``side`` (0 weight, 1 act)."""
        cands = self.bits[side]
        a = min(max(float(action), 0.0), 1.0)
        return cands[min(int(a * len(cands)), len(cands) - 1)]

    def step(self, action: float) -> tuple[list[float], bool]:
        """Take the action of the current step; returns (next state, episode done)."""
        if self.t >= len(self.steps):
            raise RuntimeError("the episode is over: call reset()")
        s = self.steps[self.t]
        self.choice[s] = self.bits[s.side].index(self.bits_of(s.side, action))
        self.prev = min(max(float(action), 0.0), 1.0)
        self.t += 1
        return self.state(), self.t >= len(self.steps)

    def assignment_of(self, choice: dict[Step, int]) -> dict[str, tuple[int, int]]:
        """Layer name -> (weight bits, act bits) for candidate positions ``choice`` (fixed and tied sides filled)."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.layers)):
            if i in self.fixed:
                out[i] = [self.first_last, self.first_last]
                continue
            out[i] = [self.bits[side][choice.get(Step(i, side), len(self.bits[side]) - 1)] if len(self.bits[side]) > 1
                      else self.bits[side][0] for side in (0, 1)]
        for i, j in self.copy_act.items():
            out[i][1] = out[j][1]
        return {self.layers[i].name: (w, a) for i, (w, a) in out.items()}

    def cost(self, assignment: dict[str, tuple[int, int]]) -> dict[str, float]:
        total = dict.fromkeys(COST_KEYS, 0.0)
        for li in self.layers:
            for k, v in layer_cost(li, *assignment[li.name]).items():
                total[k] += v
        return total

    def fits(self, assignment: dict[str, tuple[int, int]]) -> bool:
        from ..search.base import BUDGET_RTOL

        c = self.cost(assignment)
        return all(getattr(self.limits, k) is None or c[k] <= getattr(self.limits, k) * (1 + BUDGET_RTOL)
                   for k in COST_KEYS)

    def finish(self) -> tuple[dict[str, tuple[int, int]], int]:
        """The episode's policy after the action wall, and how many one-step reductions the wall made."""
        choice = {s: self.choice.get(s, len(self.bits[s.side]) - 1) for s in self.steps}
        lowered = 0
        while not self.fits(self.assignment_of(choice)):
            moved = False
            for s in self.steps:
                if choice[s] > 0:
                    choice[s] -= 1
                    lowered += 1
                    moved = True
                    if self.fits(self.assignment_of(choice)):
                        break
            if not moved:  # unreachable: the lowest bits fit (checked in __init__)
                raise InfeasibleBudgetError("the action wall cannot meet the budget")
        self.choice = choice
        return self.assignment_of(choice), lowered
