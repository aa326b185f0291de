"""Checks of what the metrics and GMPQ-TE claim, on ResNet-20 / CIFAR-10:

1. Does the metric predict accuracy? Kendall tau (and Spearman) between each metric's predicted damage and the
   measured PTQ top-1 of N seeded random policies at the BitOPs budget of uniform W3A4 (full test set).
2. Does TE transfer across labels? Layer TE computed from each of the 10 classes: Spearman rank agreement of the
   layer orderings between every pair of classes.
3. Where does TE's search time go? forward pass vs homology (birth times + entropy) vs the te-lp solve.

    python benchmarks/search_claims.py [--policies 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from _common import md_table, write
from scipy.stats import kendalltau, spearmanr

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy
from qpolicy.sensitivity.te import TEMetric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=30)
    args = ap.parse_args()
    model = qp.models.load("resnet20")
    layers = qp.quantizable_layers(model)
    train = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    test = qp.data.loader("cifar10", "test", batch_size=500)
    calib = qp.data.calib_loader("cifar10")
    bits = (2, 3, 4, 5, 6, 8)
    tables = {m: qp.analyze(model, train, metric=m, bits=bits) for m in ("te", "hessian", "fisher", "qerror")}
    budget = qp.Budget(bitops=qp.policy_cost(layers, qp.uniform_policy(model, "w3a4")).bitops_rel_w8a8)

    # 1. predicted damage vs measured accuracy
    policies = [qp.search(tables["qerror"], budget, strategy="random", seed=s, first_last=8).policy
                for s in range(args.policies)]
    acc = []
    for i, p in enumerate(policies):
        acc.append(evaluate_policy(model, p, test=test, calib=calib).accuracy.top1)
        print("policy", i, acc[-1], flush=True)
    corr, rows1 = {}, []
    for m, t in tables.items():
        dmg = [sum(t.weight[n][b.weight_bits] + t.act[n][b.act_bits] for n, b in p.layers.items()) for p in policies]
        tau = kendalltau(dmg, [-a for a in acc]).statistic  # more damage should mean lower accuracy
        rho = spearmanr(dmg, [-a for a in acc]).statistic
        corr[m] = {"kendall_tau": float(tau), "spearman": float(rho)}
        rows1.append([m, f"{tau:.3f}", f"{rho:.3f}"])

    # 2. TE across the 10 classes
    te_by_class = {c: TEMetric(label=c).layer_scores(model, train, layers) for c in range(10)}
    names = [li.name for li in layers]
    rhos = [float(spearmanr([te_by_class[a][n] for n in names], [te_by_class[b][n] for n in names]).statistic)
            for a, b in itertools.combinations(range(10), 2)]

    # 3. time split of te + te-lp
    metric = TEMetric()
    x = metric.same_label_batch(train, torch.device("cpu"))
    t = time.perf_counter()
    with torch.no_grad():
        model(x)
    t_forward = time.perf_counter() - t
    t = time.perf_counter()
    table = qp.analyze(model, train, metric=metric, bits=bits)
    t_analyze = time.perf_counter() - t
    t = time.perf_counter()
    qp.search(table, qp.Budget(bitops=0.25), strategy="te-lp", first_last=8)
    t_lp = time.perf_counter() - t

    table1 = md_table(["metric", "Kendall tau (damage vs -top1)", "Spearman"], rows1)
    table2 = md_table(["quantity", "value"], [
        ["Spearman of layer TE, 45 class pairs: mean", f"{statistics.mean(rhos):.3f}"],
        ["... min / max", f"{min(rhos):.3f} / {max(rhos):.3f}"],
        ["te time: forward pass of 128 images", f"{t_forward:.2f} s"],
        ["te time: homology + entropy (analyze - forward)", f"{t_analyze - t_forward:.2f} s"],
        ["te-lp solve (bitops=0.25)", f"{t_lp * 1000:.0f} ms"]])
    notes = (f"ResNet-20, CIFAR-10. (1) {args.policies} seeded random policies within the BitOPs of uniform W3A4 "
             "(first/last 8-bit), PTQ top-1 on the full test set (MSE + BN re-estimation); tau > 0 means the "
             f"metric's predicted damage orders policies like their accuracy (measured top-1 {min(acc):.2f} - "
             f"{max(acc):.2f}). (2) TE of every layer from 128 training images of each class. (3) Wall times on "
             "this CPU, 2 threads.")
    write("search_claims", {"budget": budget.to_dict(), "policy_top1": acc, "correlation": corr,
                            "te_class_spearman": rhos, "te_by_class": te_by_class,
                            "time": {"forward": t_forward, "analyze": t_analyze, "te_lp": t_lp}},
          table1 + "\n\n" + table2, notes)


if __name__ == "__main__":
    main()
