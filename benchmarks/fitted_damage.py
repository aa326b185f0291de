"""Could a damage model fitted on the evaluations the default search already made, with pairwise interaction terms,
point to better candidates? (Issue 22 suggests it.) Validation images decide; the test split is only reported.

For each goal row of stored ``search_quality`` runs on held-out models (``--inputs``), the policies the default
search measured (``selection.measured``: its ILP starts, the uniform candidates and its refinement, each with its
cross-entropy on the 1,000 scoring images) are the data. Features of a policy, from the search's own two metric
tables (fisher and qerror, one batch of 128 training images, the row's quantizer and BatchNorm rule), each metric
divided by its total damage at the lowest bits as the search divides it:

* ``W_m``, ``A_m``: the sum over layers of metric ``m``'s weight damage and activation damage at the policy's bits;
* ``P_m``: the sum over consecutive quantizable layers of the product of their damages (weight + activation): the
  pairwise term of a chain, where one layer's quantization error reaches the next.

Four models of the scoring loss are compared by leave-one-out error (each measured policy predicted by the model
fitted on the others): a constant; the search's own ranking (the sum of both metrics, one slope); the four sides
(``W_m``, ``A_m`` with free slopes); the four sides and the two pairwise terms. A model that cannot predict a
policy it was not fitted on cannot point to a better one.

The four-side model is also fitted with non-negative slopes on all the measured policies (the default search's own
fit, :func:`qpolicy.search.fitted.fit_table`), and the ILP optimum of its table within the row's budget is
measured: on the scoring images (against the best policy the search measured), on
the 4,000 other validation images the search's confirmation reads (against uniform, paired one-sided t-test on the
per-image loss, and against the best of the confirmed candidates) and on the test split (paired 95% interval).

    python benchmarks/fitted_damage.py [--inputs results/search_quality_resnet20_heldout.json,...]
        [--name fitted_damage]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from _common import RESULTS, md_table, timed_log, write
from search_quality import BITS, GOALS, QUANTIZERS, row_budget

import qpolicy as qp
from qpolicy.pipeline import evaluate_policies
from qpolicy.policy import parse_uniform_spec
from qpolicy.search.fitted import fit_table, lowest_bits_total, side_features
from qpolicy.select import SelectConfig, _Scorer  # the default search's own scoring, so the figures are its figures
from qpolicy.sensitivity import METRICS, SensitivityTable
from qpolicy.stats import paired_difference_interval, unpack_outcomes, verdict

METRIC_NAMES = ("fisher", "qerror")  # the default search's metrics (SelectConfig().metrics)
FEATURES = ("W_fisher", "A_fisher", "W_qerror", "A_qerror", "P_fisher", "P_qerror")
MODELS = {  # name -> columns of FEATURES (an intercept is always fitted)
    "constant": (),
    "metrics' sum": "sum",  # the search's own ranking: W + A of both metrics, one slope
    "4 sides": (0, 1, 2, 3),
    "4 sides + pairs": (0, 1, 2, 3, 4, 5),
}


def pair_terms(tables: Sequence[SensitivityTable], assign: Mapping[str, tuple[int, int]]) -> list[float]:
    """``P_m`` for each table (module docs): the sum over consecutive layers of the product of their normalized
    damages (weight + activation) at ``assign``'s bits."""
    out = []
    for t in tables:
        per = np.array([t.weight[n][w] + t.act[n][a] for n, (w, a) in assign.items()]) / lowest_bits_total(t)
        out.append(float((per[:-1] * per[1:]).sum()))
    return out


def features(tables: Sequence[SensitivityTable], assign: Mapping[str, tuple[int, int]]) -> list[float]:
    """The columns of ``FEATURES``: the default search's own side features, then the pairwise terms."""
    return side_features(tables, assign) + pair_terms(tables, assign)


def design(X: np.ndarray, cols) -> np.ndarray:
    """The model's columns of ``X`` (module ``MODELS``) with an intercept."""
    if cols == "sum":
        z = X[:, :4].sum(1, keepdims=True)
    else:
        z = X[:, list(cols)]
    return np.c_[np.ones(len(X)), z]


def loo_rmse(X: np.ndarray, y: np.ndarray, cols) -> float:
    """Root mean square of the leave-one-out residuals of a least-squares fit of ``y`` on ``design(X, cols)``."""
    A = design(X, cols)
    res = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        res.append(y[i] - A[i] @ coef)
    return float(np.sqrt(np.mean(np.square(res))))


def assignment(policy: qp.Policy) -> dict[str, tuple[int, int]]:
    return {n: (b.weight_bits, b.act_bits) for n, b in policy.layers.items()}


def run_row(model, name: str, rec: Mapping, *, tables, calib, val, test, log) -> dict:
    from scipy.stats import ttest_rel

    label, q = rec["budget"], rec["quantizer"]
    names = [li.name for li in qp.quantizable_layers(model)]
    measured = rec["policies"]["default"]["provenance"]["selection"]["measured"]
    pols = [[parse_uniform_spec(b) for b in c["bits"].split()] for c in measured]
    y = np.array([c["val_loss"] for c in measured])
    assigns = [{n: (b.weight_bits, b.act_bits) for n, b in zip(names, p, strict=True)} for p in pols]
    X = np.array([features(tables, a) for a in assigns])
    loo = {m: loo_rmse(X, y, cols) for m, cols in MODELS.items()}
    table, slopes = fit_table(tables, assigns, list(y))
    uni, budget = row_budget(model, name, label)
    policy = qp.search(table, budget, act_bits=rec["act_bits"], first_last=8, model_name=name).policy
    score = _Scorer(model, qp.quantizable_layers(model), calib, val, QUANTIZERS[q], SelectConfig(), None)
    best = int(np.argmin(y))
    again, _ = score(assigns[best])
    if abs(again - y[best]) > 1e-4:  # the stored run and this code must score alike, or the fit means nothing
        raise RuntimeError(f"{label} {q}: the best measured policy scores {again:.5f} now, {y[best]:.5f} when stored")
    loss, top1 = score(assignment(policy))
    c_loss, c_ok = score.confirm_(assignment(policy))
    u_loss, u_ok = score.confirm_(assignment(uni))
    conf = rec["confirmation"]
    evals = evaluate_policies(model, [uni, policy], test=test, calib=calib, calib_config=QUANTIZERS[q],
                              per_sample=True, desc=f"{label} {q}")
    a, b = (unpack_outcomes(r["per_sample"]) for r in (evals[1], evals[0]))
    ci = paired_difference_interval(a, b, scale=100.0)
    goal = GOALS[label, q]
    out = {"model": name, "budget": label, "quantizer": q, "goal": goal, "measured": len(y),
           "loss_sd": float(y.std()), "loo_rmse": loo, "slopes": dict(zip(FEATURES[:4], slopes, strict=True)),
           "new_policy": " ".join(b.short() for b in policy.layers.values()) not in {c["bits"] for c in measured},
           "bits": " ".join(b.short() for b in policy.layers.values()),
           "scoring": {"fitted_loss": loss, "fitted_top1": top1, "best_measured_loss": float(y[best]),
                       # its rank by scoring loss among the measured non-uniform policies and itself
                       "fitted_rank": 1 + sum(c["val_loss"] < loss for c in measured
                                              if not c["source"].startswith("uniform")),
                       "non_uniform": sum(not c["source"].startswith("uniform") for c in measured)},
           "confirm": {"images": score.confirm_images, "fitted_loss": float(c_loss.mean()),
                       "fitted_top1": 100.0 * float(c_ok.double().mean()), "uniform_loss": float(u_loss.mean()),
                       "uniform_top1": 100.0 * float(u_ok.double().mean()),
                       "p_vs_uniform": float(ttest_rel(c_loss.numpy(), u_loss.numpy(), alternative="less").pvalue),
                       "best_confirmed_top1": max(t["val_top1"] for t in conf["tried"])},
           "test": {"uniform": evals[0]["top1"], "fitted": evals[1]["top1"],
                    "margin": evals[1]["top1"] - evals[0]["top1"], "ci": ci,
                    "verdict": verdict(ci, goal, inclusive=True), "default_margin": rec["margin"]},
           "policies": {"uniform": uni.to_dict(), "fitted": policy.to_dict()},
           "per_sample": {"uniform": evals[0]["per_sample"], "fitted": evals[1]["per_sample"]}}
    log(f"{name} {label} {q}: LOO rmse " + ", ".join(f"{k} {v:.4f}" for k, v in loo.items()) +
        f"; fitted + ILP: scoring loss {loss:.4f} (best measured {y[best]:.4f}), other val top-1 "
        f"{out['confirm']['fitted_top1']:.2f} vs uniform {out['confirm']['uniform_top1']:.2f}, test margin "
        f"{out['test']['margin']:+.2f}")
    return out


def render(records: list[dict]) -> tuple[str, str]:
    rows = []
    for r in records:
        lo, hi = r["test"]["ci"] or (float("nan"), float("nan"))
        cf, sc = r["confirm"], r["scoring"]
        rows.append([r["model"], r["budget"], r["quantizer"], r["measured"], f"{r['loss_sd']:.4f}",
                     *(f"{r['loo_rmse'][m]:.4f}" for m in MODELS),
                     f"{sc['fitted_loss'] - sc['best_measured_loss']:+.4f} (rank {sc['fitted_rank']})",
                     f"{cf['fitted_top1'] - cf['uniform_top1']:+.2f} (p {cf['p_vs_uniform']:.3f})",
                     f"{cf['best_confirmed_top1'] - cf['uniform_top1']:+.2f}",
                     f"{r['test']['margin']:+.2f} [{lo:+.2f}, {hi:+.2f}]", f">= +{r['goal']:g}: {r['test']['verdict']}",
                     f"{r['test']['default_margin']:+.2f}"])
    table = md_table(["model", "budget", "quantizer", "measured policies", "sd of their scoring loss",
                      *(f"LOO rmse: {m}" for m in MODELS), "fitted + ILP: scoring loss - best measured (its rank)",
                      "fitted + ILP: other validation top-1 - uniform", "best confirmed candidate - uniform (same)",
                      "fitted + ILP: test margin [95% CI]", "goal: verdict", "default search's test margin"], rows)
    pair_worse = sum(r["loo_rmse"]["4 sides + pairs"] > r["loo_rmse"]["4 sides"] for r in records)
    beats_const = sum(min(r["loo_rmse"][m] for m in MODELS if m != "constant") < r["loo_rmse"]["constant"]
                      for r in records)
    better_score = sum(r["scoring"]["fitted_loss"] < r["scoring"]["best_measured_loss"] for r in records)
    above = sum(r["confirm"]["fitted_top1"] > r["confirm"]["best_confirmed_top1"] for r in records)
    notes = ("A damage model fitted on the evaluations the default search already made (module docs of "
             "`benchmarks/fitted_damage.py`), on the goal rows of the stored `search_quality` runs. 'LOO rmse': "
             "leave-one-out error of each model of the scoring loss over the policies the search measured (a "
             "model that cannot predict a policy it was not fitted on cannot point to a better one); compare with "
             "the sd of the losses and the constant model. 'fitted + ILP': the ILP optimum of the four-side model "
             "(non-negative slopes fitted on every measured policy), measured on the scoring images, on the 4,000 "
             "other validation images of the search's confirmation (paired one-sided t-test of the per-image loss "
             "against uniform) and on the 10,000 test images (paired 95% bootstrap interval). "
             f"Adding the pairwise terms made the leave-one-out error larger in {pair_worse} of {len(records)} rows; "
             f"some fitted model predicted better than a constant in {beats_const} of {len(records)}; the fitted "
             f"model's ILP policy scored below the best policy the search had measured in {better_score} of "
             f"{len(records)}, yet on the other validation images it was above every candidate the search confirmed "
             f"in {above} of {len(records)}. Its rank: by scoring loss among the measured non-uniform policies (1 = "
             "best; the search confirms the first 5).")
    return table, notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default=",".join(str(RESULTS / f"search_quality_{m}_heldout.json")
                                                  for m in ("resnet20", "resnet32")),
                    help="stored search_quality runs on held-out models (comma-separated JSON files); for an older "
                         "run: git show COMMIT:benchmarks/results/NAME.json > FILE")
    ap.add_argument("--name", default="fitted_damage")
    args = ap.parse_args()
    log = timed_log()
    calib = qp.data.calib_loader("cifar10")
    val = qp.data.loader("cifar10", "val", batch_size=250)
    test = qp.data.loader("cifar10", "test", batch_size=500)
    train = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    if tuple(SelectConfig().metrics) != METRIC_NAMES:
        raise SystemExit(f"the default search's metrics are {SelectConfig().metrics}: update METRIC_NAMES")
    records, inputs = [], []
    for path in (Path(p.strip()) for p in args.inputs.split(",") if p.strip()):
        stored = json.loads(path.read_text())
        inputs.append({"file": path.name, "date": stored["date"], "commit": stored["git"]["commit"]})
        models = {}
        for rec in stored["results"]:
            q, name = rec["quantizer"], rec["model"]
            if (rec["budget"], q) not in GOALS:
                continue
            if name not in models:
                models[name] = (qp.models.load(name), {})
                if models[name][0].sees_validation:
                    raise SystemExit(f"{name} was trained on the validation images: use a held-out model")
            model, tables = models[name]
            if q not in tables:  # the default search's metric tables for this quantizer (its defaults)
                cfg, sel = QUANTIZERS[q], SelectConfig()
                tables[q] = [qp.analyze(model, train, metric=METRICS.get(m)(
                    batches=sel.metric_batches, quantizer="minmax" if cfg.weight_method == "minmax" else "mse",
                    bn_reestimate=cfg.bn_reestimate), bits=BITS, seed=sel.seed) for m in METRIC_NAMES]
            records.append(run_row(model, name, rec, tables=tables[q], calib=calib, val=val, test=test, log=log))
    table, notes = render(records)
    notes += " Inputs (the search's measurements): " + "; ".join(
        f"`{i['file']}` of {i['date']} (git {str(i['commit'])[:7]})" for i in inputs) + "."
    write(args.name, {"results": records, "inputs": inputs}, table, notes)


if __name__ == "__main__":
    main()
