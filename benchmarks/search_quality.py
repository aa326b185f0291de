"""Policy quality with PTQ only, on the CIFAR-10 test set, at the BitOPs of uniform W4A4, W3A4 and W3A3 and the
weight size of uniform W4 and W3 (8-bit activations), under two quantizers (plain min-max ranges without BN
re-estimation, and ours: MSE clipping + BN re-estimation). Columns: the uniform policy of that very cost; each
cheap metric's ILP optimum; the default search (``validated``: candidates and refinement measured on the
validation split held out of the training images); the median of seeded random policies. Nothing here is chosen
on the test split: the default search chooses on validation, the other columns choose nothing. Every policy is
stored in the JSON.

    python benchmarks/search_quality.py [--models resnet20,resnet32] [--randoms 3] [--metrics fisher,qerror,...]
        [--workers N | --ray-address A]   # the policies of each row, and the default search, on Ray
        [--select-on select]   # choose on half of the test split, report the other half (for the published
                               # weights, which were trained on the validation images)
    python benchmarks/search_quality.py --render benchmarks/results/NAME.json   # the markdown of a stored run
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import evaluate_policies
from qpolicy.select import SelectConfig, search_validated
from qpolicy.sensitivity import METRICS

QUANTIZERS = {
    "minmax": qp.CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False),
    "ours": qp.CalibConfig(weight_method="mse", act_method="mse", bn_reestimate=True),
}
BUDGETS = {  # label -> (uniform spec whose cost is the budget, budget key, fixed activation bits)
    "BitOPs of W4A4": ("w4a4", "bitops", None),
    "BitOPs of W3A4": ("w3a4", "bitops", None),
    "BitOPs of W3A3": ("w3a3", "bitops", None),
    "size of W4 (A8)": ("w4a8", "size", 8),
    "size of W3 (A8)": ("w3a8", "size", 8),
}
BITS = (2, 3, 4, 5, 6, 8)


def run_model(name: str, metrics: list[str], randoms: int, log, workers: int | None = None,
              address: str | None = None, select_on: str = "val") -> list[dict]:
    model = qp.models.load(name)
    layers = qp.quantizable_layers(model)
    report = "test" if select_on == "val" else "report"  # never an image the choices were made on
    test = qp.data.loader("cifar10", report, batch_size=500)
    val = qp.data.loader("cifar10", select_on, batch_size=250)
    calib = qp.data.calib_loader("cifar10")
    train = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    tables = {}
    for q, cfg in QUANTIZERS.items():
        for m in metrics:
            metric = METRICS.get(m)(quantizer="minmax" if q == "minmax" else "mse", bn_reestimate=cfg.bn_reestimate)
            tables[m, q] = qp.analyze(model, train, metric=metric, bits=BITS)
    records = []
    for label, (spec, key, act_bits) in BUDGETS.items():
        uni = qp.uniform_policy(model, spec, model_name=name)
        c = qp.policy_cost(layers, uni)
        budget = qp.Budget(**{key: c.bitops_rel_w8a8 if key == "bitops" else c.size_rel_w8a8})
        for q, cfg in QUANTIZERS.items():
            rec = {"model": name, "budget": label, "limits": budget.to_dict(), "quantizer": q, "act_bits": act_bits,
                   "select_on": select_on, "report_split": report, "report_images": len(test.indices),
                   "sees_validation": model.sees_validation, "policies": {"uniform": uni.to_dict()}}
            columns = {"uniform": uni}
            for m in metrics:
                columns[m] = qp.search(tables[m, q], budget, act_bits=act_bits, first_last=8).policy
                rec["policies"][m] = columns[m].to_dict()
            t = time.perf_counter()
            res = search_validated(model, budget, calib=calib, val=val, metric_data=train, calib_config=cfg,
                                   act_bits=act_bits, first_last=8, model_name=name, config=SelectConfig(),
                                   workers=workers, address=address)
            rec["default_seconds"] = time.perf_counter() - t
            columns["default"] = res.policy
            rec["default_chosen"] = res.policy.provenance["chosen"]
            rec["default_evaluations"] = res.extra["selection"]["evaluations"]
            rec["policies"]["default"] = res.policy.to_dict()
            randoms_ = [qp.search(tables[metrics[0], q], budget, strategy="random", seed=s, act_bits=act_bits,
                                  first_last=8).policy for s in range(randoms)]
            # every policy of the row in one run_many (serial, or on Ray with --workers / --ray-address)
            top1 = [r["top1"] for r in evaluate_policies(model, [*columns.values(), *randoms_], test=test,
                                                         calib=calib, calib_config=cfg, workers=workers,
                                                         address=address, desc=f"{label} {q}")]
            rec.update(zip(columns, top1[:len(columns)], strict=True))
            rnd = top1[len(columns):]
            rec["random"] = rnd
            rec["random_median"] = statistics.median(rnd) if rnd else None
            rec["margin"] = rec["default"] - rec["uniform"]
            records.append(rec)
            log(f"{name} {label} {q}: uniform {rec['uniform']:.2f}, default {rec['default']:.2f} "
                f"({rec['default_chosen']}, {rec['default_seconds']:.0f} s)")
    return records


def margin_interval(rec: dict) -> float:
    """Half-width (points) of a 95% normal interval on default - uniform top-1 treating the two as independent
    proportions on the report images: conservative for this paired comparison (same images)."""
    n = rec.get("report_images", 10000)
    p1, p2 = rec["default"] / 100, rec["uniform"] / 100
    return 100 * 1.96 * ((p1 * (1 - p1) + p2 * (1 - p2)) / n) ** 0.5


def render(records: list[dict], metrics: list[str], randoms: int) -> tuple[str, str]:
    """The markdown table and notes of stored records; the default search's settings are read from its policies'
    provenance, so the text says what ran."""
    rows = []
    for rec in records:
        rnd = rec["random"]
        rows.append([rec["model"], rec["budget"], rec["quantizer"], f"{rec['uniform']:.2f}",
                     *(f"{rec[m]:.2f}" for m in metrics), f"**{rec['default']:.2f}**",
                     f"{rec['margin']:+.2f} ± {margin_interval(rec):.2f}",
                     f"{rec['default_seconds']:.0f} s / {rec['default_evaluations']}", rec["default_chosen"],
                     f"{rec['random_median']:.2f} ({min(rnd):.1f}-{max(rnd):.1f})" if rnd else "-"])
    table = md_table(["model", "budget", "quantizer", "uniform", *(f"{m} + ilp" for m in metrics),
                      "default search", "default - uniform", "search s / evaluations", "chosen",
                      f"random median of {randoms} (range)"], rows)
    sel = records[0]["policies"]["default"]["provenance"]["select"]
    below = [f"{r['model']} {r['budget']} {r['quantizer']} ({r['margin']:+.2f})" for r in records if r["margin"] < 0]
    r0 = records[0]
    split = ("full test set (10,000 images); choices on the validation split" if r0.get("select_on", "val") == "val"
             else f"on the 'report' half of the test split ({r0['report_images']:,} images); every choice made on the "
                  "other ('select') half, because the published weights were trained on all 50,000 training images, "
                  "our validation split included")
    notes = (f"CIFAR-10 test top-1 (%) after PTQ only, {split}. Margins carry a 95% interval (normal, the two "
             "policies treated as independent: conservative for these paired figures). Quantizers: `minmax` = plain "
             "min-max ranges, no BN re-estimation; `ours` = MSE clipping + BN re-estimation on 4,096 augmented "
             "training images. First and last layer W8A8 in every policy; size budgets hold activations at 8 bits; "
             "candidate bits {2,3,4,5,6,8}. Each budget is the cost of the uniform policy of its row. Metric "
             "columns: that metric's table (one batch of 128 training images, scored with the row's quantizer and "
             "its BN rule) solved by the ILP. Default search: `qpolicy search --model M --budget ...` "
             f"(`search_validated`: {' + '.join(sel['metrics'])} ILP candidates, the {sel['uniform_candidates']} "
             f"widest uniform policies, {sel['refine_evaluations']} refinement evaluations, each policy scored on "
             f"{sel['val_images']:,} images of the validation split held out of the training images and calibrated "
             f"like the row's quantizer ({sel['bn_batches']} BN + {sel['act_batches']} activation batches); the "
             f"choice confirmed against every uniform candidate on {sel['confirm_images']:,} other validation images "
             f"(one-sided paired t-test on per-image loss, p < {sel['confirm_p']}, and top-1 at least theirs)). "
             "Random: seeded random policies that fill the budget. Default search below uniform: "
             + (", ".join(below) if below else "never") + ".")
    return table, notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet32")
    ap.add_argument("--metrics", default="fisher,qerror,hessian,kl")
    ap.add_argument("--randoms", type=int, default=3)
    ap.add_argument("--name", default="search_quality")
    ap.add_argument("--render", metavar="JSON", help="only render a stored result of this script again")
    ap.add_argument("--workers", type=int, help="evaluate on a local Ray with this many CPUs (default: serial)")
    ap.add_argument("--ray-address", help="evaluate on an existing Ray cluster: auto or HOST:PORT")
    ap.add_argument("--select-on", default="val", choices=["val", "select"],
                    help="where choices are made: the validation split, or half of the test split (the other half "
                         "reported)")
    args = ap.parse_args()
    if args.render:
        import json
        from pathlib import Path

        stored = json.loads(Path(args.render).read_text())
        records = stored["results"]
        metrics = [m for m in ("fisher", "qerror", "hessian", "kl", "te") if m in records[0]]
        randoms = len(records[0]["random"])
        table, notes = render(records, metrics, randoms)
        write(stored["benchmark"], {"results": records, "never_below_uniform": stored["never_below_uniform"]},
              table, notes, stored=stored)
        return
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:.0f} s] {msg}", flush=True)

    records = []
    for name in args.models.split(","):
        records += run_model(name.strip(), metrics, args.randoms, log, args.workers, args.ray_address,
                             args.select_on)
    table, notes = render(records, metrics, args.randoms)
    never_below = all(r["margin"] >= 0 for r in records)
    write(args.name, {"results": records, "never_below_uniform": never_below}, table, notes)


if __name__ == "__main__":
    main()
