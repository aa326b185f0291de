"""Could the default search's confirmation accept a gain of the size issue 22 asks for, with the validation images
it has? And would another per-image statistic accept more?

The default search keeps a non-uniform policy only when it beats every uniform candidate on the 4,000 validation
images it did not score on, each policy's PTQ model calibrated as it will be deployed: a one-sided paired t-test
on per-image cross-entropy at p < 0.05 / k (Bonferroni over the k best-scoring candidates it confirms,
``SelectConfig.confirm_candidates``, and the fitted one), and a top-1 there at least uniform's. For each goal row of
``search_quality`` (a budget that is the cost of a uniform policy, and a quantizer) this script runs the default
search, takes its ``CANDIDATES`` best-scoring non-uniform policies and the best-scoring uniform one, and compares
them on those 4,000 images under four per-image statistics:

* ``ce``: cross-entropy, the statistic the rule tests;
* ``brier``: the Brier score (bounded, so a few confidently wrong images weigh less);
* ``top1``: 0/1 error, the quantity every result reports;
* ``kl``: KL divergence from the float model's outputs (no labels: the quantization error itself).

For each it gives the paired t statistic (candidate minus uniform; negative is better) and whether the candidate
would pass the rule at the same level with that statistic (and the same top-1 guard). From the spread of the paired
top-1 differences it derives the smallest top-1 gain a one-sided test at that level accepts half the time
(``t_crit * SE``) and 80% of the time (``(t_crit + z_0.8) * SE``), to compare with the goal. Validation images only:
no test image is read.

    python benchmarks/confirmation_power.py [--models resnet20-heldout] [--rows goal|all] [--name confirmation_power]
    python benchmarks/confirmation_power.py --render benchmarks/results/NAME.json   # the markdown of a stored run
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import md_table, timed_log, write
from scipy import stats
from search_quality import BUDGETS, GOALS, QUANTIZERS, heldout_parser, heldout_rows, measured_policies, row_budget

import qpolicy as qp
from qpolicy.select import SelectConfig, _Scorer, search_validated  # the search's own scoring and split

CANDIDATES = 8
STATISTICS = ("ce", "brier", "top1", "kl")


@torch.no_grad()
def per_image(qmodel, float_logits: list[torch.Tensor], batches) -> dict[str, np.ndarray]:
    """Each statistic per image (lower is better) of ``qmodel`` on ``batches``."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in STATISTICS}
    for (x, y), fl in zip(batches, float_logits, strict=True):
        lo = qmodel(x.to(fl.device)).float()
        y = y.to(lo.device)
        p = lo.softmax(1)
        out["ce"].append(F.cross_entropy(lo, y, reduction="none"))
        out["brier"].append(((p - F.one_hot(y, p.shape[1]).float()) ** 2).sum(1))
        out["top1"].append((lo.argmax(1) != y).float())
        out["kl"].append((fl.softmax(1) * (fl.log_softmax(1) - lo.log_softmax(1))).sum(1))
    return {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}


def compare(mine: dict[str, np.ndarray], base: dict[str, np.ndarray], level: float) -> dict:
    """Paired t statistic and one-sided p (mine lower) of each statistic, the top-1 difference in points with its
    standard error, and whether each statistic would pass the rule (p below ``level``, top-1 at least uniform's)."""
    d_top1 = 100.0 * (base["top1"] - mine["top1"])  # points of top-1 gained
    gain = float(d_top1.mean())
    rec = {"top1_gain": gain, "top1_se": float(d_top1.std(ddof=1) / math.sqrt(len(d_top1))),
           "ce": float(mine["ce"].mean()), "t": {}, "p": {}, "passes": {}}
    for k in STATISTICS:
        d = mine[k] - base[k]
        sd = float(d.std(ddof=1))
        t = float(d.mean() / (sd / math.sqrt(len(d)))) if sd > 0 else 0.0
        p = float(stats.t.cdf(t, len(d) - 1)) if sd > 0 else 1.0
        rec["t"][k], rec["p"][k] = t, p
        rec["passes"][k] = p < level and gain >= 0
    return rec


def run_row(model, name: str, label: str, q: str, *, calib, val, train, log) -> dict:
    act_bits = BUDGETS[label][2]
    cfg = QUANTIZERS[q]
    layers = qp.quantizable_layers(model)
    uni, budget = row_budget(model, name, label)
    select = SelectConfig()
    t = time.perf_counter()
    res = search_validated(model, budget, calib=calib, val=val, metric_data=train, calib_config=cfg,
                           act_bits=act_bits, first_last=8, model_name=name, config=select)
    seconds = time.perf_counter() - t
    measured = measured_policies(res, name)
    uniforms = [(m, p) for m, p in measured if m["source"].startswith("uniform")]
    ranked = sorted([(m, p) for m, p in measured if not m["source"].startswith("uniform")],
                    key=lambda mp: mp[0]["val_loss"])
    fitted = res.extra["selection"].get("fitted") or {}
    fitted_i = next((i for i, (m, _) in enumerate(ranked)
                     if m["source"] == fitted.get("source") and m["bits"] == fitted.get("bits")), None)
    # the CANDIDATES best-scoring ones, and the fitted candidate wherever it ranked (the search confirms it)
    chosen = [i for i in range(len(ranked)) if i < CANDIDATES or i == fitted_i]
    base_m, base_p = min(uniforms, key=lambda mp: mp[0]["val_loss"])
    score = _Scorer(model, layers, calib, val, cfg, select, None)
    conf = res.extra["selection"]["confirmation"] or {"tried": [], "uniform": []}
    level = conf.get("level", select.confirm_p / select.confirm_candidates)  # the level the search tested at
    with torch.no_grad():
        float_logits = [model(x).float() for x, _ in score.confirm]

    def stats_of(policy):
        assign = {n: (lb.weight_bits, lb.act_bits) for n, lb in policy.layers.items()}
        return per_image(score.quantized(assign, deployed=True), float_logits, score.confirm)  # as the search does

    base = stats_of(base_p)
    rows = []
    for i in chosen:
        m, p = ranked[i]
        r = compare(stats_of(p), base, level)
        rows.append({"rank": i + 1, "source": m["source"], "confirmed": i < select.confirm_candidates or i == fitted_i,
                     "val_loss_minus_uniform": m["val_loss"] - base_m["val_loss"], "bits": m["bits"], **r})
    # the candidates the search itself confirmed must come out as it measured them (same images, same calibration)
    col = [u["source"] for u in conf["uniform"]].index(base_m["source"]) if conf["tried"] else None
    for tr in conf["tried"]:
        same = [r for r in rows if abs(r["ce"] - tr["val_loss"]) < 1e-9]
        if not same or abs(same[0]["p"]["ce"] - tr["p_values"][col]) > 1e-6 * max(1.0, tr["p_values"][col]):
            raise RuntimeError(f"the search's confirmation of {tr['source']} is not reproduced here")
    n = score.confirm_images
    se = float(np.median([r["top1_se"] for r in rows])) if rows else float("nan")
    t_crit = float(stats.t.ppf(1 - level, n - 1))
    rec = {"model": name, "budget": label, "quantizer": q, "goal": GOALS.get((label, q), 0.0),
           "limits": budget.to_dict(), "search_seconds": seconds, "chosen": res.policy.provenance["chosen"],
           "uniform": base_m["source"], "confirm_images": n, "confirm_candidates": select.confirm_candidates,
           "level": level, "t_crit": t_crit, "top1_se": se,
           "detectable_50": t_crit * se, "detectable_80": (t_crit + float(stats.norm.ppf(0.8))) * se,
           "candidates": rows}
    log(f"{name} {label} {q}: SE of a top-1 difference {se:.2f} points; gains "
        + ", ".join(f"{r['top1_gain']:+.2f}" for r in rows) + "; passes: "
        + ", ".join(f"{k} {sum(r['passes'][k] for r in rows)}" for k in STATISTICS))
    return rec


def render(records: list[dict]) -> tuple[str, str]:
    summary, detail = [], []
    for r in records:
        cands = r["candidates"]
        gains = [c["top1_gain"] for c in cands]
        # those the rule confirms (runs before the fitted candidate record no "confirmed": the first k)
        first = [c for c in cands if c.get("confirmed", c["rank"] <= r["confirm_candidates"])]
        goal = f"+{r['goal']:g}" if r["goal"] else "never below"
        summary.append([r["model"], r["budget"], r["quantizer"], goal, r["chosen"],
                        f"{min(gains):+.2f} to {max(gains):+.2f}" if gains else "-",
                        f"{sum(g > 0 for g in gains)} of {len(gains)}", f"{r['top1_se']:.2f}",
                        f"{r['detectable_50']:.2f}", f"{r['detectable_80']:.2f}",
                        *(f"{sum(c['passes'][k] for c in first)} / {sum(c['passes'][k] for c in cands)}"
                          for k in STATISTICS)])
        for c in cands:
            detail.append([r["model"], r["budget"], r["quantizer"], c["rank"], c["source"],
                           f"{c['val_loss_minus_uniform']:+.4f}", f"{c['top1_gain']:+.2f} ± {c['top1_se']:.2f}",
                           *(f"{c['t'][k]:+.2f}{' ✓' if c['passes'][k] else ''}" for k in STATISTICS)])
    levels = sorted({f"{r['level']:.4f}" for r in records})
    images = records[0]["confirm_images"] if records else 0
    k = records[0]["confirm_candidates"] if records else 0
    fitted = any("confirmed" in c for r in records for c in r["candidates"])
    confirmed = f"the first {k}" + (" and the fitted one" if fitted else "")
    table = (md_table(["model", "budget", "quantizer", "goal", "default search chose", "top-1 gains on the "
                       "confirmation images", "candidates above uniform", "SE of a top-1 difference",
                       "gain accepted half the time", "gain accepted 80% of the time",
                       *(f"pass with {s} (of {confirmed} / of all)" for s in STATISTICS)], summary)
             + "\n\nEach candidate (rank by the selection loss on the 1,000 scoring images; t statistics of the paired "
               "difference candidate - uniform on the confirmation images, negative is better; ✓: passes at the "
               "rule's level with that statistic and a top-1 at least uniform's):\n\n"
             + md_table(["model", "budget", "quantizer", "rank", "source", "selection loss - uniform",
                         "top-1 gain (points) ± SE", *(f"t ({k})" for k in STATISTICS)], detail))
    notes = ("Whether the default search's confirmation step can accept a gain of the size issue 22 asks for "
             "(module docs of `benchmarks/confirmation_power.py`). In each goal row the default search is run, and "
             f"its {CANDIDATES} best-scoring non-uniform policies"
             + (" (and the fitted candidate, which the search confirms wherever it ranked)" if fitted else "")
             + f" are compared with the best-scoring uniform one on "
             f"the {images:,} validation images of the confirmation (never the 1,000 that scored them; no test "
             f"image is read). The rule tests cross-entropy (`ce`) at one-sided p < {' or '.join(levels)} (0.05 "
             f"over the candidates it confirms, {confirmed}: Bonferroni) and asks for a top-1 at least uniform's "
             "(it also asks "
             "to beat the other uniform candidates, which score far worse in these rows); the other columns apply "
             "the same rule to the Brier score, the 0/1 error (`top1`) and the KL divergence from the float model "
             "(`kl`). 'Gain accepted half the time': t_crit x SE of the paired top-1 difference (the median over "
             "the candidates), the top-1 gain a test at the rule's level on these images passes with probability "
             "one half; '80%': (t_crit + z_0.8) x SE. These are what a test on top-1 itself would need; the rule "
             "tests cross-entropy, which can be stronger or weaker than top-1 for the same candidate (compare the t "
             "columns).")
    return table, notes


def main() -> None:
    ap = heldout_parser("confirmation_power")
    ap.add_argument("--render", metavar="JSON", help="only render a stored result of this script again")
    args = ap.parse_args()
    if args.render:
        stored = json.loads(Path(args.render).read_text())
        table, notes = render(stored["results"])
        write(stored["benchmark"], {"results": stored["results"]}, table, notes, stored=stored)
        return
    log = timed_log()

    calib = qp.data.calib_loader("cifar10")
    val = qp.data.loader("cifar10", "val", batch_size=250)
    train = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    records = []
    for model, name, label, q in heldout_rows(args.models, args.rows):
        records.append(run_row(model, name, label, q, calib=calib, val=val, train=train, log=log))
    table, notes = render(records)
    write(args.name, {"results": records}, table, notes)


if __name__ == "__main__":
    main()
