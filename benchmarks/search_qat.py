"""One short QAT run (1 epoch, CPU) of the best searched policy at the BitOPs budget of uniform W3A4, beside the
uniform W3A4 policy fine-tuned the same way: top-1 before (PTQ) and after on the full CIFAR-10 test set.

The searched policy is the one of ``--method`` (a column of ``search_quality.py``), searched again here for our
quantizer; by default the method with the best PTQ top-1 under our quantizer at that budget in
``benchmarks/results/search_quality.json``.

    python benchmarks/search_qat.py [--epochs 1] [--method NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import RESULTS, md_table, write
from search_quality import METHODS

import qpolicy as qp
from qpolicy.pipeline import finetune_policy

RUNS = Path(__file__).resolve().parents[1] / "runs" / "bench_search_qat"
BUDGET = "BitOPs of W3A4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--method", help="a column of search_quality (default: the best under our quantizer)")
    args = ap.parse_args()
    method = args.method
    if method is None:
        quality = json.loads((RESULTS / "search_quality.json").read_text())
        (rec,) = [r for r in quality["results"] if r["budget"] == BUDGET]
        method = rec["best_searched"]["ours"]["method"]
    if method not in METHODS:
        raise SystemExit(f"--method must be one of {', '.join(METHODS)}")
    shutil.rmtree(RUNS, ignore_errors=True)
    model = qp.models.load("resnet20")
    make, strategy = METHODS[method]
    plain = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    table = qp.analyze(model, plain, metric=make("mse"), bits=(2, 3, 4, 5, 6, 8))
    w3a4 = qp.policy_cost(qp.quantizable_layers(model), qp.uniform_policy(model, "w3a4")).bitops_rel_w8a8
    searched = qp.search(table, qp.Budget(bitops=w3a4), strategy=strategy, first_last=8,
                         model_name="resnet20").policy
    train = qp.data.loader("cifar10", "train", batch_size=128)
    test = qp.data.loader("cifar10", "test", batch_size=500)
    rows, records = [], {}
    for label, policy in ((f"{method} (searched)", searched),
                          ("uniform W3A4", qp.uniform_policy(model, "w3a4", model_name="resnet20"))):
        run, _ = finetune_policy(model, policy, train=train, test=test, calib=qp.data.calib_loader("cifar10"),
                                 out_dir=RUNS / label.split()[0], config=qp.FinetuneConfig(epochs=args.epochs))
        print(label, run.before.top1, "->", run.after.top1, flush=True)
        cost = qp.policy_cost(qp.quantizable_layers(model), policy)
        records[label] = {"policy": policy.to_dict(), "run": run.to_dict()}
        rows.append([label, f"{cost.bitops_rel_w8a8:.4f}", f"{cost.size_rel_w8a8:.3f}", f"{run.before.top1:.2f}",
                     f"{run.after.top1:.2f}", f"{run.finetune.seconds_per_epoch:.0f}"])
    table = md_table(["policy", "BitOPs / W8A8", "size / W8A8", "top-1 PTQ %", f"top-1 after {args.epochs} epoch QAT %",
                      "s / epoch"], rows)
    how = ("given by --method" if args.method else "the best PTQ policy of search_quality.json at that budget under "
           "our quantizer")
    notes = (f"ResNet-20 at the BitOPs of uniform W3A4 (first/last layer W8A8). The searched policy: {method} ({how}), "
             "searched again for our quantizer. Both runs: our PTQ "
             f"(MSE + BN re-estimation), then {args.epochs} epoch(s) of QAT (SGD momentum 0.9 Nesterov, lr 0.01 "
             "cosine, weight decay 5e-4, batch 128, LSQ step sizes); full CIFAR-10 test set.")
    write("search_qat", {"budget": BUDGET, "method": method, "epochs": args.epochs, "runs": records}, table, notes)


if __name__ == "__main__":
    main()
