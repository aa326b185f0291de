"""Policy quality on ResNet-20 / CIFAR-10 with PTQ only, full test set, under two quantizers (plain min-max, and
ours: MSE clipping + BN re-estimation), at the issue's budgets: BitOPs of uniform W4A4 and W3A4, weight size of
uniform W4, W3 and W2.5 with 8-bit activations. For each: te (te-lp; the paper's linear damage, and the noise-shaped
damage with and without entropy normalization), hessian, fisher, qerror and kl (ilp) policies vs the uniform policy vs
the median of 10 seeded random policies; first and last layer fixed at 8 bits everywhere. Every searched policy is
stored in the JSON (``policies``) so later benchmarks (``search_qat.py``) can pick one.

    python benchmarks/search_quality.py [--randoms 10] [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy
from qpolicy.sensitivity import METRICS
from qpolicy.sensitivity.te import TEMetric

QUANTIZERS = {
    "minmax": qp.CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False),
    "ours": qp.CalibConfig(weight_method="mse", act_method="mse", bn_reestimate=True),
}
METHODS = {  # column -> (metric factory given the quantizer, strategy); te does not depend on the quantizer
    "te": (lambda q: TEMetric(), "te-lp"),
    "te-noise": (lambda q: TEMetric(damage="noise"), "te-lp"),
    "te-noise-norm": (lambda q: TEMetric(damage="noise", normalize="support"), "te-lp"),
    "hessian": (lambda q: METRICS.get("hessian")(quantizer=q), "ilp"),
    "fisher": (lambda q: METRICS.get("fisher")(quantizer=q), "ilp"),
    "qerror": (lambda q: METRICS.get("qerror")(quantizer=q), "ilp"),
    "kl": (lambda q: METRICS.get("kl")(quantizer=q), "ilp"),
}
METRIC_QUANTIZER = {"minmax": "minmax", "ours": "mse"}


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
    tables = {}
    for col, (make, _) in METHODS.items():
        for q in QUANTIZERS:
            if col.startswith("te") and q != "minmax":
                tables[col, q] = tables[col, "minmax"]
            else:
                tables[col, q] = qp.analyze(model, train, metric=make(METRIC_QUANTIZER[q]), bits=bits)
    print("tables in", time.perf_counter() - t, flush=True)

    def top1(policy, only=None):
        out = {q: evaluate_policy(model, policy, test=test, calib=calib, calib_config=cfg).accuracy.top1
               for q, cfg in QUANTIZERS.items() if only in (None, q)}
        print(f"  {time.perf_counter() - t:.0f} s", out, flush=True)
        return out

    records, rows = [], []
    for label, (budget, act_bits, spec) in budgets.items():
        rec = {"budget": label, "limits": budget.to_dict(), "act_bits": act_bits, "policies": {}}
        if spec:
            uni = qp.uniform_policy(model, spec)
        else:  # W2.5: the best uniform policy within the budget
            uni = qp.search(tables["qerror", "ours"], budget, strategy="uniform", act_bits=act_bits,
                            first_last=8).policy
        rec["uniform"] = top1(uni)
        rec["policies"]["uniform"] = uni.to_dict()
        for col, (_, strategy) in METHODS.items():
            rec[col] = {}
            for q in QUANTIZERS:  # each quantizer gets the policy searched on its own metric table
                r = qp.search(tables[col, q], budget, strategy=strategy, act_bits=act_bits, first_last=8)
                rec[col].update(top1(r.policy, only=q))
                rec["policies"][f"{col}/{q}"] = r.policy.to_dict()
        rnd = [top1(qp.search(tables["qerror", "ours"], budget, strategy="random", seed=s, act_bits=act_bits,
                              first_last=8).policy) for s in range(args.randoms)]
        rec["random"] = rnd
        rec["random_median"] = {q: statistics.median(r[q] for r in rnd) for q in QUANTIZERS}
        searched = {q: max(METHODS, key=lambda c, q=q: rec[c][q]) for q in QUANTIZERS}
        rec["best_searched"] = {q: {"method": c, "top1": rec[c][q], "gain_over_uniform": rec[c][q] - rec["uniform"][q]}
                                for q, c in searched.items()}
        records.append(rec)
        print({k: v for k, v in rec.items() if k != "policies"}, flush=True)
        for q in QUANTIZERS:
            rs = [r[q] for r in rnd]
            best = rec["best_searched"][q]
            rows.append([label, q, f"{rec['uniform'][q]:.2f}", *(f"{rec[c][q]:.2f}" for c in METHODS),
                         f"{rec['random_median'][q]:.2f} ({min(rs):.1f}-{max(rs):.1f})",
                         f"{best['gain_over_uniform']:+.2f} ({best['method']})"])
    table = md_table(["budget", "quantizer", "uniform", "te (paper)", "te noise", "te noise+norm", "hessian",
                      "fisher", "qerror", "kl", f"random median of {args.randoms} (range)", "best searched - uniform"],
                     rows)
    notes = ("ResNet-20, CIFAR-10 test set, top-1 % after PTQ only. Quantizers: `minmax` = plain min-max ranges, "
             "no BN re-estimation; `ours` = MSE clipping + BN re-estimation on 4,096 augmented training images. "
             "First and last layer W8A8 in every policy; size budgets hold activations at 8 bits. Candidate bits "
             "{2,3,4,5,6,8}. te columns use te-lp (ordering constraint), the others the ilp. te (paper): damage "
             "TE*(8-b), i.e. maximize sum TE_i*b_i; te noise: damage TE*4^(2-b); +norm: channel entropy divided by "
             "log min(N, |Omega|). Sensitivity from one batch of 128 plain training images (te: 128 images of "
             "class 0); hessian, fisher, qerror and kl score each layer with the quantizer of the row (min-max or "
             "MSE clipping), so each row's policies are searched for the quantizer that evaluates them.")
    write("search_quality", {"results": records}, table, notes)


if __name__ == "__main__":
    main()
