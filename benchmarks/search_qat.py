"""One short QAT run (1 epoch, CPU) of a searched policy at the BitOPs budget of uniform W3A4, beside the uniform
W3A4 policy fine-tuned the same way: top-1 before (PTQ) and after on the full CIFAR-10 test set.

The searched policy is chosen on the validation split, never on test: the default (validated) search's policy, or,
when that search keeps the uniform policy, its best-scoring non-uniform candidate on validation (so that QAT has a
mixed policy to compare). ``--metric NAME`` takes that metric's ILP policy instead.

    python benchmarks/search_qat.py [--epochs 1] [--metric NAME]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import finetune_policy
from qpolicy.select import search_validated

RUNS = Path(__file__).resolve().parents[1] / "runs" / "bench_search_qat"
BUDGET = "BitOPs of W3A4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--metric", help="take this metric's ILP policy instead of the validated search's")
    args = ap.parse_args()
    shutil.rmtree(RUNS, ignore_errors=True)
    model = qp.models.load("resnet20")
    layers = qp.quantizable_layers(model)
    plain = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    budget = qp.Budget(bitops=qp.policy_cost(layers, qp.uniform_policy(model, "w3a4")).bitops_rel_w8a8)
    if args.metric:
        table = qp.analyze(model, plain, metric=args.metric, bits=(2, 3, 4, 5, 6, 8))
        searched = qp.search(table, budget, first_last=8, model_name="resnet20").policy
        method, how = f"{args.metric} + ilp", "given by --metric"
    else:
        res = search_validated(model, budget, calib=qp.data.calib_loader("cifar10"),
                               val=qp.data.loader("cifar10", "val", batch_size=250), metric_data=plain,
                               model_name="resnet20")
        searched, method = res.policy, res.policy.provenance["chosen"]
        how = "the default search's choice on validation"
        if method.startswith("uniform"):
            mixed = [c for c in res.extra["selection"]["measured"] if not c["source"].startswith("uniform")]
            best = min(mixed, key=lambda c: c["val_loss"])
            bits = [tuple(int(v) for v in b[1:].split("a")) for b in best["bits"].split()]
            searched = qp.Policy(layers={li.name: qp.LayerBits(weight_bits=w, act_bits=a)
                                         for li, (w, a) in zip(layers, bits, strict=True)}, model="resnet20",
                                 provenance={"method": "search", "strategy": "validated candidate",
                                             "source": best["source"]})
            how = (f"the default search kept {method}; its best non-uniform candidate on validation "
                   f"({best['source']}, val loss {best['val_loss']:.4f})")
            method = best["source"]
    train = qp.data.loader("cifar10", "train", batch_size=128)
    test = qp.data.loader("cifar10", "test", batch_size=500)
    rows, records = [], {}
    for label, policy in (("searched", searched),
                          ("uniform W3A4", qp.uniform_policy(model, "w3a4", model_name="resnet20"))):
        run, _ = finetune_policy(model, policy, train=train, test=test, calib=qp.data.calib_loader("cifar10"),
                                 out_dir=RUNS / label.split()[0].lower(), config=qp.FinetuneConfig(epochs=args.epochs))
        print(label, run.before.top1, "->", run.after.top1, flush=True)
        cost = qp.policy_cost(qp.quantizable_layers(model), policy)
        records[label] = {"policy": policy.to_dict(), "run": run.to_dict()}
        rows.append([label, f"{cost.bitops_rel_w8a8:.4f}", f"{cost.size_rel_w8a8:.3f}", f"{run.before.top1:.2f}",
                     f"{run.after.top1:.2f}", f"{run.finetune.seconds_per_epoch:.0f}"])
    table = md_table(["policy", "BitOPs / W8A8", "size / W8A8", "top-1 PTQ %", f"top-1 after {args.epochs} epoch QAT %",
                      "s / epoch"], rows)
    notes = (f"ResNet-20 at the BitOPs of uniform W3A4 (first/last layer W8A8). The searched policy: {method} ({how}). "
             "Both runs: our PTQ "
             f"(MSE + BN re-estimation), then {args.epochs} epoch(s) of QAT (SGD momentum 0.9 Nesterov, lr 0.01 "
             "cosine, weight decay 5e-4, batch 128, LSQ step sizes); full CIFAR-10 test set.")
    write("search_qat", {"budget": BUDGET, "method": method, "how": how, "epochs": args.epochs, "runs": records}, table,
          notes)


if __name__ == "__main__":
    main()
