"""KURE vs plain fine-tuning of ResNet-20 (same schedule, same seed): kurtosis per layer, PTQ top-1 at uniform
bit-widths under min-max and under our MSE calibration, robustness to step-size errors, and the spread of top-1
over random mixed policies. Does "one model to rule them all" hold on ResNet-20?

    python benchmarks/kure_compare.py [--epochs 2] [--lambda 1.0] [--randoms 50] [--random-images 2000]

Both models start from the pretrained ResNet-20 and are fine-tuned on the training images (validation images held
out) with the same SGD schedule and seed; KURE adds lambda * mean (Kurt[W_l] - 1.8)^2 over every Conv2d but the
first. Every number below is measured on the CIFAR-10 test split; nothing is chosen on it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import md_table, write

import qpolicy as qp
from qpolicy.quant.fake_quant import WeightQuantizer
from qpolicy.sensitivity import SensitivityTable
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
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--randoms", type=int, default=50)
    ap.add_argument("--random-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, help="a seeded subset of the test set (default: all 10,000)")
    ap.add_argument("--train-images", type=int, help="a seeded subset of the training images (default: all)")
    args = ap.parse_args()
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.test_images)
    test_small = qp.data.loader("cifar10", "test", batch_size=500, limit=args.random_images)
    calib = qp.data.calib_loader("cifar10")
    train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.train_images)
    base = qp.models.load("resnet20")
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

    ptq, rows = {}, []
    for spec in SPECS:
        row = [spec.upper()]
        for calib_name, cfg in CALIBS.items():
            for label, m in models.items():
                q = qp.apply_policy(m, qp.uniform_policy(m, spec), calib=calib, config=cfg)
                top1 = qp.evaluate(q, test).top1
                ptq[f"{spec}|{calib_name}|{label}"] = top1
                row.append(f"{top1:.2f}")
        rows.append(row)
        print(row, flush=True)
    ptq_table = md_table(["policy", *(f"{c}: {lab}" for c in CALIBS for lab in models)], rows)

    pert, prow = {}, []
    for calib_name, cfg in CALIBS.items():
        for label, m in models.items():
            q = qp.apply_policy(m, qp.uniform_policy(m, "w4a4"), calib=calib, config=cfg)
            vals = {f"{d:+.0%}": qp.evaluate(perturbed(q, d), test).top1 for d in PERTURB}
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

    regularized = kure_layers(base)
    krow = [[n, f"{kurt['pretrained'][n]:.2f}", f"{kurt['plain'][n]:.2f}", f"{kurt['KURE'][n]:.2f}",
             "yes" if n in regularized else "no"] for n in names]
    kurt_table = md_table(["layer", "pretrained", "plain fine-tune", "KURE fine-tune", "regularized"], krow)
    f = fit
    notes = (f"ResNet-20 fine-tuned {args.epochs} epoch(s) (SGD, lr {args.lr}, cosine, seed 0) on the 45,000 training "
             f"images, plain and with KURE (lambda {args.lam}, target 1.8): float test top-1 plain "
             f"{f['plain']['float_top1']:.2f}%, KURE {f['KURE']['float_top1']:.2f}% "
             f"({f['plain']['seconds']:.0f} s / {f['KURE']['seconds']:.0f} s). PTQ on the test set; first and "
             f"last layer at 8 bits. Step-size errors scale every weight quantizer's step of the W4A4 PTQ model. "
             f"Random "
             f"mixed policies: {args.randoms} seeded random policies at the BitOPs of W4A4 (ours calibration), "
             f"top-1 on {args.random_images} test images.")
    table_md = (f"## PTQ top-1 (%)\n\n{ptq_table}\n\n## W4A4 under step-size errors (top-1 %)\n\n{pert_table}\n\n"
                f"## {args.randoms} random mixed policies at the BitOPs of W4A4 (top-1 %)\n\n{spread_table}\n\n"
                f"## Kurtosis per layer\n\n{kurt_table}")
    write("kure_compare", {"fit": fit, "kurtosis": kurt, "ptq": ptq, "perturbation": pert, "random_policies": spread,
                           "settings": vars(args)}, table_md, notes)


if __name__ == "__main__":
    main()
