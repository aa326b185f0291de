"""``validated``: the default search. Cheap candidates, a measured local refinement, and a choice made on the
validation split under the real PTQ.

A metric + ILP policy is only as good as the metric's prediction, and a uniform policy at the same cost is a
strong baseline: on ResNet-20 at the BitOPs of W3A4 every metric's ILP optimum scores below uniform W3A4. So the
default search measures instead of trusting one prediction:

1. **Candidates.** The ILP optimum of each cheap metric's table (``metrics``, default fisher and qerror: about 3 s
   each on ResNet-20), solved again with the table's activation damages scaled by each of ``act_scales`` (the
   balance between a layer's weight and activation damage is the least reliable part of a metric's prediction, and
   at a BitOPs budget it is what decides between W4A3 and W3A4), and the widest uniform policies that meet the
   budget (``uniform_candidates``). Candidates that come out identical are measured once.
2. **Measured score.** Each candidate is quantized with :func:`~qpolicy.quant.apply_policy` (the calibration
   methods the policy will be deployed with, BatchNorm re-estimation included, on fewer batches) and scored on
   ``val_images`` images of the validation split (held out of the training images, never the test split).
3. **Refinement.** From the best candidate, moves of one layer side one step up and another one step down (or one
   step up where the budget has room) that keep the budget and ties, ranked by the metrics' predicted damage
   (their normalized sum), are measured the same way; the best move that lowers the score is taken, until
   ``refine_evaluations`` evaluations are spent. With float as a choice (``float_layers``: a latency budget on a
   CPU where some float kernels beat the integer ones), a move may also switch one layer (with the layers tied to
   it) to float, or a float one back to its widest integer choice.
4. **Fitted candidate.** Every policy measured so far is a data point: each metric's weight and activation
   damages are scaled by non-negative slopes fitted to the measured scores (:mod:`qpolicy.search.fitted`), and that
   table's ILP optimum is measured too. The best score of many noisy measurements is partly the scoring images'
   noise; the fit pools them all. On the held-out models' goal rows its policy ranked 2nd-11th by score, yet on the
   4,000 confirmation images it was above every confirmed candidate in 3 of 8 rows (on ResNet-32 at the BitOPs of
   W4A4 with min-max ranges +1.22 points of top-1 over uniform, where no confirmed candidate passed:
   ``benchmarks/results/fitted_damage.md``), so it is always confirmed, whatever it scored.
5. **Choice.** The ``confirm_candidates`` non-uniform policies with the lowest scores (even when a uniform
   candidate scored lower), and the fitted candidate, are confirmed against the uniform candidates on
   ``confirm_images`` *other* validation images (the score that picked them is biased in their favour, having been
   the best of many noisy measurements; and on the held-out ResNet-32 at the BitOPs of W3A4 with ``ours``, uniform
   scored best on the 1,000 scoring images while the best-scoring candidates were 0.3-0.5 points of top-1 above it
   on the 4,000 others). Every policy confirmed, uniform ones included, is the **PTQ model the policy deploys**:
   the caller's calibration settings on all the batches they read (32 BatchNorm batches by default), not the
   cheaper calibration candidates are scored with (``bn_batches``, 4). Confirming the scored model instead tested
   another model than the one returned, and calibration luck then passed as a gain: on the published ResNet-20
   (choice on the ``select`` half of the test split) at the BitOPs of W4A4 with ``ours``, the fitted candidate
   passed at p = 0.0057 and was -0.72 [-1.28, -0.14] points of top-1 below uniform on the ``report`` half
   (``benchmarks/results/search_quality_resnet20_select.json`` at git 97ffe61). A candidate passes when its
   per-image loss there is lower than each uniform candidate's, significantly (one-sided paired t-test at
   ``confirm_p`` divided by the number confirmed: Bonferroni, so the chance that any policy no better than uniform
   passes stays below ``confirm_p``), and its top-1 there is at least theirs. Of those that pass, the one with the
   lowest loss on the confirmation images is kept (every one that passes beat uniform on its own test, and these
   images are four times the scoring ones); if none passes, the uniform candidate with the best top-1 there is
   returned. Never below uniform is the first requirement of a default; a gain has to show twice. (On the
   held-out ResNet-32 at the BitOPs of W3A3 with ``ours``, the best-scoring candidate failed this test while 7 of
   the 8 best-scoring ones were 0.5-1.0 points above uniform on the test split: confirming only the first threw
   real gains away. A deployed calibration costs about 4 s for ResNet-20 on 2 cores where a scoring one costs 1 s,
   so two candidates and the fitted one are confirmed, and the refinement has 6 evaluations, which keeps the
   search within a minute.)

The score is the validation cross-entropy. The pretrained models were trained on all 50,000 training images,
validation ones included, so their validation top-1 is near 99%: top-1 differences between policies are a handful
of images there, while the loss still moves with every policy (both are recorded). Cost: a few seconds of metrics,
and one calibration plus ``val_images`` forward passes per evaluation (about 2 s each for ResNet-20 on 2 cores
with the defaults), then a deployed calibration and ``confirm_images`` forward passes per confirmed policy (about
5 s each). The bare metric + ILP path (``qpolicy search TABLE``) stays a millisecond re-solve.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._validate import require_ints
from .budget import Budget
from .costs import policy_cost
from .errors import ConfigError, InfeasibleBudgetError
from .evaluate import resolve_device
from .layers import quantizable_layers
from .policy import Policy, versions
from .progress import progress
from .quant.apply import apply_policy
from .quant.fake_quant import CalibConfig
from .search.base import (
    FLOAT_CHOICE,
    STRATEGIES,
    Choice,
    Problem,
    SearchResult,
    build_problem,
    check_budget,
    choice_layer_bits,
    fits,
    ties_hold,
    total_cost,
    zero_table,
)
from .search.baselines import uniform_pairs
from .search.fitted import fit_table, lowest_bits_total
from .sensitivity import METRICS, SensitivityTable, analyze
from .task import Data, batch_size, cut, move, tail, task_of

__all__ = ["SelectConfig", "search_validated", "Candidate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Settings of the validated search (module docs).

    Args:
        metrics: Cheap metrics whose ILP optimum is a candidate, and whose normalized damages rank the moves.
        metric_batches: Batches of 128 training images each metric reads.
        act_scales: Each metric's ILP is also solved with its activation damages multiplied by each of these
            factors (1 is the table as it is). On the held-out ResNet-32 at the BitOPs of W4A4 with min-max ranges,
            fisher's ILP policy scores 1.0 point below uniform on the 5,000 validation images, and 0.9 above it with
            the activation damages doubled.
        bits: Candidate bit-widths.
        uniform_candidates: How many uniform policies within the budget are candidates (widest first).
        refine_evaluations: Evaluations spent on the refinement.
        proposals: Moves measured per refinement round.
        val_images: Validation images that score every policy.
        confirm_images: Further validation images on which the choice is confirmed against the uniform
            candidates (0: no confirmation), each policy's PTQ model calibrated as it will be deployed.
        confirm_p: Significance level of that confirmation (one-sided paired t-test on per-image losses), for all
            the confirmed candidates together.
        confirm_candidates: How many of the best-scoring non-uniform policies are confirmed (with the fitted
            candidate, each test at ``confirm_p`` over their number); of those that pass, the lowest loss on the
            confirmation images wins.
        fitted_candidate: Also measure the ILP optimum of the metrics' damages fitted to every measured score, and
            confirm it whatever it scored (step 4 of the module docs).
        bn_batches: Calibration batches (128 images) for BatchNorm re-estimation while scoring (an average: fewer
            batches than deployment add noise, not bias, which is why the confirmation calibrates as deployed).
        act_batches: Calibration batches for activation ranges while scoring; None (default): as many as the
            deployed calibration (``calib_config.batches``). Min-max and percentile ranges grow with the data they
            see, so a policy scored on 2 batches and deployed with 8 is another PTQ: on ResNet-32 at the BitOPs of
            W4A4 with min-max ranges, fisher + ILP beat uniform by 0.5-0.7 points calibrated on 2 batches and lost
            by 3.5-4.4 on 8.
        act_samples: Activation values per layer the MSE / percentile range search keeps while scoring, spread
            over the ``act_batches`` batches (the running min/max always sees every value).
        seed: Seeds the metrics and the calibration subsample.
    """

    metrics: tuple[str, ...] = ("fisher", "qerror")
    metric_batches: int = 1
    act_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    uniform_candidates: int = 2
    refine_evaluations: int = 6
    proposals: int = 4
    val_images: int = 1000
    confirm_images: int = 4000
    confirm_p: float = 0.05
    confirm_candidates: int = 2
    fitted_candidate: bool = True
    bn_batches: int = 4
    act_batches: int | None = None
    act_samples: int = 2**18
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str) or not isinstance(self.metrics, Sequence):
            raise ConfigError(f"metrics must be a list of metric names, got {self.metrics!r}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "bits", tuple(self.bits))
        if isinstance(self.act_scales, (str, bytes)) or not isinstance(self.act_scales, Sequence) or \
                not self.act_scales or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0
                                           for x in self.act_scales):
            raise ConfigError(f"act_scales must be a non-empty list of positive numbers, got {self.act_scales!r}")
        object.__setattr__(self, "act_scales", tuple(float(x) for x in self.act_scales))
        for m in self.metrics:
            METRICS.get(m)  # unknown names: "did you mean"
        require_ints(self, ("metric_batches", "val_images", "bn_batches", "proposals", "act_samples",
                            "confirm_candidates"), minimum=1)
        if self.act_batches is not None:
            require_ints(self, ("act_batches",), minimum=1)
        require_ints(self, ("uniform_candidates", "refine_evaluations", "confirm_images", "seed"), minimum=0)
        if isinstance(self.confirm_p, bool) or not isinstance(self.confirm_p, (int, float)) or \
                not 0 < self.confirm_p < 1:
            raise ConfigError(f"confirm_p must be a number in (0, 1), got {self.confirm_p!r}")
        if not isinstance(self.fitted_candidate, bool):
            raise ConfigError(f"fitted_candidate must be true or false, got {self.fitted_candidate!r}")
        if not self.metrics and not self.uniform_candidates:
            raise ConfigError("the validated search needs at least one metric or one uniform candidate")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One measured policy: where it came from, its bits and its validation score."""

    source: str
    assignment: Mapping[str, Choice]
    val_loss: float
    val_top1: float
    cost: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "val_loss": self.val_loss, "val_top1": self.val_top1, "cost": dict(self.cost),
                "bits": " ".join(choice_layer_bits(c).short() for c in self.assignment.values())}



def _normalized_damage(tables: Sequence[SensitivityTable]) -> dict[str, dict[Choice, float]]:
    """Sum over metrics of each layer choice's damage, each metric divided by its total damage at the lowest bits
    (so metrics on different scales weigh the same)."""
    out: dict[str, dict[Choice, float]] = {}
    for t in tables:
        total = lowest_bits_total(t)
        for n in t.names:
            d = out.setdefault(n, {})
            for w in t.bits:
                for a in t.bits:
                    d[w, a] = d.get((w, a), 0.0) + (t.weight[n][w] + t.act[n][a]) / total
    return out


def _scale_act(table: SensitivityTable, k: float) -> SensitivityTable:
    """``table`` with every activation damage multiplied by ``k``."""
    if k == 1:
        return table
    return dataclasses.replace(table, act={n: {b: v * k for b, v in d.items()} for n, d in table.act.items()})


def _tied(problem: Problem, name: str, side: int) -> set[str]:
    """``name`` and every layer tied to it on ``side`` (transitively)."""
    group, frontier = {name}, [name]
    while frontier:
        n = frontier.pop()
        for a, b, s in problem.ties:
            if s == side and n in (a, b):
                other = b if n == a else a
                if other not in group:
                    group.add(other)
                    frontier.append(other)
    return group


def _step(problem: Problem, assign: Mapping[str, Choice], name: str, side: int, up: bool) -> dict[str, Choice] | None:
    """``assign`` with layer ``name``'s ``side`` one allowed step up (or down), carried to its tied layers; None when
    there is no such step for every layer of the group."""
    group = _tied(problem, name, side)
    cur = assign[name][side]
    values = sorted({c[side] for n in group for c in problem.choices[n]})
    nxt = [v for v in values if (v > cur if up else v < cur)]
    if not nxt:
        return None
    value = nxt[0] if up else nxt[-1]
    out = dict(assign)
    for n in group:
        c = list(out[n])
        c[side] = value
        if tuple(c) not in problem.choices[n]:
            return None
        out[n] = (c[0], c[1])
    return out


def _float_step(problem: Problem, assign: Mapping[str, Choice], name: str, up: bool) -> dict[str, Choice] | None:
    """``assign`` with layer ``name`` and every layer tied to it switched to float (``up``), or from float back to
    the widest integer choice they all allow; None when that is no change or not allowed for every one of them."""
    group = _tied(problem, name, 0) | _tied(problem, name, 1)
    if up:
        if all(assign[n] == FLOAT_CHOICE for n in group) or not all(FLOAT_CHOICE in problem.choices[n] for n in group):
            return None
        return {**assign, **dict.fromkeys(group, FLOAT_CHOICE)}
    if assign[name] != FLOAT_CHOICE:
        return None
    common = set.intersection(*(set(problem.choices[n]) for n in group)) - {FLOAT_CHOICE}
    if not common:
        return None
    return {**assign, **dict.fromkeys(group, max(common, key=lambda c: (min(c), c[0] + c[1], c[0])))}


def _moves(problem: Problem, assign: Mapping[str, Choice]) -> list[dict[str, Choice]]:
    """Every policy one step up on one layer side (or one layer to float) and, unless the budget has room without
    it, one step down on another (or one float layer back to integer), within budget and ties."""
    free = [(li.name, s) for li in problem.layers for s in (0, 1) if len({c[s] for c in problem.choices[li.name]}) > 1]
    floats = [li.name for li in problem.layers if FLOAT_CHOICE in problem.choices[li.name]
              and len(problem.choices[li.name]) > 1]

    def steps(a: Mapping[str, Choice], up: bool, skip: tuple) -> list[tuple[tuple, dict[str, Choice]]]:
        out = [((n, s), _step(problem, a, n, s, up)) for n, s in free if (n, s) != skip and a[n] != FLOAT_CHOICE]
        out += [((n, "f"), _float_step(problem, a, n, up)) for n in floats if (n, "f") != skip]
        return [(k, m) for k, m in out if m is not None]

    out = []
    for key, up in steps(assign, True, ()):
        if fits(problem, total_cost(problem, up)):
            out.append(up)
            continue
        for _, both in steps(up, False, key):
            if ties_hold(problem, both) and fits(problem, total_cost(problem, both)) and both != dict(assign):
                out.append(both)
    return out


def _uniform_candidates(problem: Problem, k: int) -> list[tuple[str, dict[str, Choice]]]:
    """The ``k`` widest uniform policies within budget (the ``uniform`` strategy's order of pairs)."""
    pairs = uniform_pairs(problem)
    solve = STRATEGIES.get("uniform")
    out: list[tuple[str, dict[str, Choice]]] = []
    for pair in pairs:
        if len(out) >= k:
            break
        narrowed = {n: (cs if len(cs) == 1 else tuple(c for c in cs if c == pair) or cs)
                    for n, cs in problem.choices.items()}
        try:
            assign = solve(dataclasses.replace(problem, choices=narrowed), 0)
        except InfeasibleBudgetError:
            continue
        if all(assign[n] in problem.choices[n] for n in assign) and assign not in [a for _, a in out]:
            out.append((f"uniform {choice_layer_bits(pair).short()}", assign))
    return out


def _same(inputs: Any) -> Any:
    return inputs


class _Scorer:
    """Validation loss and top-1 of a policy under PTQ, with the calibration and validation batches held once."""

    def __init__(self, model: nn.Module, layers, calib: Iterable[Any], val: Iterable[Any], calib_config: CalibConfig,
                 config: SelectConfig, device: str | None):
        self.model, self.layers, self.device = model, layers, device
        n_act = config.act_batches or calib_config.batches  # the deployed count unless told otherwise
        n_cal = max(config.bn_batches if calib_config.bn_reestimate else 0, n_act)
        self.task = task_of(val)
        self.scale = 100.0 if self.task.is_classification else 1.0  # top-1 in percent; another task's metric as is
        cal_task = task_of(calib)
        # the model inputs of the calibration batches, held once (apply_policy calls them as they are): the first
        # n_cal calibrate every scored candidate; all that the deployed PTQ reads (the first batches_needed, as
        # apply_policy and evaluate_policies read them) calibrate the confirmed ones
        held = [cal_task.inputs(b) for b in itertools.islice(calib, max(n_cal, calib_config.batches_needed))]
        self.calib = Data(held[:n_cal], transform=_same)
        self.deployed_calib = Data(held[:calib_config.batches_needed], transform=_same)
        self.deployed_config = calib_config
        if not len(self.calib):
            raise ConfigError("the calibration data yielded no batch")
        n_act = min(n_act, len(self.calib))
        self.config = dataclasses.replace(calib_config, batches=n_act, bn_batches=min(config.bn_batches,
                                                                                      len(self.calib)),
                                          samples_per_batch=max(1, -(-config.act_samples // n_act)))
        want = config.val_images + config.confirm_images
        batches, n = [], 0
        for b in val:
            take = min(batch_size(b), want - n)
            batches.append(cut(b, take))
            n += take
            if n >= want:
                break
        if not n:
            raise ConfigError("the validation data yielded no images")
        self.images = min(n, config.val_images)
        # the confirmation images are the ones after the scoring images (none when the split is that small)
        if self.task.is_classification:  # re-batched by 250 (what the published figures were measured with)
            x_all, y_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            self.val = list(zip(x_all[: self.images].split(250), y_all[: self.images].split(250), strict=True))
            self.confirm = list(zip(x_all[self.images:].split(250), y_all[self.images:].split(250), strict=True))
        else:  # the user's batches as they are, the one across the boundary cut in two
            self.val, self.confirm, seen = [], [], 0
            for b in batches:
                k = batch_size(b)
                head = max(0, min(k, self.images - seen))
                if head:
                    self.val.append(cut(b, head))
                if head < k:
                    self.confirm.append(tail(b, head))
                seen += k
        self.confirm_images = n - self.images
        if self.confirm_images < config.confirm_images:
            log.warning("the validation split has %d images: %d score the candidates and %d (of the %d asked) "
                        "confirm the winner%s", n, self.images, self.confirm_images, config.confirm_images,
                        "; the confirmation step is skipped" if not self.confirm_images else "")
        self.evaluations = 0
        self.memo: dict[tuple, tuple[float, float]] = {}

    def quantized(self, assign: Mapping[str, Choice], *, deployed: bool = False) -> nn.Module:
        """The policy's PTQ model (on the scorer's device, in eval mode), calibrated as every candidate is scored,
        or with ``deployed`` as it will be deployed: the caller's calibration settings on all the batches they
        read, so that the model confirmed is the model the policy gives."""
        policy = Policy(layers={n: choice_layer_bits(c) for n, c in assign.items()})
        calib, config = (self.deployed_calib, self.deployed_config) if deployed else (self.calib, self.config)
        qmodel = apply_policy(self.model, policy, calib=calib, config=config, learnable=False).eval()
        return qmodel.to(resolve_device(self.device))

    @torch.no_grad()
    def _measure(self, assign: Mapping[str, Choice], data, *, deployed: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and score (correctness for a classifier) of the policy's PTQ model on ``data``."""
        qmodel = self.quantized(assign, deployed=deployed)
        dev = resolve_device(self.device)
        losses, correct = [], []
        for b in data:
            b = move(b, dev)
            out = self.task.run(qmodel, b)
            losses.append(self.task.loss(out, b).double().cpu())
            correct.append(self.task.metric(out, b).cpu())
        return torch.cat(losses), torch.cat(correct)

    def __call__(self, assign: Mapping[str, Choice]) -> tuple[float, float]:
        key = tuple(sorted(assign.items()))
        if key not in self.memo:
            self.evaluations += 1
            loss, correct = self._measure(assign, self.val)
            self.memo[key] = (float(loss.mean()), self.scale * float(correct.double().mean()))
        return self.memo[key]

    def confirm_(self, assign: Mapping[str, Choice]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss and correctness on the confirmation images of the policy's deployed PTQ model (each
        policy is confirmed once)."""
        self.evaluations += 1
        return self._measure(assign, self.confirm, deployed=True)


def _score_item(score: _Scorer, item: Sequence[tuple[str, Choice]]) -> tuple[float, float]:
    """One candidate's validation loss and top-1 (a run_many task: the scorer is the shared object)."""
    loss, correct = score._measure(dict(item), score.val)
    return float(loss.mean()), score.scale * float(correct.double().mean())


def _finalists(others: Sequence[Candidate], fitted: Candidate | None, k: int) -> list[Candidate]:
    """The ``k`` non-uniform candidates with the lowest scores, and the fitted one if it is non-uniform and not
    among them."""
    out = sorted(others, key=lambda c: c.val_loss)[:k]
    if fitted is not None and any(c is fitted for c in others) and not any(c is fitted for c in out):
        out.append(fitted)
    return out


def _confirm(score: _Scorer, finalists: Sequence[Candidate], uniform: list[Candidate], p_max: float
             ) -> tuple[Candidate, dict[str, Any]]:
    """Of ``finalists``, those whose per-image loss on the confirmation images is lower than every uniform
    candidate's, by a one-sided paired t-test with p below ``p_max / len(finalists)``, and whose top-1 there is at
    least theirs, pass; the one of them with the lowest loss there is kept. If none passes, the uniform candidate
    with the best top-1 there (then the lowest loss)."""
    from scipy.stats import ttest_rel

    level = p_max / len(finalists)
    base = []
    for c in uniform:
        loss, ok = score.confirm_(c.assignment)
        base.append((c, loss, 100.0 * float(ok.double().mean())))
    uniform_rows = [{"source": c.source, "val_loss": float(loss.mean()), "val_top1": top1} for c, loss, top1 in base]
    tried, passed = [], []
    for cand in finalists:
        mine_loss, mine_ok = score.confirm_(cand.assignment)
        mine_top1 = 100.0 * float(mine_ok.double().mean())
        p = [float(ttest_rel(mine_loss.numpy(), loss.numpy(), alternative="less").pvalue) for _, loss, _ in base]
        ok = all(x < level for x in p) and all(mine_top1 >= top1 for _, _, top1 in base)
        tried.append({"source": cand.source, "val_loss": float(mine_loss.mean()), "val_top1": mine_top1,
                      "p_values": p, "passed": ok, "kept": False})
        if ok:
            passed.append((tried[-1]["val_loss"], len(tried) - 1, cand))
        log.info("confirmation on %d other validation images: %s loss %.4f, top-1 %.2f%% vs %s -> %s",
                 score.confirm_images, cand.source, tried[-1]["val_loss"], mine_top1,
                 ", ".join(f"{r['source']} loss {r['val_loss']:.4f} top-1 {r['val_top1']:.2f}% p {x:.3f}"
                           for r, x in zip(uniform_rows, p, strict=True)), "passed" if ok else "not passed")
    chosen = None
    if passed:
        _, i, chosen = min(passed, key=lambda x: x[:2])  # the lowest confirmation loss (then the best score)
        tried[i]["kept"] = True
    info = {"images": score.confirm_images, "kept": chosen is not None, "p_max": p_max, "level": level,
            "tried": tried, "uniform": uniform_rows}
    if chosen is not None:
        return chosen, info
    top = max(uniform_rows, key=lambda r: (r["val_top1"], -r["val_loss"]))
    return next(c for c in uniform if c.source == top["source"]), info


def search_validated(model: nn.Module, budget: Budget, *, calib: Iterable[Any], val: Iterable[Any],
                     metric_data: Iterable[Any], calib_config: CalibConfig | None = None,
                     config: SelectConfig | None = None, act_bits: Sequence[int] | int | None = None,
                     weight_bits: Sequence[int] | None = None, first_last: int | None = 8, tie: str = "act",
                     device: str | None = None, model_name: str | None = None, workers: int | None = None,
                     address: str | None = None, tables_dir: str | os.PathLike | None = None,
                     float_layers: bool = False) -> SearchResult:
    """The default search (module docs): the best measured policy within ``budget``; ``model`` is not changed.

    Args:
        model: The float model.
        budget: Limits the policy must meet.
        calib: Calibration batches (augmented training images: :func:`qpolicy.data.calib_loader`).
        val: Validation batches ``(x, y)`` (:func:`qpolicy.data.loader` with ``split="val"``), never the test split.
        metric_data: Training batches the metrics read (plain, shuffled training images).
        calib_config: The calibration the policy will be deployed with (default :class:`CalibConfig`: MSE);
            scoring uses its methods with ``config``'s batch counts, and the metrics its quantizer.
        config: :class:`SelectConfig`.
        act_bits, weight_bits, first_last, tie: As in :func:`qpolicy.search`.
        workers, address: Measure the candidates of each round in parallel on Ray (:func:`qpolicy.run_many`;
            the same result as serially).
        tables_dir: Also write the metrics' sensitivity tables here (``METRIC.json``: what ``qpolicy report``
            plots), so that nothing has to analyze the model again.
        float_layers: Let the search also keep any layer in float (as in :func:`qpolicy.search`): the metrics'
            ILP starts and the refinement's moves may take it, and the all-float model is a uniform candidate.
    """
    from .runner import ray_session

    with ray_session(workers, address):
        return _search_validated(model, budget, calib=calib, val=val, metric_data=metric_data,
                                 calib_config=calib_config, config=config, act_bits=act_bits, weight_bits=weight_bits,
                                 first_last=first_last, tie=tie, device=device, model_name=model_name,
                                 workers=workers, address=address, tables_dir=tables_dir, float_layers=float_layers)


_WARNED: set[str] = set()


def warn_if_memorized(model: nn.Module, val: Any) -> bool:
    """Warn (once per model and process) when ``model``'s weights were trained on the validation images ``val``
    reads (``model.sees_validation``: the published CIFAR ResNets); True when it warned."""
    if not getattr(model, "sees_validation", False):
        return False
    split = getattr(getattr(val, "loader", val), "split", None)
    if split not in (None, "val"):
        return False  # e.g. the "select" half of the test split
    name = getattr(model, "zoo_name", None) or type(model).__name__
    if name in _WARNED:
        return False
    _WARNED.add(name)
    log.warning("warning: %s's weights were trained on the validation images (all 50,000 training images): the "
                "search's choices are made on memorized images and may not hold on test; choose on the 'select' half "
                "of the test split (`--select-on select`, figures then on 'report') or use a model trained here",
                name)
    return True


def _search_validated(model, budget, *, calib, val, metric_data, calib_config, config, act_bits, weight_bits,
                      first_last, tie, device, model_name, workers, address, tables_dir, float_layers) -> SearchResult:
    from .runner import run_many

    warn_if_memorized(model, val)
    config = config or SelectConfig()
    calib_config = calib_config or CalibConfig()
    t0 = time.perf_counter()
    layers = quantizable_layers(model)
    # the budget's own checks (feasible, a latency table of this model) before any metric runs
    check_budget(layers, budget, bits=config.bits, weight_bits=weight_bits, act_bits=act_bits, first_last=first_last,
                 tie=tie, float_layers=float_layers)
    quantizer = "minmax" if calib_config.weight_method == "minmax" else "mse"
    tables = []
    for name in config.metrics:
        factory = METRICS.get(name)
        opts = {f.name for f in dataclasses.fields(factory)} if dataclasses.is_dataclass(factory) else set()
        kw = {k: v for k, v in (("batches", config.metric_batches), ("quantizer", quantizer),
                                 ("bn_reestimate", calib_config.bn_reestimate)) if k in opts}
        tables.append(analyze(model, metric_data, metric=factory(**kw), bits=config.bits, seed=config.seed,
                              model_name=model_name))
    metric_seconds = time.perf_counter() - t0
    if tables_dir is not None:
        for t in tables:
            t.save(Path(tables_dir) / f"{t.metric}.json")
    if tables:
        base = tables[0]
    else:  # uniform candidates only: a table of zeros prices the problem
        base = zero_table(layers, config.bits)
    problem = build_problem(base, budget, weight_bits=weight_bits, act_bits=act_bits, first_last=first_last, tie=tie,
                            float_layers=float_layers)
    damage = _normalized_damage(tables) if tables else {li.name: {} for li in layers}

    def predicted(assign: Mapping[str, Choice]) -> float:
        return sum(damage[n].get(c, 0.0) for n, c in assign.items())

    starts: list[tuple[str, dict[str, Choice]]] = []
    # with every layer's activation bits fixed (a size budget at given act bits) the scaled tables have the same
    # optimum, up to the solver's choice among equal ones
    acts_free = any(len({c[1] for c in cs}) > 1 for cs in problem.choices.values())
    for t in tables:
        for k in (config.act_scales if acts_free else (1.0,)):
            p = dataclasses.replace(problem, table=_scale_act(t, k))
            starts.append((f"{t.metric} + ilp" + ("" if k == 1 else f" (act x{k:g})"),
                           STRATEGIES.get("ilp")(p, config.seed)))
    uniform_starts = _uniform_candidates(problem, config.uniform_candidates)
    # a policy found twice is measured once, under its first name (a uniform policy under its uniform name: the
    # confirmation step looks for those)
    seen = {tuple(sorted(a.items())) for _, a in uniform_starts}
    unique = {}
    for source, assign in starts:
        unique.setdefault(tuple(sorted(assign.items())), (source, assign))
    starts = [sa for k, sa in unique.items() if k not in seen] + uniform_starts
    if not starts:
        raise InfeasibleBudgetError("no candidate policy meets the budget")
    score = _Scorer(model, layers, calib, val, calib_config, config, device)
    measured: list[Candidate] = []

    def measure(source: str, assign: dict[str, Choice]) -> Candidate:
        loss, top1 = score(assign)
        c = Candidate(source=source, assignment=assign, val_loss=loss, val_top1=top1,
                      cost={k: v for k, v in total_cost(problem, assign).items()
                            if k in ("size_bytes", "bitops", "latency_ms")})
        measured.append(c)
        log.info("%-22s val loss %.4f, top-1 %.2f%%", source, loss, top1)
        return c

    def prefetch(assigns: Sequence[dict[str, Choice]], desc: str) -> None:
        """Measure the assignments not yet measured, serially or on Ray, into the scorer's memo."""
        todo: dict[tuple, dict[str, Choice]] = {}
        for a in assigns:
            k = tuple(sorted(a.items()))
            if k not in score.memo:
                todo.setdefault(k, a)
        if not todo:
            return
        values = run_many(_score_item, [sorted(a.items()) for a in todo.values()], shared=score, workers=workers,
                          address=address, desc=desc, key=lambda it: repr(it))
        for k, v in zip(todo, values, strict=True):
            score.memo[k] = tuple(v)
        score.evaluations += len(todo)

    prefetch([a for _, a in starts], "candidates")
    for source, assign in starts:
        measure(source, assign)
    best = min(measured, key=lambda c: c.val_loss)
    spent, rounds = 0, 0
    bar = progress(range(config.refine_evaluations), desc="refine", total=config.refine_evaluations)
    bar_iter = iter(bar)
    while spent < config.refine_evaluations:
        moves = [m for m in _moves(problem, best.assignment) if tuple(sorted(m.items())) not in score.memo]
        if not moves:
            break
        moves.sort(key=predicted)
        rounds += 1
        improved = None
        batch = moves[: min(config.proposals, config.refine_evaluations - spent)]
        prefetch(batch, f"refine round {rounds}")
        for m in batch:
            c = measure(f"refine round {rounds}", m)
            spent += 1
            next(bar_iter, None)
            if c.val_loss < (improved or best).val_loss:
                improved = c
        if improved is not None:
            best = improved
        elif len(moves) <= config.proposals:
            break
    for _ in bar_iter:  # close the bar
        pass
    fitted, fitted_info = None, None
    if config.fitted_candidate and tables:
        fit = fit_table(tables, [c.assignment for c in measured], [c.val_loss for c in measured])
        if fit is not None:
            table, slopes = fit
            try:
                assign = STRATEGIES.get("ilp")(dataclasses.replace(problem, table=table), config.seed)
            except InfeasibleBudgetError:
                assign = None
            if assign is not None:
                key = tuple(sorted(assign.items()))
                fitted = next((c for c in measured if tuple(sorted(c.assignment.items())) == key), None)
                if fitted is None:
                    prefetch([assign], "fitted")
                    fitted = measure("fitted + ilp", assign)
                fitted_info = {"slopes": slopes, "source": fitted.source,
                               "bits": " ".join(choice_layer_bits(c).short() for c in assign.values())}
    uniform = [c for c in measured if c.source.startswith("uniform")]
    best_uniform = min(uniform, key=lambda c: c.val_loss) if uniform else None
    confirmation = None
    others = [c for c in measured if c not in uniform]
    if uniform and others and score.confirm_images:
        # the best-scoring non-uniform policies, even when a uniform one scored better on these 1,000 images: the
        # confirmation's 4,000 decide, and its level holds whichever are confirmed
        finalists = _finalists(others, fitted, config.confirm_candidates)
        best, confirmation = _confirm(score, finalists, uniform, config.confirm_p)
        best_uniform = best if best in uniform else best_uniform
    seconds = time.perf_counter() - t0
    layers_bits = {n: choice_layer_bits(c) for n, c in best.assignment.items()}
    cost = policy_cost(layers, layers_bits)
    criterion = "cross-entropy" if score.task.is_classification else "the task's loss_fn"
    selection = {"split": "val", "images": score.images, "criterion": f"{criterion} (lower is better)",
                 "calib": score.config.to_dict(), "evaluations": score.evaluations, "refine_rounds": rounds,
                 "metric_seconds": metric_seconds, "fitted": fitted_info,
                 "best_uniform": best_uniform.to_dict() if best_uniform else None, "confirmation": confirmation,
                 "measured": [c.to_dict() for c in measured]}
    policy = Policy(layers=layers_bits, model=model_name or getattr(model, "zoo_name", None), provenance={
        "method": "search", "metric": "+".join(config.metrics) or "none", "strategy": "validated",
        "budget": budget.to_dict(), "first_last": first_last, "tie": tie, "float_layers": float_layers,
        "seed": config.seed,
        "chosen": best.source, "val_loss": best.val_loss, "val_top1": best.val_top1,
        "predicted_damage": predicted(best.assignment), "cost": cost.to_dict(per_layer=False),
        "search_seconds": seconds, "select": config.to_dict(), "selection": selection,
        "predicted_latency_ms": budget.predicted_latency_ms(layers_bits),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "versions": versions()})
    log.info("validated search: %s chosen (val loss %.4f, top-1 %.2f%%) from %d evaluations in %.1f s",
             best.source, best.val_loss, best.val_top1, score.evaluations, seconds)
    return SearchResult(policy=policy, cost=cost, predicted_damage=predicted(best.assignment), strategy="validated",
                        seconds=seconds, extra={"selection": selection})
