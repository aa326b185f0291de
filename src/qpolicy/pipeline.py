"""End-to-end jobs built from the public pieces: PTQ evaluation of a policy, and QAT of a policy.

These are what the CLI's ``evaluate`` and ``finetune`` subcommands call; they read and write the same JSON
artefacts (policy.json, result.json) as the CLI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from ._io import write_json
from .costs import CostReport, policy_cost
from .errors import CheckpointError
from .evaluate import EvalResult, evaluate
from .layers import quantizable_layers
from .policy import LayerBits, Policy
from .qat.finetune import FinetuneConfig, FinetuneResult, check_resume, finetune, load_checkpoint
from .quant.apply import apply_policy
from .quant.fake_quant import CalibConfig

__all__ = ["PolicyEvaluation", "evaluate_policy", "write_evaluation", "policy_label", "QATRun", "finetune_policy",
           "float_policy", "evaluate_front", "evaluate_policies"]

log = logging.getLogger(__name__)


def float_policy(model: nn.Module, *, model_name: str | None = None) -> Policy:
    """The policy that keeps every layer in float (for costs of the float model)."""
    names = [li.name for li in quantizable_layers(model)]
    return Policy(layers={n: LayerBits(weight_bits=None, act_bits=None) for n in names}, model=model_name,
                  provenance={"method": "float"})


@dataclass(frozen=True, kw_only=True)
class PolicyEvaluation:
    """Accuracy and cost of a model under a policy (PTQ, no training)."""

    policy: Policy
    accuracy: EvalResult
    cost: CostReport
    calib: CalibConfig | None
    calib_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.policy.model, "policy": self.policy.to_dict(), "accuracy": self.accuracy.to_dict(),
                "cost": self.cost.to_dict(), "calib": self.calib.to_dict() if self.calib else None,
                "calib_seconds": self.calib_seconds}

    def record(self, *, model: str | None = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The evaluation record (``format: qpolicy.evaluation``) that ``qpolicy evaluate -o`` writes and
        ``qpolicy report`` / :func:`qpolicy.render_report` read; ``data``: what the data was (a
        :meth:`qpolicy.datasets.DataSource.to_dict`)."""
        a = self.accuracy
        return {"format": "qpolicy.evaluation", "version": 1, "model": model or self.policy.model,
                "policy_label": policy_label(self.policy), "top1": a.top1, "metric": a.metric,
                "metric_name": a.metric_name, "loss": a.loss, "correct": a.correct, "total": a.total,
                "eval_seconds": a.seconds, "calib_seconds": self.calib_seconds,
                "calib": self.calib.to_dict() if self.calib else None, "cost": self.cost.to_dict(per_layer=False),
                "policy": self.policy.to_dict(), "data": dict(data) if data else None}


def write_evaluation(path: str | Path, evaluation: PolicyEvaluation, *, model: str | None = None,
                     data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``evaluation``'s record (:meth:`PolicyEvaluation.record`) atomically to ``path``; returns it. Put
    it in a run folder beside policies and sensitivity tables and :func:`qpolicy.render_report` shows it."""
    rec = evaluation.record(model=model, data=data)
    write_json(path, rec)
    return rec


def policy_label(policy: Policy | None) -> str:
    """A short human description of a policy from its provenance ("uniform w4a8 (first/last: 8)", ...)."""
    if policy is None:
        return "float"
    prov = policy.provenance
    if prov.get("method") == "uniform":
        return f"uniform {prov.get('spec')} (first/last: {prov.get('first_last')})"
    if prov.get("method") == "search":
        return f"{prov.get('metric')} + {prov.get('strategy')} policy under {prov.get('budget')}"
    return f"{prov.get('method', 'policy')}"


def evaluate_policy(model: nn.Module, policy: Policy | None, *, test: Iterable[Any], calib: Iterable[Any] | None = None,
                    calib_config: CalibConfig | None = None, device: str | None = None,
                    per_sample: bool = False) -> PolicyEvaluation:
    """Quantize a copy of ``model`` under ``policy`` (None: float), calibrate it, and measure top-1 and cost
    (``per_sample``: keep each test sample's metric, :attr:`qpolicy.EvalResult.per_sample`)."""
    if policy is None:
        policy = float_policy(model, model_name=getattr(model, "zoo_name", None))
        qmodel, calib_config, seconds = model, None, 0.0
    else:
        calib_config = calib_config or CalibConfig()
        t = time.perf_counter()
        qmodel = apply_policy(model, policy, calib=calib, config=calib_config)
        seconds = time.perf_counter() - t
    cost = policy_cost(quantizable_layers(model), policy)
    acc = evaluate(qmodel, test, device=device, per_sample=per_sample)
    return PolicyEvaluation(policy=policy, accuracy=acc, cost=cost, calib=calib_config, calib_seconds=seconds)


@dataclass(frozen=True, kw_only=True)
class QATRun:
    """Before/after accuracy of a fine-tuning run under a policy."""

    policy: Policy
    before: EvalResult
    after: EvalResult
    finetune: FinetuneResult
    cost: CostReport
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**{k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in d.items()},
                "model": self.policy.model}


def finetune_policy(model: nn.Module, policy: Policy, *, train: Iterable[Any], test: Iterable[Any],
                    calib: Iterable[Any] | None, out_dir: str | Path, config: FinetuneConfig | None = None,
                    calib_config: CalibConfig | None = None, resume: bool = False,
                    device: str | None = None) -> tuple[QATRun, nn.Module]:
    """PTQ-calibrate a copy of ``model`` under ``policy``, fine-tune it with checkpoints in ``out_dir``, and
    evaluate before and after. Writes ``policy.json`` and ``result.json`` to ``out_dir``.

    Returns:
        The run record and the fine-tuned quantized model.
    """
    out = Path(out_dir)
    ckpt_path = check_resume(out, resume)  # before any PTQ work
    if resume:  # a broken, foreign or other-policy checkpoint fails here, before the calibration
        extra = load_checkpoint(ckpt_path).get("extra")
        extra = extra if isinstance(extra, dict) else {}
        before_d = extra.get("before")
        if not isinstance(before_d, dict):
            raise CheckpointError(f"{ckpt_path} has no record of the accuracy before fine-tuning")
        saved = extra.get("policy")
        if isinstance(saved, dict) and saved.get("layers") != policy.to_dict()["layers"]:
            raise CheckpointError(f"{ckpt_path} was made under another policy: resume with the run's own "
                                  f"({out / 'policy.json'}) or start a new output folder")
        try:
            before = EvalResult(**before_d)
        except TypeError:
            raise CheckpointError(f"{ckpt_path} has a malformed record of the accuracy before fine-tuning") from None
    qmodel = apply_policy(model, policy, calib=calib, config=calib_config)
    if not resume:
        before = evaluate(qmodel, test, device=device, desc="before")
        policy.save(out / "policy.json")
    log.info("before fine-tuning: %s %.4g", before.metric_name, before.score)
    result = finetune(qmodel, train, config=config, out_dir=out, resume=resume, device=device,
                      extra={"policy": policy.to_dict(), "before": before.to_dict()})
    after = evaluate(qmodel, test, device=device, desc="after")
    run = QATRun(policy=policy, before=before, after=after, finetune=result,
                 cost=policy_cost(quantizable_layers(model), policy), out_dir=str(out))
    write_json(out / "result.json", run.to_dict())
    return run, qmodel


def _evaluate_point(shared: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """One policy's PTQ top-1 (a ``run_many`` task), with its per-sample outcomes when ``shared`` asks."""
    from .stats import pack_outcomes

    keep = shared.get("per_sample", False)
    res = evaluate_policy(shared["model"], Policy.from_dict(item["policy"]), test=shared["test"],
                          calib=shared["calib"], calib_config=shared["calib_config"], device=shared["device"],
                          per_sample=keep)
    out: dict[str, Any] = {"top1": res.accuracy.top1, "eval_seconds": res.accuracy.seconds}
    if keep:
        out["per_sample"] = pack_outcomes(res.accuracy.per_sample)
    return out


def _policy_key(item: dict[str, Any]) -> str:
    """A policy's key in a results file: its bits (a rerun with other policies reuses nothing stale)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(item["policy"]["layers"], sort_keys=True).encode()).hexdigest()[:16] + \
        ("+samples" if item.get("per_sample") else "")


def evaluate_policies(model: nn.Module, policies: Iterable[Policy], *, test: Iterable[Any],
                      calib: Iterable[Any] | None, calib_config: CalibConfig | None = None,
                      device: str | None = None, workers: int | None = None, address: str | None = None,
                      results: str | Path | None = None, stats: Any = None,
                      desc: str = "policies", per_sample: bool = False) -> list[dict[str, Any]]:
    """PTQ top-1 of many policies (``{"top1", "eval_seconds"}`` each, in order): a Pareto front, a random-policy
    study, the columns of a benchmark. ``per_sample`` adds each policy's per-sample outcomes on ``test``
    (``"per_sample"``: :func:`qpolicy.stats.pack_outcomes`, read back with :func:`qpolicy.stats.unpack_outcomes`),
    for paired intervals between policies (:func:`qpolicy.stats.paired_difference_interval`).

    The policies are evaluated by :func:`qpolicy.runner.run_many`: serially, or on Ray with ``workers`` > 1 or an
    ``address`` (the model and the calibration batches are shipped once); ``results`` keeps finished policies so
    that a killed run resumes without recomputing them. The same policy twice is evaluated once.
    """
    import itertools

    from .runner import run_many

    cfg = calib_config or CalibConfig()
    batches = list(itertools.islice(calib, cfg.batches_needed)) if calib is not None else None  # shipped once
    shared = {"model": model, "test": test, "calib": batches, "calib_config": cfg, "device": device,
              "per_sample": per_sample}
    items = [{"policy": p.to_dict(), **({"per_sample": True} if per_sample else {})} for p in policies]
    unique = list({_policy_key(it): it for it in items}.values())
    out = run_many(_evaluate_point, unique, shared=shared, workers=workers, address=address, results=results,
                   key=_policy_key, desc=desc, stats=stats)
    by_key = {_policy_key(it): r for it, r in zip(unique, out, strict=True)}
    return [by_key[_policy_key(it)] for it in items]


def evaluate_front(model: nn.Module, front: Any, *, test: Iterable[Any], calib: Iterable[Any] | None,
                   calib_config: CalibConfig | None = None, device: str | None = None, workers: int | None = None,
                   address: str | None = None, results: str | Path | None = None, stats: Any = None) -> Any:
    """PTQ top-1 of every point of a Pareto front (adds ``top1`` to each point); returns a new front.

    The points go through :func:`evaluate_policies` (serially or on Ray; ``results`` makes a killed run resume).
    """
    from dataclasses import replace

    out = evaluate_policies(model, [Policy.from_dict(pt["policy"]) for pt in front.points], test=test, calib=calib,
                            calib_config=calib_config, device=device, workers=workers, address=address,
                            results=results, stats=stats, desc="pareto")
    points = tuple({**pt, **r} for pt, r in zip(front.points, out, strict=True))
    return replace(front, points=points)
