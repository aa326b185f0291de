"""qpolicy on a real data set that is not CIFAR-10: scikit-learn's 1,797 handwritten digits (8x8 grayscale, shipped
inside scikit-learn). The benchmark writes them as an image folder and as an npz file, checks that the two plugins
give the same images and splits, trains a small CNN (``examples/mynet.py``: a residual and a depthwise block) and a
small vision transformer (``qpolicy.models.vit:tiny_vit``) on the training split, then reports test top-1 of the
float model, uniform W8A8 / W4A4 / W3A4 (first and last layer at 8 bits) and the default (validated) search at the
BitOPs of uniform W4A4 and W3A4. Every choice (training epochs are fixed in advance; the policy) is made on the
validation split; test is only reported.

    python benchmarks/digits.py [--out runs/bench_digits]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from _common import md_table, write
from scipy.stats import binomtest

import qpolicy as qp
from qpolicy import data, datasets
from qpolicy.models import from_reference
from qpolicy.pipeline import evaluate_policy
from qpolicy.testing import write_digits
from qpolicy.train.trained import FloatTrainConfig, train_float

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (factory reference, training settings fixed before any result was seen)
    "cnn": (f"{ROOT / 'examples' / 'mynet.py'}:factory", FloatTrainConfig(epochs=15, lr=0.05, seed=0)),
    "vit": ("qpolicy.models.vit:tiny_vit", FloatTrainConfig(epochs=80, lr=0.004, optimizer="adam", seed=0)),
}
UNIFORM = ("w8a8", "w4a4", "w3a4")
BUDGETS = ("w4a4", "w3a4")  # the default search at the BitOPs of these uniform policies


def ci(correct: int, total: int) -> tuple[float, float]:
    r = binomtest(correct, total).proportion_ci(0.95, method="exact")
    return 100 * r.low, 100 * r.high


@torch.no_grad()
def per_image(model, test) -> torch.Tensor:
    """1.0 where the model's top-1 prediction is right, per test image, in order."""
    model.eval()
    return torch.cat([(model(x).argmax(1) == y).float() for x, y in test])


def paired_ci(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """95% normal interval (points) of the paired difference of two models' per-image correctness on the same
    images."""
    d = (a - b).double()
    half = 1.96 * float(d.std(unbiased=True)) / len(d) ** 0.5
    return 100 * (float(d.mean()) - half), 100 * (float(d.mean()) + half)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_digits")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: the models are trained again with the fixed settings
    folder_spec = write_digits(out / "folder")
    npz_spec = write_digits(out / "npz", fmt="npz")
    src, src_npz = datasets.source(folder_spec), datasets.source(npz_spec)
    same = all(torch.equal(src.split(s)[0].images[src.split(s)[1]], src_npz.split(s)[0].images[src_npz.split(s)[1]])
               for s in datasets.SPLITS)
    counts = {s: len(src.split(s)[1]) for s in datasets.SPLITS}
    print("image folder == npz:", same, counts, flush=True)
    train = data.loader(src, "train", batch_size=64, seed=0)
    calib = data.calib_loader(src, batches=8, batch_size=64)
    val = data.loader(src, "val", batch_size=250)
    metric_data = data.loader(src, "train", batch_size=128, shuffle=True, augment=False)
    test = data.loader(src, "test", batch_size=500)
    records, rows = [], []
    for name, (ref, cfg) in MODELS.items():
        torch.manual_seed(0)
        model = from_reference(ref)
        model.input_shape = src.input_shape
        t = time.perf_counter()
        train_float(model, train, config=cfg, out_dir=out / f"train_{name}", model_name=name)
        train_s = time.perf_counter() - t
        model.eval()
        qp.preflight(model, test)
        layers = qp.quantizable_layers(model)

        w8a8_bitops = qp.policy_cost(layers, qp.uniform_policy(model, "w8a8", first_last="same")).bitops

        hits: dict[str, torch.Tensor] = {}

        def row(label, policy, seconds=None, evaluations=None, model=model, name=name, w8a8_bitops=w8a8_bitops,
                hits=hits):
            ev = evaluate_policy(model, policy, test=test, calib=calib)
            a = ev.accuracy
            qmodel = model if policy is None else qp.apply_policy(model, policy, calib=calib)
            hits[label] = per_image(qmodel, test)
            if int(hits[label].sum()) != a.correct:
                raise RuntimeError(f"{label}: per-image count {int(hits[label].sum())} != {a.correct}")
            rec = {"model": name, "policy": label, "top1": a.top1, "correct": a.correct, "total": a.total,
                   "ci95": ci(a.correct, a.total), "bitops_rel": ev.cost.bitops / w8a8_bitops,
                   "size_kib": ev.cost.size_bytes / 1024, "search_seconds": seconds, "evaluations": evaluations,
                   "policy_bits": {n: [b.weight_bits, b.act_bits] for n, b in ev.policy.layers.items()}}
            records.append(rec)
            print(rec["model"], label, f"{a.top1:.2f}", flush=True)
            return rec

        flt = row("float", None)
        flt["train_seconds"] = train_s
        val_float = qp.evaluate(model, val)
        flt["val_top1"] = val_float.top1
        uni = {s: row(f"uniform {s}", qp.uniform_policy(model, s)) for s in UNIFORM}
        for b in BUDGETS:
            budget = qp.Budget(bitops=uni[b]["bitops_rel"])
            t = time.perf_counter()
            res = qp.search_validated(model, budget, calib=calib, val=val, metric_data=metric_data, model_name=name)
            rec = row(f"search @ BitOPs of {b}", res.policy, time.perf_counter() - t,
                      res.extra["selection"]["evaluations"])
            rec["margin_vs_uniform"] = rec["top1"] - uni[b]["top1"]
            rec["margin_ci95"] = paired_ci(hits[rec["policy"]], hits[f"uniform {b}"])
            rec["chosen"] = res.policy.provenance["chosen"]
    for r in records:
        lo, hi = r["ci95"]
        rows.append([r["model"], r["policy"], f"{r['top1']:.2f}", f"{lo:.1f}-{hi:.1f}", f"{r['bitops_rel']:.3f}",
                     f"{r['size_kib']:.1f}",
                     (f"{r['margin_vs_uniform']:+.2f} ({r['margin_ci95'][0]:+.1f}..{r['margin_ci95'][1]:+.1f})"
                      if "margin_vs_uniform" in r else ""),
                     f"{r['search_seconds']:.1f}" if r["search_seconds"] else "",
                     str(r["evaluations"] or "")])
    table = md_table(["model", "policy", "test top-1 %", "95% CI", "BitOPs / W8A8", "size KiB",
                      "vs uniform (95% CI)", "search s", "evaluations"], rows)
    notes = (f"scikit-learn digits: {counts['train']} train / {counts['val']} val / {counts['test']} test images "
             f"(a seeded stratified split: {src.splits_rule}); the image folder and the npz file give identical "
             f"splits: {same}. Test top-1 with Clopper-Pearson 95% intervals ({counts['test']} images: about "
             "+-2 points); the margin against the uniform policy of the same BitOPs carries a paired 95% interval "
             "over the same test images. With only {val} validation images the validated search scores every "
             "candidate on all of them and its confirmation step is skipped (it warns). First and last layer at 8 "
             "bits in every policy. "
             "The two matrix products of attention (Q K^T, weights x V) stay float and are not in BitOPs."
             ).replace("{val}", str(counts["val"]))
    write("digits", {"counts": counts, "splits": src.splits_rule, "image_folder_equals_npz": same,
                     "records": records}, table, notes)


if __name__ == "__main__":
    main()
