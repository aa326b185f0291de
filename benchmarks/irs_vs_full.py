"""Incremental randomized smoothing (IRS) vs certifying from scratch, on the same quantized models and images.

    python benchmarks/certify_sanity.py            # first: the float reference (records its first 1,000 samples)
    python benchmarks/irs_vs_full.py [--images 25] [--n-p 1000]

For uniform W8A8, uniform W4A4 and a mixed policy (fisher + ILP at the BitOPs of W4A4), each PTQ'd from the
noise-trained ResNet-20 (calibrated on noisy training images), the smoothed classifier is certified twice on the same
test images with the same noise: from scratch (n0 = 100, n as the reference, 10,000) and by IRS from the float
model's certificates (n_p shared-noise samples, falling back to from-scratch where IRS cannot certify).
"""

from __future__ import annotations

import argparse
import statistics

from _common import md_table, write
from certify_sanity import reference_dir

import qpolicy as qp
from qpolicy.robust.certify import certify_model
from qpolicy.robust.irs import IRSConfig
from qpolicy.robust.noise import NoisyBatches, load_noise_model, noise_model_dir
from qpolicy.robust.smoothing import SmoothConfig, load_certify


def mixed_policy(model, sigma: float):
    """fisher + ILP at the BitOPs of uniform W4A4 (first/last 8), on noisy training images."""
    budget_cost = qp.policy_cost(qp.quantizable_layers(model), qp.uniform_policy(model, "w4a4")).bitops_rel_w8a8
    train = NoisyBatches(qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False), sigma)
    table = qp.analyze(model, train, metric="fisher", bits=(2, 3, 4, 5, 6, 8), model_name="resnet20")
    res = qp.search(table, qp.Budget(bitops=budget_cost), first_last=8)
    return res.policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--images", type=int, default=25)
    ap.add_argument("--n-p", type=int, default=1000)
    ap.add_argument("--out", default="runs/bench/irs")
    args = ap.parse_args()
    model = load_noise_model(qp.models.load("resnet20"), noise_model_dir("resnet20", args.sigma))
    reference = load_certify(reference_dir(args.sigma))
    cfg = SmoothConfig(**reference["settings"]["config"])
    calib = qp.data.calib_loader("cifar10")
    policies = {"uniform W8A8": qp.uniform_policy(model, "w8a8"), "uniform W4A4": qp.uniform_policy(model, "w4a4"),
                "fisher + ILP at W4A4 BitOPs": mixed_policy(model, args.sigma)}
    rows, out = [], {}
    for label, policy in policies.items():
        slug = label.split()[0] + "_" + label.split()[1].lower().replace("+", "")
        res = {}
        for method in ("full", "irs"):
            res[method] = certify_model(
                model, policy, config=cfg, out_dir=f"{args.out}/{slug}_{method}", split="test", images=args.images,
                resume=True, calib=calib, calib_config=qp.CalibConfig(),
                reference=reference if method == "irs" else None, irs=IRSConfig(n_p=args.n_p),
                model_name="resnet20")
        full, irs = res["full"], res["irs"]
        diffs = [b["radius"] - a["radius"] for a, b in zip(full["records"], irs["records"], strict=True)]
        same_pred = sum(a["prediction"] == b["prediction"] for a, b in zip(full["records"], irs["records"],
                                                                            strict=True))
        methods = [r["method"] for r in irs["records"]]
        fs, is_ = full["summary"], irs["summary"]
        out[label] = {"policy": policy.to_dict(), "full": fs, "irs": is_, "radius_diff": diffs,
                      "irs_methods": {m: methods.count(m) for m in sorted(set(methods))},
                      "same_prediction": same_pred, "bitops_rel_w8a8": irs.get("cost", {}).get("bitops_rel_w8a8")}
        rows.append([label, f"{fs['acr']:.3f}", f"{is_['acr']:.3f}", f"{statistics.mean(diffs):+.3f}",
                     f"{min(diffs):+.3f} / {max(diffs):+.3f}", f"{methods.count('irs')}/{len(methods)}",
                     f"{fs['samples']:,}", f"{is_['samples']:,}", f"{fs['samples'] / max(is_['samples'], 1):.2f}x",
                     f"{fs['seconds']:.0f}", f"{is_['seconds']:.0f}",
                     f"{fs['seconds'] / max(is_['seconds'], 1e-9):.1f}x"])
        print(rows[-1], flush=True)
    table = md_table(["policy", "ACR full", "ACR IRS", "mean radius diff (IRS - full)", "min / max diff",
                      "certified by IRS (rest: fallback)", "samples full", "samples IRS",
                      "speed-up (forward passes)", "s full", "s IRS", "speed-up (seconds)"], rows)
    notes = (f"Noise-trained ResNet-20, sigma = {cfg.sigma:g}, {args.images} test images (every "
             f"{10000 // args.images}th), alpha = {cfg.alpha:g}. Full: n0 = {cfg.n0}, n = {cfg.n:,} per image. IRS: "
             f"the float model's certificates (n = {cfg.n:,}) plus n_p = {args.n_p:,} shared-noise samples bounding "
             "the disagreement zeta; a certificate holds with probability 1 - 2 alpha (union bound). Where IRS cannot "
             "certify (the float model abstained, or p_A - zeta_up <= 1/2) it certifies from scratch, counted in "
             "its samples and seconds. Seconds exclude the one-time float certification IRS reuses; they are "
             "wall time on a shared 2-core machine (the forward-pass ratio is the machine-independent speed-up). "
             "Ugare et al. report up to 4.1x speed-ups (their setting: n_p chosen per model, GPU).")
    write("irs_vs_full", {"settings": {"reference": str(reference_dir(args.sigma)), "config": cfg.to_dict(),
                                       "n_p": args.n_p, "images": args.images}, "results": out}, table, notes)


if __name__ == "__main__":
    main()
