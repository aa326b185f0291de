"""QFA: one bit-width supernet of ResNet-20 for every policy, against PTQ and QAT of the plain model per policy,
with and without BatchQuant; its accuracy predictor; its NSGA-II front against the fisher + ILP front.

    python benchmarks/qfa_compare.py [--model resnet20-heldout] [--train-images 8000] [--randoms 10] [--qat 1]

Reduced scale on 2 CPU cores, stated in the result: the supernet trains one epoch on a subset of the training
images (the paper: many epochs on ImageNet), random policies are fewer than 50. Every choice (predictor, NSGA-II
finalists) is made on images the base model never saw: the 'select' half of the test split (the published ResNet-20
was trained on all 50,000 training images, our validation split included) or, for ``--model resnet20-heldout``
(trained here without them), the validation split; every figure is on images no choice saw (the other, 'report',
half or the whole test split). Each comparison the paper's claims rest on carries a 95% paired bootstrap interval over
the report images and a verdict (held / not held / undecided).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
from _common import add_base_model, md_table, write

import qpolicy as qp
from qpolicy.search.nsga import NSGAConfig, nsga2_front
from qpolicy.stats import pack_outcomes, paired_difference_interval, unpack_outcomes, verdict
from qpolicy.supernet.predictor import AccuracyPredictor, PredictorConfig, kendall_tau
from qpolicy.supernet.shared import QFAConfig, load_qfa, policy_of, sandwich, subnet_model, train_qfa

RUN = Path(__file__).resolve().parent.parent / "runs" / "bench" / "qfa"  # the supernets (resumable)


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
    ap.add_argument("--test-images", type=int, help="report on this many images of the report split (default: all)")
    add_base_model(ap)
    ap.add_argument("--select-on", choices=["val", "select"],
                    help="where the choices are made: the validation split when the model never saw it, else the "
                         "'select' half of the test split (the default follows the model)")
    ap.add_argument("--samples", type=int, default=24, help="subnets measured for the predictor")
    ap.add_argument("--budgets", default="0.08,0.12,0.16,0.2,0.26")
    ap.add_argument("--out", type=Path, help="where the supernets are trained (resumed when there; default "
                                             "runs/bench/qfa, or runs/bench/qfa_MODEL for another model)")
    ap.add_argument("--name", default="qfa_compare", help="result file name")
    args = ap.parse_args()
    model = qp.models.load(args.model)
    if args.select_on is None:
        args.select_on = "select" if model.sees_validation else "val"
    if args.out is None:
        args.out = RUN if args.model == "resnet20" else RUN.with_name(f"qfa_{args.model}")
    train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.train_images)
    calib = qp.data.calib_loader("cifar10", batches=16)
    report = "report" if args.select_on == "select" else "test"  # never an image a choice was made on
    test = qp.data.loader("cifar10", report, batch_size=500, limit=args.test_images)
    val = qp.data.loader("cifar10", args.select_on, batch_size=500, limit=1000)
    report_images = len(test.indices)

    def on_test(m) -> tuple[float, dict]:
        """Top-1 on the report images and the per-image outcomes (for paired intervals)."""
        ev = qp.evaluate(m, test, per_sample=True)
        return ev.top1, pack_outcomes(ev.per_sample)
    out: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    nets = {}
    for aq, cfg in arms().items():  # BatchQuant vs plain (MSE-calibrated, then learned) activation steps
        run = args.out / aq
        t = time.perf_counter()
        res = train_qfa(model, train, calib=calib, config=cfg, out_dir=run,
                        resume=(run / "checkpoint.pt").exists(), model_name=args.model)
        nets[aq] = load_qfa(model, run)
        out[f"train_{aq}"] = {"seconds": time.perf_counter() - t, "history": list(res.train.history)}
        print(aq, res.train.history[-1], flush=True)

    net, cfg = nets["batchquant"]
    cands = {n: (m.bits["weight"], m.bits["act"]) for n, m in net.mixed_layers()}
    rng = random.Random(1)
    largest, smallest, *drawn = sandwich(rng, cands, args.randoms)
    policies = {"largest": policy_of(largest), "smallest": policy_of(smallest),
                **{f"random {i}": policy_of(a) for i, a in enumerate(drawn)}}
    rows, per_policy, outcomes = [], {}, {}
    qat_names = ["largest", "smallest", *[f"random {i}" for i in range(args.qat)]]
    qat_train = qp.data.loader("cifar10", "train", batch_size=128, seed=0, limit=args.qat_images)
    for name, pol in policies.items():
        rec = {"bitops_rel_w8a8": qp.policy_cost(net.layers, pol).bitops_rel_w8a8}
        per = outcomes[name] = {}
        for aq, (n, c) in nets.items():
            rec[f"supernet_{aq}"], per[f"supernet_{aq}"] = on_test(subnet_model(n, pol, calib, c))
        q = qp.apply_policy(model, pol, calib=calib)
        rec["ptq"], per["ptq"] = on_test(q)
        if name in qat_names:
            qp.finetune(q, qat_train, config=qp.FinetuneConfig(epochs=1, checkpoint_every=0))
            rec["qat_1epoch"], per["qat_1epoch"] = on_test(q)
        per_policy[name] = rec
        rows.append([name, f"{rec['bitops_rel_w8a8']:.3f}", f"{rec['supernet_batchquant']:.2f}",
                     f"{rec['supernet_lsq']:.2f}", f"{rec['ptq']:.2f}",
                     f"{rec['qat_1epoch']:.2f}" if "qat_1epoch" in rec else "-"])
        print(rows[-1], flush=True)
    out["policies"] = per_policy
    out["per_sample"] = outcomes
    claims = claim_rows(outcomes)
    out["claims"] = claims
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
                        metric="fisher", bits=(2, 3, 4, 8), model_name=args.model)
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
        qfa_test, qfa_per = on_test(subnet_model(net, best, calib, cfg))
        ilp = qp.search(fisher, qp.Budget(bitops=b), first_last=8).policy
        ilp_test, ilp_per = on_test(qp.apply_policy(model, ilp, calib=calib))
        ci = paired_difference_interval(unpack_outcomes(qfa_per), unpack_outcomes(ilp_per), scale=100.0)
        rec = {"budget": b, "qfa_policy": best.to_dict(), "qfa_test_top1": qfa_test, "qfa_seconds": qfa_seconds,
               "qfa_bitops": qp.policy_cost(layers, best).bitops_rel_w8a8, "ilp_policy": ilp.to_dict(),
               "ilp_test_top1": ilp_test, "ilp_bitops": qp.policy_cost(layers, ilp).bitops_rel_w8a8,
               "ilp_seconds": fisher.provenance.get("seconds"), "qfa_minus_ilp_ci": ci,
               "verdict": verdict(ci, 0.0), "per_sample": {"qfa": qfa_per, "ilp": ilp_per}}
        fronts.append(rec)
        front_rows.append([f"{b:g}", f"{rec['qfa_bitops']:.3f}", f"{qfa_test:.2f}", f"{qfa_seconds:.0f}",
                           f"{rec['ilp_bitops']:.3f}", f"{ilp_test:.2f}", _ci(qfa_test - ilp_test, ci),
                           rec["verdict"]])
        print(front_rows[-1], flush=True)
    out["fronts"] = fronts
    front_table = md_table(["BitOPs budget", "QFA BitOPs", "QFA supernet top-1", "QFA search s (NSGA + finalists)",
                            "fisher+ILP BitOPs", "fisher+ILP PTQ top-1", "QFA - ILP [95% CI]",
                            "QFA above ILP"], front_rows)
    claim_table = md_table(["claim", "comparison", "policies", "median difference (points)",
                            "rows held / not held / undecided", "verdict"],
                           [[c["claim"], c["comparison"], c["policies"], f"{c['median']:+.2f}",
                             f"{c['counts']['held']} / {c['counts']['not held']} / {c['counts']['undecided']}",
                             c["verdict"]] for c in claims])
    tr = {aq: out[f"train_{aq}"] for aq in nets}
    points = len(tr["batchquant"]["history"][-1]["sandwich_loss_curve"])
    every = tr["batchquant"]["history"][-1]["curve_every"]
    shown = sorted({0, points // 4, points // 2, 3 * points // 4, points - 1}) if points else []
    curve = md_table(["act quantizer", *(f"loss, steps {i * every}-{(i + 1) * every}" for i in shown),
                      "epoch loss", "largest subnet, report top-1 %", "seconds"],
                     [[aq, *(f"{v['history'][-1]['sandwich_loss_curve'][i]:.3f}" for i in shown),
                       f"{v['history'][-1]['loss']:.3f}", f"{per_policy['largest'][f'supernet_{aq}']:.2f}",
                       f"{v['seconds']:.0f}"]
                      for aq, v in tr.items()])
    split_note = (f"Every choice (predictor, finalists) on the 'select' half of the test split, every figure on "
                  f"{report_images:,} images of the 'report' half (the published ResNet-20 was trained on all 50,000 "
                  "training images, the validation split included)" if args.select_on == "select" else
                  f"Every choice on the validation split, which {args.model} never saw (trained here on the other "
                  f"45,000 training images), every figure on {report_images:,} test images")
    notes = (f"{split_note}. Base model {args.model}, candidate bits 2, 3, 4, 8 for weights and activations "
             "(first/last layer 8), supernet trained "
             f"1 epoch on {args.train_images} training images (sandwich: largest, smallest, 2 random per step; "
             f"distillation from the float model), BatchQuant activations vs plain activation quantizers (a "
             f"step size per candidate, MSE-calibrated once, then learned by LSQ); nothing else differs between the "
             f"two supernets, and each subnet's BatchNorm and BatchQuant statistics are re-estimated in the quantized "
             f"subnet (as it was trained). QAT: 1 epoch on "
             f"{args.qat_images} training images from the PTQ model. Predictor: MLP on {args.samples} subnets "
             f"measured on 1,000 {args.select_on} images, "
             f"Kendall tau {tau if tau is None else f'{tau:.3f}'} on {len(enc) - n_fit} held out "
             f"({measure_seconds:.0f} s of measurement). Fronts: NSGA-II (64 x 60) on the predictor, 4 finalists "
             f"re-measured on the {args.select_on} images, against the fisher + ILP policy (PTQ of the plain model) "
             "at each budget. "
             "Claims: each policy's paired difference on the report images gets a 95% bootstrap interval; a row is "
             "held when the interval is above 0 (above -1 point for 'matches QAT'), not held when it is below, else "
             "undecided; the claim's verdict is held only when every row is.")
    write(args.name, out, f"## Claims\n\n{claim_table}\n\n## Training\n\n{curve}\n\n## Policies (top-1 %)"
                              f"\n\n{policy_table}\n\n{summary_table}\n\n## Fronts\n\n{front_table}", notes)


def _ci(diff: float, ci) -> str:
    return f"{diff:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


CLAIMS = (("BatchQuant lets the supernet train: its subnets beat the same supernet with plain learned activation "
           "steps", "supernet_batchquant", "supernet_lsq"),
          ("A subnet is usable without retraining: QFA subnet beats PTQ of the plain model", "supernet_batchquant",
           "ptq"),
          ("QFA subnet matches per-policy QAT (1 epoch here)", "supernet_batchquant", "qat_1epoch"))


def claim_rows(outcomes: dict[str, dict]) -> list[dict]:
    """Per claim: the paired difference (first - second) per policy with its interval, the verdicts and the claim's
    verdict (held only when every policy's is; 'matches' claims are judged at -1 point: not worse by more)."""
    from qpolicy.stats import overall_verdict

    out = []
    for claim, a, b in CLAIMS:
        rows, threshold = [], -1.0 if "matches" in claim else 0.0
        for name, per in outcomes.items():
            if a in per and b in per:
                x, y = unpack_outcomes(per[a]), unpack_outcomes(per[b])
                ci = paired_difference_interval(x, y, scale=100.0)
                rows.append({"policy": name, "difference": 100.0 * float(x.mean() - y.mean()), "ci": ci,
                             "verdict": verdict(ci, threshold)})
        if not rows:
            continue
        counts = {v: sum(r["verdict"] == v for r in rows) for v in ("held", "not held", "undecided")}
        out.append({"claim": claim, "comparison": f"{a} - {b} > {threshold:g}", "policies": len(rows),
                    "median": statistics.median(r["difference"] for r in rows), "counts": counts,
                    "verdict": overall_verdict([r["verdict"] for r in rows]), "rows": rows})
    return out


if __name__ == "__main__":
    main()
