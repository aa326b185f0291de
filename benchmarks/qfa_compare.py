"""QFA: one bit-width supernet of ResNet-20 for every policy, against PTQ and QAT of the plain model per policy,
with and without BatchQuant; its accuracy predictor; its NSGA-II front against the fisher + ILP front.

    python benchmarks/qfa_compare.py [--train-images 8000] [--randoms 10] [--qat 1] [--samples 24]

Reduced scale on 2 CPU cores, stated in the result: the supernet trains one epoch on a subset of the training
images (the paper: many epochs on ImageNet), random policies are fewer than 50 and top-1 is on a test subset.
Every choice (predictor, NSGA-II finalists) is made on validation images; test only reports.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
from _common import md_table, write

import qpolicy as qp
from qpolicy.search.nsga import NSGAConfig, nsga2_front
from qpolicy.supernet.predictor import AccuracyPredictor, PredictorConfig, kendall_tau
from qpolicy.supernet.shared import QFAConfig, load_qfa, policy_of, sandwich, subnet_model, train_qfa

RUN = Path(__file__).resolve().parent.parent / "runs" / "bench" / "qfa"


def arms() -> dict[str, QFAConfig]:
    """The two supernets compared: they differ in the activation quantizer only (one change at a time; the
    calibration of the initial step sizes, weights included, is the same MSE rule in both)."""
    return {aq: QFAConfig(act_quantizer=aq, checkpoint_every=50) for aq in ("batchquant", "lsq")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-images", type=int, default=8000)
    ap.add_argument("--randoms", type=int, default=10)
    ap.add_argument("--qat", type=int, default=1, help="random policies also fine-tuned 1 epoch (besides extremes)")
    ap.add_argument("--qat-images", type=int, default=4000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=24, help="subnets measured for the predictor")
    ap.add_argument("--budgets", default="0.08,0.12,0.16,0.2,0.26")
    args = ap.parse_args()
    model = qp.models.load("resnet20")
    train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.train_images)
    calib = qp.data.calib_loader("cifar10", batches=16)
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.test_images)
    val = qp.data.loader("cifar10", "val", batch_size=500, limit=1000)
    out: dict = {"settings": vars(args)}

    nets = {}
    for aq, cfg in arms().items():  # BatchQuant vs plain (MSE-calibrated, then learned) activation steps
        run = RUN / aq
        t = time.perf_counter()
        res = train_qfa(model, train, calib=calib, config=cfg, out_dir=run,
                        resume=(run / "checkpoint.pt").exists(), model_name="resnet20")
        nets[aq] = load_qfa(model, run)
        out[f"train_{aq}"] = {"seconds": time.perf_counter() - t, "history": list(res.train.history)}
        print(aq, res.train.history[-1], flush=True)

    net, cfg = nets["batchquant"]
    cands = {n: (m.bits["weight"], m.bits["act"]) for n, m in net.mixed_layers()}
    rng = random.Random(1)
    largest, smallest, *drawn = sandwich(rng, cands, args.randoms)
    policies = {"largest": policy_of(largest), "smallest": policy_of(smallest),
                **{f"random {i}": policy_of(a) for i, a in enumerate(drawn)}}
    rows, per_policy = [], {}
    qat_names = ["largest", "smallest", *[f"random {i}" for i in range(args.qat)]]
    qat_train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.qat_images)
    for name, pol in policies.items():
        rec = {"bitops_rel_w8a8": qp.policy_cost(net.layers, pol).bitops_rel_w8a8}
        for aq, (n, c) in nets.items():
            rec[f"supernet_{aq}"] = qp.evaluate(subnet_model(n, pol, calib, c), test).top1
        q = qp.apply_policy(model, pol, calib=calib)
        rec["ptq"] = qp.evaluate(q, test).top1
        if name in qat_names:
            qp.finetune(q, qat_train, config=qp.FinetuneConfig(epochs=1, checkpoint_every=0))
            rec["qat_1epoch"] = qp.evaluate(q, test).top1
        per_policy[name] = rec
        rows.append([name, f"{rec['bitops_rel_w8a8']:.3f}", f"{rec['supernet_batchquant']:.2f}",
                     f"{rec['supernet_lsq']:.2f}", f"{rec['ptq']:.2f}",
                     f"{rec['qat_1epoch']:.2f}" if "qat_1epoch" in rec else "-"])
        print(rows[-1], flush=True)
    out["policies"] = per_policy
    rnd = [r for k, r in per_policy.items() if k.startswith("random")]
    summ = [[k, f"{statistics.median(r[k] for r in rnd):.2f}", f"{min(r[k] for r in rnd):.2f}",
             f"{max(r[k] for r in rnd):.2f}"] for k in ("supernet_batchquant", "supernet_lsq", "ptq")]
    policy_table = md_table(["policy", "BitOPs / W8A8", "QFA supernet (BatchQuant)", "QFA supernet (LSQ acts)",
                             "PTQ of the plain model", "QAT 1 epoch"], rows)
    summary_table = md_table(["method", f"median of {len(rnd)} random", "min", "max"], summ)

    # predictor on measured validation subnets, tau on held-out ones
    variables = [(n, s) for n, (w, a) in cands.items() for s, b in ((0, w), (1, a)) if len(b) > 1]
    sizes = [len(cands[n][s]) for n, s in variables]

    def assignment(enc):
        a = {n: [max(w), max(x)] for n, (w, x) in cands.items()}
        for (n, s), k in zip(variables, enc, strict=True):
            a[n][s] = cands[n][s][int(k)]
        return {n: tuple(v) for n, v in a.items()}

    erng = np.random.default_rng(0)
    enc = np.stack([erng.integers(0, s, size=args.samples) for s in sizes], axis=1)
    t = time.perf_counter()
    acc = np.array([qp.evaluate(subnet_model(net, policy_of(assignment(e)), calib, cfg), val).top1 for e in enc])
    measure_seconds = time.perf_counter() - t
    n_fit = int(0.75 * len(enc))
    held = AccuracyPredictor(sizes, PredictorConfig()).fit(enc[:n_fit], acc[:n_fit])
    tau = kendall_tau(held.predict(enc[n_fit:]), acc[n_fit:])
    pred = AccuracyPredictor(sizes, PredictorConfig()).fit(enc, acc)
    out["predictor"] = {"kendall_tau": tau, "held_out": len(enc) - n_fit, "measured": len(enc),
                        "measure_seconds": measure_seconds}

    layers = qp.quantizable_layers(model)
    fisher = qp.analyze(model, qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False),
                        metric="fisher", bits=(2, 3, 4, 8), model_name="resnet20")
    front_rows, fronts = [], []
    info = {li.name: li for li in layers}

    def bitops(e):
        tot = np.zeros(len(e))
        for n, (wb, ab) in cands.items():
            w = np.full(len(e), max(wb), float)
            a = np.full(len(e), max(ab), float)
            for j, (vn, s) in enumerate(variables):
                if vn == n:
                    (w if s == 0 else a)[:] = np.asarray(cands[n][s], float)[e[:, j]]
            tot += info[n].macs * w * a
        return tot / sum(li.macs * 64 for li in layers)

    for b in (float(x) for x in args.budgets.split(",")):
        t = time.perf_counter()
        fe, fp, _ = nsga2_front(sizes, pred.predict, bitops, limit=b, config=NSGAConfig(seed=0))
        picks = np.argsort(-fp, kind="stable")[:4]
        fin = [(fe[i], qp.evaluate(subnet_model(net, policy_of(assignment(fe[i])), calib, cfg), val).top1)
               for i in picks]
        best = policy_of(assignment(max(fin, key=lambda f: f[1])[0]))
        qfa_seconds = time.perf_counter() - t
        qfa_test = qp.evaluate(subnet_model(net, best, calib, cfg), test).top1
        ilp = qp.search(fisher, qp.Budget(bitops=b), first_last=8).policy
        ilp_test = qp.evaluate(qp.apply_policy(model, ilp, calib=calib), test).top1
        rec = {"budget": b, "qfa_policy": best.to_dict(), "qfa_test_top1": qfa_test, "qfa_seconds": qfa_seconds,
               "qfa_bitops": qp.policy_cost(layers, best).bitops_rel_w8a8, "ilp_policy": ilp.to_dict(),
               "ilp_test_top1": ilp_test, "ilp_bitops": qp.policy_cost(layers, ilp).bitops_rel_w8a8,
               "ilp_seconds": fisher.provenance.get("seconds")}
        fronts.append(rec)
        front_rows.append([f"{b:g}", f"{rec['qfa_bitops']:.3f}", f"{qfa_test:.2f}", f"{qfa_seconds:.0f}",
                           f"{rec['ilp_bitops']:.3f}", f"{ilp_test:.2f}"])
        print(front_rows[-1], flush=True)
    out["fronts"] = fronts
    front_table = md_table(["BitOPs budget", "QFA BitOPs", "QFA supernet top-1", "QFA search s (NSGA + finalists)",
                            "fisher+ILP BitOPs", "fisher+ILP PTQ top-1"], front_rows)
    tr = {aq: out[f"train_{aq}"] for aq in nets}
    points = len(tr["batchquant"]["history"][-1]["sandwich_loss_curve"])
    every = tr["batchquant"]["history"][-1]["curve_every"]
    shown = sorted({0, points // 4, points // 2, 3 * points // 4, points - 1}) if points else []
    curve = md_table(["act quantizer", *(f"loss, steps {i * every}-{(i + 1) * every}" for i in shown),
                      "epoch loss", "largest subnet, test top-1 %", "seconds"],
                     [[aq, *(f"{v['history'][-1]['sandwich_loss_curve'][i]:.3f}" for i in shown),
                       f"{v['history'][-1]['loss']:.3f}", f"{per_policy['largest'][f'supernet_{aq}']:.2f}",
                       f"{v['seconds']:.0f}"]
                      for aq, v in tr.items()])
    notes = (f"ResNet-20, candidate bits 2, 3, 4, 8 for weights and activations (first/last layer 8), supernet trained "
             f"1 epoch on {args.train_images} training images (sandwich: largest, smallest, 2 random per step; "
             f"distillation from the float model), BatchQuant activations vs plain activation quantizers (a "
             f"step size per candidate, MSE-calibrated once, then learned by LSQ); nothing else differs between the "
             f"two supernets, and each subnet's BatchNorm and BatchQuant statistics are re-estimated in the quantized "
             f"subnet (as it was trained). Top-1 on {args.test_images} "
             f"test images. QAT: 1 epoch on "
             f"{args.qat_images} training images from the PTQ model. Predictor: MLP on {args.samples} subnets "
             f"measured on 1,000 validation images, "
             f"Kendall tau {tau if tau is None else f'{tau:.3f}'} on {len(enc) - n_fit} held out "
             f"({measure_seconds:.0f} s of measurement). Fronts: NSGA-II (64 x 60) on the predictor, 4 finalists "
             "re-measured on validation, against the fisher + ILP policy (PTQ of the plain model) at each budget.")
    write("qfa_compare", out, f"## Training\n\n{curve}\n\n## Policies (top-1 %)\n\n{policy_table}\n\n"
                              f"{summary_table}\n\n## Fronts\n\n{front_table}", notes)


if __name__ == "__main__":
    main()
