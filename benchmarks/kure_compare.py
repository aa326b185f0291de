"""KURE vs plain fine-tuning of ResNet-20 (same schedule, same seed): kurtosis per layer, PTQ top-1 at uniform
bit-widths under min-max and under our MSE calibration, robustness to step-size errors, and the spread of top-1
over random mixed policies. Does "one model to rule them all" hold on ResNet-20?

    python benchmarks/kure_compare.py [--model resnet20-heldout] [--epochs 2] [--lambda 1.0] [--randoms 50]
        [--random-images 2000]

Both models start from the pretrained ResNet-20 and are fine-tuned on the training images (validation images held
out) with the same SGD schedule and seed; KURE adds lambda * mean (Kurt[W_l] - 1.8)^2 over every Conv2d but the
first. Every number below is measured on the CIFAR-10 test split; nothing is chosen on it. Each of the paper's claims
(Shkolnik et al. 2020) is judged from paired intervals: PTQ top-1 KURE - plain per policy (images resampled), the
loss under step-size errors KURE - plain (the drop from the calibrated step, per image), and the spread over random
policies (the policies resampled, paired by policy): held / not held / undecided.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from _common import add_base_model, md_table, write

import qpolicy as qp
from qpolicy.quant.fake_quant import WeightQuantizer
from qpolicy.sensitivity import SensitivityTable
from qpolicy.stats import (
    bootstrap_interval,
    overall_verdict,
    pack_outcomes,
    paired_difference_interval,
    unpack_outcomes,
    verdict,
)
from qpolicy.train.kurtosis import kure_layers, layer_kurtosis

SPECS = ["w8a8", "w6a6", "w5a5", "w4a8", "w3a8", "w2a8", "w4a4", "w3a4"]
CALIBS = {"minmax": qp.CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False),
          "ours (MSE + BN)": qp.CalibConfig()}
PERTURB = [-0.10, -0.05, -0.02, -0.01, 0.01, 0.02, 0.05, 0.10]


def perturbed(qmodel, delta: float):
    """A copy with every weight quantizer's step size scaled by (1 + delta)."""
    m = copy.deepcopy(qmodel)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, WeightQuantizer):
                mod.scale.mul_(1.0 + delta)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    add_base_model(ap)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--randoms", type=int, default=50)
    ap.add_argument("--random-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, help="a seeded subset of the test set (default: all 10,000)")
    ap.add_argument("--train-images", type=int, help="a seeded subset of the training images (default: all)")
    ap.add_argument("--name", default="kure_compare", help="result file name")
    args = ap.parse_args()
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.test_images)
    test_small = qp.data.loader("cifar10", "test", batch_size=500, limit=args.random_images)
    calib = qp.data.calib_loader("cifar10")
    train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.train_images)
    base = qp.models.load(args.model)
    names = [li.name for li in qp.quantizable_layers(base)]
    models, fit = {}, {}
    for label, lam in (("plain", 0.0), ("KURE", args.lam)):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        res = qp.finetune(m, train, config=qp.FinetuneConfig(epochs=args.epochs, lr=args.lr, kurtosis_lambda=lam,
                                                             checkpoint_every=0, seed=0))
        models[label] = m
        fit[label] = {"seconds": time.perf_counter() - t, "history": list(res.history),
                      "float_top1": qp.evaluate(m, test).top1}
        print(label, fit[label]["float_top1"], flush=True)
    kurt = {"pretrained": layer_kurtosis(base, names), **{k: layer_kurtosis(m, names) for k, m in models.items()}}

    ptq, rows, per = {}, [], {}
    for spec in SPECS:
        row = [spec.upper()]
        for calib_name, cfg in CALIBS.items():
            for label, m in models.items():
                q = qp.apply_policy(m, qp.uniform_policy(m, spec), calib=calib, config=cfg)
                ev = qp.evaluate(q, test, per_sample=True)
                top1 = ev.top1
                ptq[f"{spec}|{calib_name}|{label}"] = top1
                per[f"{spec}|{calib_name}|{label}"] = pack_outcomes(ev.per_sample)
                row.append(f"{top1:.2f}")
        rows.append(row)
        print(row, flush=True)
    ptq_table = md_table(["policy", *(f"{c}: {lab}" for c in CALIBS for lab in models)], rows)

    pert, prow = {}, []
    for calib_name, cfg in CALIBS.items():
        for label, m in models.items():
            q = qp.apply_policy(m, qp.uniform_policy(m, "w4a4"), calib=calib, config=cfg)
            vals = {}
            for d in PERTURB:
                ev = qp.evaluate(perturbed(q, d), test, per_sample=True)
                vals[f"{d:+.0%}"] = ev.top1
                per[f"w4a4{d:+.0%}|{calib_name}|{label}"] = pack_outcomes(ev.per_sample)
            base_top1 = ptq[f"w4a4|{calib_name}|{label}"]
            pert[f"{calib_name}|{label}"] = {"unperturbed": base_top1, **vals}
            prow.append([f"{label}, {calib_name}", f"{base_top1:.2f}", *(f"{v:.2f}" for v in vals.values())])
            print(prow[-1], flush=True)
    pert_table = md_table(["W4A4 model", "step as calibrated", *(f"{d:+.0%}" for d in PERTURB)], prow)

    layers = qp.quantizable_layers(base)
    zeros = {li.name: dict.fromkeys((2, 3, 4, 5, 6, 8), 0.0) for li in layers}
    table = SensitivityTable(metric="none", bits=(2, 3, 4, 5, 6, 8), layers=tuple(layers), weight=zeros, act=zeros)
    budget = qp.Budget(bitops=qp.policy_cost(layers, qp.uniform_policy(base, "w4a4")).bitops_rel_w8a8)
    randoms = [qp.search(table, budget, strategy="random", seed=s, first_last=8).policy for s in range(args.randoms)]
    spread, srow = {}, []
    for label, m in models.items():
        vals = [qp.evaluate(qp.apply_policy(m, p, calib=calib), test_small).top1 for p in randoms]
        spread[label] = vals
        srow.append([label, f"{min(vals):.2f}", f"{statistics.median(vals):.2f}", f"{max(vals):.2f}",
                     f"{statistics.pstdev(vals):.2f}"])
        print(srow[-1], flush=True)
    spread_table = md_table(["model", "min", "median", "max", "std"], srow)
    claims = kure_claims(per, spread)
    claim_table = md_table(["claim", "rows", "held / not held / undecided", "verdict", "figures [95% CI]"],
                           [[c["claim"], len(c["rows"]), " / ".join(str(sum(r["verdict"] == v for r in c["rows"]))
                                                                     for v in ("held", "not held", "undecided")),
                             c["verdict"], "; ".join(f"{r['row']}: {r['value']:+.2f} "
                                                     + (f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r["ci"] else "")
                                                     for r in c["rows"])] for c in claims])

    regularized = kure_layers(base)
    krow = [[n, f"{kurt['pretrained'][n]:.2f}", f"{kurt['plain'][n]:.2f}", f"{kurt['KURE'][n]:.2f}",
             "yes" if n in regularized else "no"] for n in names]
    kurt_table = md_table(["layer", "pretrained", "plain fine-tune", "KURE fine-tune", "regularized"], krow)
    f = fit
    trained_on = "the 45,000 training" if args.train_images is None else f"{args.train_images:,} of the training"
    notes = (f"{args.model} ({qp.models.spec(args.model).trained_on}) fine-tuned {args.epochs} epoch(s) (SGD, "
             f"lr {args.lr}, cosine, seed 0) on {trained_on} "
             f"images, plain and with KURE (lambda {args.lam}, target 1.8): float test top-1 plain "
             f"{f['plain']['float_top1']:.2f}%, KURE {f['KURE']['float_top1']:.2f}% "
             f"({f['plain']['seconds']:.0f} s / {f['KURE']['seconds']:.0f} s). PTQ on the test set; first and "
             f"last layer at 8 bits. Step-size errors scale every weight quantizer's step of the W4A4 PTQ model. "
             f"Random "
             f"mixed policies: {args.randoms} seeded random policies at the BitOPs of W4A4 (ours calibration), "
             f"top-1 on {args.random_images} test images.")
    notes += (" Claims: a row is held when its 95% interval is above 0 (KURE better), not held when below, else "
              "undecided; a claim is held only when every row is.")
    table_md = (f"## Claims\n\n{claim_table}\n\n"
                f"## PTQ top-1 (%)\n\n{ptq_table}\n\n## W4A4 under step-size errors (top-1 %)\n\n{pert_table}\n\n"
                f"## {args.randoms} random mixed policies at the BitOPs of W4A4 (top-1 %)\n\n{spread_table}\n\n"
                f"## Kurtosis per layer\n\n{kurt_table}")
    write(args.name, {"fit": fit, "kurtosis": kurt, "ptq": ptq, "perturbation": pert, "random_policies": spread,
                           "claims": claims, "per_sample": per, "settings": vars(args)}, table_md, notes)


LOW_BITS = ("w4a8", "w3a8", "w2a8", "w4a4", "w3a4")  # where the paper says KURE helps PTQ


def kure_claims(per: dict[str, dict], spread: dict[str, list[float]]) -> list[dict]:
    """The paper's claims from the stored per-image outcomes (``SPEC|CALIB|MODEL``, perturbed W4A4 as
    ``w4a4+5%|CALIB|MODEL``) and the random policies' top-1 per model: each row's KURE - plain figure, its paired
    95% interval and verdict (above 0: held)."""
    def get(key):
        return unpack_outcomes(per[key])

    claims = []
    rows = []
    for spec in LOW_BITS:
        for calib_name in CALIBS:
            k, p = f"{spec}|{calib_name}|KURE", f"{spec}|{calib_name}|plain"
            if k in per and p in per:
                a, b = get(k), get(p)
                ci = paired_difference_interval(a, b, scale=100.0)
                rows.append({"row": f"{spec.upper()} {calib_name}", "value": 100.0 * float(a.mean() - b.mean()),
                             "ci": ci, "verdict": verdict(ci, 0.0)})
    claims.append({"claim": "KURE raises PTQ top-1 at 4 bits and below (points, KURE - plain)", "rows": rows})
    rows = []
    for calib_name in CALIBS:
        keys = [f"w4a4{d:+.0%}|{calib_name}|{{}}" for d in PERTURB]
        if all(k.format(m) in per for k in keys for m in ("KURE", "plain")) and \
                all(f"w4a4|{calib_name}|{m}" in per for m in ("KURE", "plain")):
            # per image: the mean over step errors of (perturbed - calibrated), KURE minus plain
            drop = {m: np.mean([get(k.format(m)) for k in keys], axis=0) - get(f"w4a4|{calib_name}|{m}")
                    for m in ("KURE", "plain")}
            ci = paired_difference_interval(drop["KURE"], drop["plain"], scale=100.0)
            rows.append({"row": f"W4A4 {calib_name}", "value": 100.0 * float((drop["KURE"] - drop["plain"]).mean()),
                         "ci": ci, "verdict": verdict(ci, 0.0)})
    claims.append({"claim": "KURE makes PTQ robust to step-size errors (mean drop over +-1..10%, KURE - plain, "
                            "points; above 0: KURE drops less)", "rows": rows})
    rows = []
    if "KURE" in spread and "plain" in spread and len(spread["KURE"]) > 1:
        k, p = np.asarray(spread["KURE"]), np.asarray(spread["plain"])
        ci = bootstrap_interval(lambda i: float(np.std(p[i]) - np.std(k[i])), len(k))
        rows.append({"row": "std over random policies, plain - KURE", "value": float(np.std(p) - np.std(k)),
                     "ci": ci, "verdict": verdict(ci, 0.0)})
        ci = bootstrap_interval(lambda i: float(np.median(k[i] - p[i])), len(k))
        rows.append({"row": "median over random policies of KURE - plain", "value": float(np.median(k - p)),
                     "ci": ci, "verdict": verdict(ci, 0.0)})
    claims.append({"claim": "One model for many bit-widths: random mixed policies spread less and score higher "
                            "with KURE", "rows": rows})
    for c in claims:
        c["verdict"] = overall_verdict([r["verdict"] for r in c["rows"]])
    return claims


if __name__ == "__main__":
    main()
