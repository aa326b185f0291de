"""Policy quality on ResNet-20 / CIFAR-10 with PTQ only (our calibration: MSE clipping + BN re-estimation), full
test set, at the issue's budgets: BitOPs of uniform W4A4 and W3A4, weight size of uniform W4, W3 and W2.5 with
8-bit activations. For each: te (te-lp), hessian, fisher and qerror (ilp) policies vs the uniform policy vs the
median of 10 seeded random policies; first and last layer fixed at 8 bits everywhere.

    python benchmarks/search_quality.py [--randoms 10] [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--randoms", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    model = qp.models.load("resnet20")
    layers = qp.quantizable_layers(model)
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.limit)
    calib = qp.data.calib_loader("cifar10")
    train = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)

    def rel(spec, what):
        c = qp.policy_cost(layers, qp.uniform_policy(model, spec))
        return c.bitops_rel_w8a8 if what == "bitops" else c.size_rel_w8a8

    size_w25 = (rel("w2a8", "size") + rel("w3a8", "size")) / 2
    budgets = {
        "BitOPs of W4A4": (qp.Budget(bitops=rel("w4a4", "bitops")), None, "w4a4"),
        "BitOPs of W3A4": (qp.Budget(bitops=rel("w3a4", "bitops")), None, "w3a4"),
        "size of W4 (A8)": (qp.Budget(size=rel("w4a8", "size")), 8, "w4a8"),
        "size of W3 (A8)": (qp.Budget(size=rel("w3a8", "size")), 8, "w3a8"),
        "size of W2.5 (A8)": (qp.Budget(size=size_w25), 8, None),
    }
    bits = (2, 3, 4, 5, 6, 8)
    t = time.perf_counter()
    tables = {m: qp.analyze(model, train, metric=m, bits=bits) for m in ("te", "hessian", "fisher", "qerror")}
    print("tables in", time.perf_counter() - t, flush=True)

    def top1(policy):
        return evaluate_policy(model, policy, test=test, calib=calib).accuracy.top1

    records, rows = [], []
    for label, (budget, act_bits, spec) in budgets.items():
        rec = {"budget": label, "limits": budget.to_dict(), "act_bits": act_bits}
        if spec:
            rec["uniform"] = top1(qp.uniform_policy(model, spec))
        else:  # W2.5: the best uniform policy within the budget
            rec["uniform"] = top1(qp.search(tables["qerror"], budget, strategy="uniform", act_bits=act_bits,
                                            first_last=8).policy)
        for m, table in tables.items():
            strategy = "te-lp" if m == "te" else "ilp"
            r = qp.search(table, budget, strategy=strategy, act_bits=act_bits, first_last=8)
            rec[m] = top1(r.policy)
            rec[m + "_cost"] = r.cost.to_dict(per_layer=False)
        rnd = [top1(qp.search(tables["qerror"], budget, strategy="random", seed=s, act_bits=act_bits,
                              first_last=8).policy) for s in range(args.randoms)]
        rec["random"], rec["random_median"] = rnd, statistics.median(rnd)
        records.append(rec)
        print(rec, flush=True)
        rows.append([label, f"{rec['uniform']:.2f}", *(f"{rec[m]:.2f}" for m in tables),
                     f"{rec['random_median']:.2f} ({min(rnd):.1f}-{max(rnd):.1f})"])
    table = md_table(["budget", "uniform", "te (te-lp)", "hessian (ilp)", "fisher (ilp)", "qerror (ilp)",
                      f"random median of {args.randoms} (range)"], rows)
    notes = ("ResNet-20, CIFAR-10 test set, top-1 % after PTQ only (MSE clipping + BN re-estimation on 4,096 "
             "augmented training images). First and last layer W8A8 in every policy; size budgets hold "
             "activations at 8 bits. Candidate bits {2,3,4,5,6,8}. Sensitivity from one batch of 128 plain "
             "training images (te: 128 images of class 0).")
    write("search_quality", {"results": records}, table, notes)


if __name__ == "__main__":
    main()
