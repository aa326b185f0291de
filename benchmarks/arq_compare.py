"""ARQ vs uniform vs fisher + ILP at equal BitOPs: clean and certified accuracy of the smoothed classifier.

    qpolicy train-noise --model resnet20 --sigma 0.25       # once
    python benchmarks/certify_sanity.py                      # the float test reference (n = 10,000)
    python benchmarks/arq_compare.py [--specs w4a4,w3a4] [--episodes 25]

At the BitOPs of uniform W4A4 and of W3A4 (first/last layer 8 bits) three policies of the noise-trained ResNet-20:
the uniform one, fisher + ILP (fisher on noisy training images) and ARQ's (DDPG, reward from the smoothed
classifier's accuracy and ACR on 40 validation images). Every choice is made on validation or training images; the
test split only reports. Each policy is PTQ'd (MSE, BN re-estimation, on noisy calibration images) and measured
the same way: clean test top-1 of the base classifier (10,000 images) and its smoothed classifier certified by IRS
from the float model's test certificates (every 100th test image, n = 10,000, n_p = 1,000, no fallback: an image IRS
cannot certify counts as abstained, so these figures are lower bounds, the same rule for every policy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import md_table, write
from certify_sanity import reference_dir

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy
from qpolicy.rl.arq import ARQConfig, search_arq
from qpolicy.rl.ddpg import DDPGConfig
from qpolicy.robust.certify import certify_model
from qpolicy.robust.irs import IRSConfig
from qpolicy.robust.noise import NoisyBatches, load_noise_model, noise_model_dir
from qpolicy.robust.smoothing import SmoothConfig, load_certify

BITS = (2, 3, 4, 5, 6, 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--specs", default="w4a4,w3a4")
    ap.add_argument("--episodes", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--n-p", type=int, default=1000, help="IRS samples per test image")
    ap.add_argument("--out", default="runs/bench/arq")
    args = ap.parse_args()
    model = load_noise_model(qp.models.load("resnet20"), noise_model_dir("resnet20", args.sigma))
    reference = load_certify(reference_dir(args.sigma))
    cfg = SmoothConfig(**reference["settings"]["config"])
    images = len(reference["records"])
    calib = qp.data.calib_loader("cifar10")
    test = qp.data.loader("cifar10", "test", batch_size=500)
    layers = qp.quantizable_layers(model)
    fisher = qp.analyze(model, NoisyBatches(qp.data.loader("cifar10", "train", batch_size=128, shuffle=True,
                                                           augment=False), args.sigma),
                        metric="fisher", bits=BITS, model_name="resnet20")

    def measure(label: str, policy, spec: str, search_seconds: float, episodes: int | None) -> dict:
        slug = f"{spec}_{label.split()[0].lower()}"
        ev = evaluate_policy(model, policy, test=test, calib=NoisyBatches(calib, args.sigma, seed=cfg.seed))
        cert = certify_model(model, policy, config=cfg, out_dir=Path(args.out) / slug, split="test", images=images,
                             resume=True, calib=calib, calib_config=qp.CalibConfig(), reference=reference,
                             irs=IRSConfig(n_p=args.n_p, fallback=False), model_name="resnet20")
        s = cert["summary"]
        return {"label": label, "spec": spec, "bitops_rel_w8a8": ev.cost.bitops_rel_w8a8,
                "size_rel_w8a8": ev.cost.size_rel_w8a8, "base_top1": ev.accuracy.top1, "smoothed": s,
                "search_seconds": search_seconds, "episodes": episodes, "policy": policy.to_dict()}

    fp = reference["summary"]
    fp_top1 = qp.evaluate(model, test).top1
    results = [{"label": "float (FP32)", "spec": "-", "bitops_rel_w8a8": 16.0, "base_top1": fp_top1, "smoothed": fp,
                "search_seconds": 0.0, "episodes": None}]
    for spec in args.specs.split(","):
        uni = qp.uniform_policy(model, spec)
        rel = qp.policy_cost(layers, uni).bitops_rel_w8a8
        budget = qp.Budget(bitops=rel)
        results.append(measure(f"uniform {spec.upper()}", uni, spec, 0.0, None))
        t = time.perf_counter()
        ilp = qp.search(fisher, budget, first_last=8)
        results.append(measure("fisher + ILP", ilp.policy, spec, fisher.provenance.get("seconds", 0.0)
                               + time.perf_counter() - t, None))
        t = time.perf_counter()
        arq = search_arq(model, budget, calib=calib, out_dir=Path(args.out) / f"search_{spec}", sigma=args.sigma,
                         config=ARQConfig(episodes=args.episodes, val_images=args.val_images, test_images=0,
                                          ddpg=DDPGConfig(warmup=args.warmup)),
                         resume=True, model_name="resnet20")
        results.append(measure("ARQ (DDPG)", arq.policy, spec, time.perf_counter() - t, args.episodes))
        results[-1]["arq"] = arq.policy.provenance["arq"]
        results[-1]["history"] = [{k: v for k, v in h.items() if k != "policy"} for h in arq.extra["history"]]
        print(results[-3:], flush=True)
    rows = []
    for r in results:
        s = r["smoothed"]
        ca = s["certified_accuracy"]
        rows.append([r["label"], r["spec"].upper(), f"{r['bitops_rel_w8a8']:.3f}", f"{r['base_top1']:.2f}",
                     f"{s['clean_accuracy']:.0f}", f"{s['acr']:.3f}", f"{ca['0.25']:.0f}", f"{ca['0.5']:.0f}",
                     f"{r['search_seconds']:.0f}", r["episodes"] or "-"])
    table = md_table(["policy", "budget", "BitOPs / W8A8", "base top-1 (clean test) %", "smoothed accuracy %",
                      "ACR", "certified acc. r=0.25 %", "r=0.5 %", "search s", "episodes"], rows)
    notes = (f"Noise-trained ResNet-20 (sigma = {cfg.sigma:g}). Smoothed figures on {images} test images (every "
             f"{10000 // images}th): the float row is certified from scratch (n = {cfg.n:,}); each policy by IRS "
             f"from it (n_p = {args.n_p:,}, no fallback: lower bounds). ARQ: {args.episodes} episodes "
             f"({args.warmup} random warm-up), reward on {args.val_images} validation images (IRS, n_p = 300, "
             "reference n = 2,000), reward R = 0.5 * relative accuracy loss + 0.5 * relative ACR loss (our choice; "
             "the paper gives none). HAQ/ARQ run hundreds of episodes on a GPU; this is a CPU-sized search.")
    write(f"arq_compare_sigma{args.sigma:g}", {"results": results, "reference": str(reference_dir(args.sigma)),
                                              "config": cfg.to_dict()}, table, notes)


if __name__ == "__main__":
    main()
