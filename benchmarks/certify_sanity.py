"""Randomized-smoothing sanity check: the noise-trained ResNet-20 certified on every 100th CIFAR-10 test image,
beside the figures Cohen et al. (2019) publish for ResNet-110 at the same sigma.

    qpolicy train-noise --model resnet20 --sigma 0.25      # once: the base classifier (cached, not committed)
    python benchmarks/certify_sanity.py [--images 100] [--n 10000] [--sigma 0.25] [--split report] [--name NAME]

The run folder (``runs/bench/certify_fp_sigma<sigma>``) keeps the float model's classes on the first ``--record``
samples of each image: the reference that ``irs_vs_full.py`` and ``arq_compare.py`` certify quantized models from
(``--split report``: on the report half of the test split, ``..._report``, what ``arq_compare.py`` reports on when its
choices are made on the select half).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import md_table, write

import qpolicy as qp
from qpolicy.robust.certify import certify_model
from qpolicy.robust.noise import load_noise_model, noise_model_dir
from qpolicy.robust.smoothing import RADII, SmoothConfig

# Cohen, Rosenfeld, Kolter (ICML 2019), CIFAR-10 ResNet-110, sigma 0.25, certified accuracy (approximate
# published values, as quoted in our issue 11): r = 0, 0.25, 0.5
COHEN_R110 = {0.25: {"0": 75.0, "0.25": 60.0, "0.5": 43.0}}
RUN = Path(__file__).resolve().parent.parent / "runs" / "bench"


def model_suffix(model: str) -> str:
    """What run folders and result names of a model other than the default ResNet-20 end with."""
    return "" if model == "resnet20" else f"_{model}"


def reference_dir(sigma: float, split: str = "test", model: str = "resnet20") -> Path:
    return RUN / (f"certify_fp_sigma{sigma:g}" + ("" if split == "test" else f"_{split}") + model_suffix(model))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20", help="the zoo model whose noise-trained base is certified")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--record", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--split", default="test", choices=["test", "report"])
    ap.add_argument("--name", help="results/<name>.{json,md} (default certify_sanity_sigma<SIGMA>[_<SPLIT>])")
    args = ap.parse_args()
    model = load_noise_model(qp.models.load(args.model), noise_model_dir(args.model, args.sigma))
    cfg = SmoothConfig(sigma=args.sigma, n0=100, n=args.n, alpha=0.001, batch=1000)
    res = certify_model(model, None, config=cfg, out_dir=reference_dir(args.sigma, args.split, args.model),
                        split=args.split,
                        images=args.images, resume=args.resume, record=args.record, model_name=args.model)
    s = res["summary"]
    clean = qp.evaluate(model, qp.data.loader("cifar10", args.split, batch_size=500))
    size = clean.total
    cohen = COHEN_R110.get(args.sigma, {})
    rows = [[f"{r:g}", f"{s['certified_accuracy'][f'{r:g}']:.1f}", f"{cohen[f'{r:g}']:.0f}" if f"{r:g}" in cohen
             else "-"] for r in RADII]
    table = md_table(["radius", f"{args.model} (ours), certified accuracy %", "ResNet-110 (Cohen et al.), %"], rows)
    notes = (f"Noise-trained {args.model} (`qpolicy train-noise --model {args.model} --sigma {args.sigma:g}`: the zoo "
             "model fine-tuned "
             f"under Gaussian noise), smoothed at sigma = {args.sigma:g}, certified with n0 = 100, n = {args.n:,}, "
             f"alpha = 0.001 on {s['images']} {args.split} images (every {size // args.images}th). Cohen et al. "
             "certify with "
             f"n = 100,000; with n = {args.n:,} the largest certifiable radius is sigma * Phi^-1(0.001^(1/n)) = "
             f"{_max_radius(args.sigma, args.n):.2f}.\n\n"
             f"ACR {s['acr']:.3f}; smoothed clean accuracy {s['clean_accuracy']:.1f}% (abstain {s['abstain']:.1f}%); "
             f"the base classifier's clean {args.split} top-1 (no noise, all {size:,} images) {clean.top1:.2f}%. "
             f"{s['samples']:,} noisy forward passes in {s['seconds']:.0f} s.")
    name = args.name or (f"certify_sanity_sigma{args.sigma:g}" + ("" if args.split == "test" else f"_{args.split}")
                         + model_suffix(args.model))
    write(name, {"summary": s, "settings": res["settings"], "base_clean_top1": clean.top1, "cohen_resnet110": cohen,
                 "noise_weights": model.noise_weights,
                 "records": [{k: v for k, v in r.items() if k != "sample_preds"} for r in res["records"]]},
          table, notes)


def _max_radius(sigma: float, n: int) -> float:
    from scipy.stats import norm

    return float(sigma * norm.ppf(0.001 ** (1 / n)))


if __name__ == "__main__":
    main()
