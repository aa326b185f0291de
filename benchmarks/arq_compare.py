"""ARQ vs uniform vs fisher + ILP at equal BitOPs: clean and certified accuracy of the smoothed classifier.

    qpolicy train-noise --model resnet20 --sigma 0.25       # once
    python benchmarks/certify_sanity.py --split report       # the float reference on the report half (n = 10,000)
    python benchmarks/arq_compare.py [--specs w4a4,w3a4] [--episodes 25] [--name NAME]

    # on the held-out ResNet-20 (trained here without the validation images): rewards on validation images,
    # every figure on the whole test split
    qpolicy train-noise --model resnet20-heldout --sigma 0.25
    python benchmarks/certify_sanity.py --model resnet20-heldout --n 2000
    python benchmarks/arq_compare.py --model resnet20-heldout --select-on val

At the BitOPs of uniform W4A4 and of W3A4 (first/last layer 8 bits) three policies of the noise-trained ResNet-20:
the uniform one, fisher + ILP (fisher on noisy training images) and ARQ's (DDPG, reward from the smoothed
classifier's accuracy and ACR on 40 images of the 'select' half of the test split: the published ResNet-20 was trained
on all 50,000 training images, the validation split included; ``--select-on val`` for a base trained here). Every
choice is made there or on training images; the other half of the test split ('report') only reports. Each policy
is PTQ'd the way ARQ rewarded it (``ARQConfig.calib_config``: MSE, BN re-estimation, on noisy calibration images)
and every row, the float one included, is measured by the same two rules: clean top-1 of the base classifier on
every report image, and its smoothed classifier on 100 evenly spaced report images certified (a) from scratch
(Cohen et al., n = 10,000, as the float reference) and (b) by IRS from the float model's certificates (n_p = 1,000,
no fallback: an image IRS cannot certify counts as abstained, a lower bound). Rule (a) compares quantization alone;
(b) shows what the cheap incremental certificate costs on top (for the float row, IRS of the float model from its
own certificates: IRS's slack alone).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import md_table, write
from certify_sanity import model_suffix, reference_dir

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy
from qpolicy.rl.arq import SELECT_SPLITS as ARQ_SPLITS
from qpolicy.rl.arq import ARQConfig, search_arq
from qpolicy.rl.ddpg import DDPGConfig
from qpolicy.robust.certify import certify_model
from qpolicy.robust.irs import IRSConfig
from qpolicy.robust.noise import NoisyBatches, load_noise_model, noise_model_dir
from qpolicy.robust.smoothing import SmoothConfig, load_certify
from qpolicy.stats import pack_outcomes, paired_difference_interval, unpack_outcomes, verdict

BITS = (2, 3, 4, 5, 6, 8)


def image_radii(records) -> list[float]:
    """Per certified image (in image order), the certified radius where the smoothed prediction is right, else -1
    (wrong or abstained): ACR is the mean of these clipped at 0, certified accuracy at r the share >= r."""
    return [float(r["radius"]) if r["prediction"] == r["label"] else -1.0
            for r in sorted(records, key=lambda r: int(r["index"]))]


# ARQ's claim (Yang et al.): its policy keeps the smoothed classifier's clean accuracy and certified robustness better
# than other policies of the same budget. Each figure is ARQ minus a baseline of its spec, paired per image.
FIGURES = (("base top-1 (clean, all report images)", "base", None),
           ("ACR, from scratch", "scratch", "acr"), ("certified acc. r=0.25 %, from scratch", "scratch", 0.25),
           ("ACR, IRS", "irs", "acr"))


def _figure(r: dict, source: str, what) -> tuple[np.ndarray, float]:
    """Per-item values of a figure and the scale of its mean (points for 0/1 outcomes)."""
    if source == "base":
        return unpack_outcomes(r["per_sample"]), 100.0
    radii = np.asarray(r["smoothed"]["radii"][source], dtype=float)
    if what == "acr":
        return np.clip(radii, 0.0, None), 1.0
    return (radii >= what).astype(float), 100.0


def claim_rows(results: list[dict]) -> list[dict]:
    """ARQ minus each baseline of the same spec (and minus float: the quantization drop), per figure: the paired
    95% bootstrap interval and a verdict on "ARQ is better" (> 0)."""
    out = []
    float_row = next(r for r in results if r["spec"] == "-")
    for arq in (r for r in results if r["label"].startswith("ARQ")):
        others = [r for r in results if r["spec"] == arq["spec"] and r is not arq] + [float_row]
        for other in others:
            for label, source, what in FIGURES:
                a, scale = _figure(arq, source, what)
                b, _ = _figure(other, source, what)
                ci = paired_difference_interval(a, b, scale=scale)
                out.append({"spec": arq["spec"], "versus": other["label"], "figure": label, "items": len(a),
                            "difference": scale * float(a.mean() - b.mean()), "interval": ci,
                            "verdict": verdict(ci, 0.0)})
    return out


def claims_table(claims: list[dict]) -> str:
    rows = [[c["spec"].upper(), c["versus"], c["figure"], c["items"], f"{c['difference']:+.3f}",
             "-" if c["interval"] is None else f"[{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]", c["verdict"]]
            for c in claims]
    return ("ARQ minus each policy of its budget (paired over the same images, 95% bootstrap interval); verdict on "
            "'ARQ is better' (held: the whole interval above 0).\n\n"
            + md_table(["budget", "ARQ versus", "figure", "images", "ARQ - other", "95% CI", "ARQ better?"], rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20", help="the zoo model whose noise-trained base is searched "
                    "(resnet20-heldout: trained here without the validation images; use --select-on val)")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--specs", default="w4a4,w3a4")
    ap.add_argument("--episodes", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--n-p", type=int, default=1000, help="IRS samples per test image")
    ap.add_argument("--out", help="run folders (resumed; default runs/bench/arq[_MODEL])")
    ap.add_argument("--name", help="results/<name>.{json,md} (default arq_compare_sigma<SIGMA>; give another name "
                    "when running one spec, so that the other's results stay)")
    ap.add_argument("--select-on", default="select", choices=["val", "select"],
                    help="where ARQ's reward images come from (report on the test split's other half, or all of it)")
    args = ap.parse_args()
    name = args.model
    args.out = args.out or "runs/bench/arq" + model_suffix(name)
    if qp.models.spec(name).sees_validation and args.select_on == "val":
        raise SystemExit(f"{name} was trained on the validation images: choose on the select half (--select-on "
                         "select) or use a model trained here")
    model = load_noise_model(qp.models.load(name), noise_model_dir(name, args.sigma))
    report = ARQ_SPLITS[args.select_on]
    reference = load_certify(reference_dir(args.sigma, report, name))
    cfg = SmoothConfig(**reference["settings"]["config"])
    images = len(reference["records"])
    calib = qp.data.calib_loader("cifar10")
    test = qp.data.loader("cifar10", report, batch_size=500)
    layers = qp.quantizable_layers(model)
    fisher = qp.analyze(model, NoisyBatches(qp.data.loader("cifar10", "train", batch_size=128, shuffle=True,
                                                           augment=False), args.sigma),
                        metric="fisher", bits=BITS, model_name=name)

    calib_config = ARQConfig().calib_config()  # the PTQ ARQ rewards every policy with

    def certify_both(slug: str, policy) -> dict:
        """The two rules, the same for every row: from scratch (the float row's is the reference itself) and IRS."""
        kw = dict(config=cfg, split=report, images=images, resume=True, calib=calib, calib_config=calib_config,
                  model_name=name)
        scratch = reference if policy is None else certify_model(model, policy, out_dir=Path(args.out) / slug
                                                                 / "scratch", **kw)
        irs = certify_model(model, policy, out_dir=Path(args.out) / slug / "irs", reference=reference,
                            irs=IRSConfig(n_p=args.n_p, fallback=False), **kw)
        return {"scratch": scratch["summary"], "irs": irs["summary"],
                "irs_failure_probability": irs["failure_probability"],
                "radii": {"scratch": image_radii(scratch["records"]), "irs": image_radii(irs["records"])}}

    def measure(label: str, policy, spec: str, search_seconds: float, episodes: int | None) -> dict:
        slug = f"{spec}_{label.split()[0].lower()}"
        ev = evaluate_policy(model, policy, test=test, calib=NoisyBatches(calib, args.sigma, seed=cfg.seed),
                             calib_config=calib_config, per_sample=True)
        return {"label": label, "spec": spec, "bitops_rel_w8a8": ev.cost.bitops_rel_w8a8,
                "size_rel_w8a8": ev.cost.size_rel_w8a8, "base_top1": ev.accuracy.top1,
                "per_sample": pack_outcomes(ev.accuracy.per_sample),
                "smoothed": certify_both(slug, policy), "search_seconds": search_seconds, "episodes": episodes,
                "policy": policy.to_dict()}

    fp = qp.evaluate(model, test, per_sample=True)
    results = [{"label": "float (FP32)", "spec": "-", "bitops_rel_w8a8": 16.0, "base_top1": fp.top1,
                "per_sample": pack_outcomes(fp.per_sample), "smoothed": certify_both("float", None),
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
                                          select_on=args.select_on,
                                          ddpg=DDPGConfig(warmup=args.warmup)),
                         resume=True, model_name=name)
        results.append(measure("ARQ (DDPG)", arq.policy, spec, time.perf_counter() - t, args.episodes))
        results[-1]["arq"] = arq.policy.provenance["arq"]
        results[-1]["history"] = [{k: v for k, v in h.items() if k != "policy"} for h in arq.extra["history"]]
        print(results[-3:], flush=True)
    rows = []
    for r in results:
        cells = []
        for rule in ("scratch", "irs"):
            s = r["smoothed"][rule]
            ca = s["certified_accuracy"]
            cells += [f"{s['clean_accuracy']:.0f}", f"{s['acr']:.3f}", f"{ca['0.25']:.0f}", f"{ca['0.5']:.0f}"]
        rows.append([r["label"], r["spec"].upper(), f"{r['bitops_rel_w8a8']:.3f}", f"{r['base_top1']:.2f}", *cells,
                     f"{r['search_seconds']:.0f}", r["episodes"] or "-"])
    table = md_table(["policy", "budget", "BitOPs / W8A8", "base top-1 (clean test) %",
                      *(f"{c} ({rule})" for rule in ("from scratch", "IRS") for c in
                        ("smoothed acc. %", "ACR", "cert. r=0.25 %", "r=0.5 %")), "search s", "episodes"], rows)
    notes = (f"Noise-trained {name} (sigma = {cfg.sigma:g}). Rewards on {args.val_images} {args.select_on} "
             f"images, figures on the {report} split: base top-1 on all {len(test.indices):,} of its images, smoothed "
             f"figures on {images} of them, evenly spaced; every row by both rules: from scratch (n = {cfg.n:,}) and "
             "by IRS from the float "
             f"certificates (n_p = {args.n_p:,}, no fallback: lower bounds; a certificate holds with probability "
             f"1 - (alpha_f + alpha)). Compare rows within one rule. ARQ: {args.episodes} episodes "
             f"({args.warmup} random warm-up), reward on {args.val_images} {args.select_on} images (IRS, n_p = 300, "
             "reference n = 2,000), reward R = 0.5 * relative accuracy loss + 0.5 * relative ACR loss (our choice; "
             "the paper gives none). HAQ/ARQ run hundreds of episodes on a GPU; this is a CPU-sized search.")
    claims = claim_rows(results)
    table += "\n\n" + claims_table(claims)
    write(args.name or f"arq_compare_sigma{args.sigma:g}" + model_suffix(name),
          {"results": results, "claims": claims, "config": cfg.to_dict(),
           "model": name, "reference": str(reference_dir(args.sigma, report, name))}, table, notes)


if __name__ == "__main__":
    main()
