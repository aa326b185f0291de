"""David and Goliath on our models: attacks x {float, int8, int16x8, W4A4, mixed}, direct and transfer, before and
after six defenses, and the paper's four findings re-checked.

Runs ``qpolicy robustness`` (the library's :func:`qpolicy.robust.adversarial.run_robustness`, resumable from its run
folder) on a config from ``benchmarks/configs/``, then renders the tables. The models it needs are trained first:
``make resnet8`` and ``make resnet8-defenses`` (cached in $QPOLICY_TRAINED).

    python benchmarks/attack_suite.py --config benchmarks/configs/robustness_resnet8.json --name robustness_resnet8
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import md_table, write
from scipy.stats import spearmanr

import qpolicy as qp
from qpolicy.robust.adversarial import layer_perturbation, load_robustness_config, run_robustness
from qpolicy.robust.attacks import ATTACKS, AttackConfig, craft
from qpolicy.runner import RunStats

QNN_LABEL = {"float": "float", "int8": "int8 (W8A8)", "int16x8": "int16x8 (W8A16)", "w4a4": "W4A4",
             "mixed": "mixed (W4A4 BitOPs)"}


def _eps(e: Any) -> str:
    return "-" if e is None else f"{e:g}"


def _cell(res: dict | None, dist: str) -> str:
    if res is None:
        return "-"
    s = res["summary"]
    d = s["median_distortion"][dist]
    return f"{s['robust_accuracy']:.0f}" + (f" ({d:.3g})" if d is not None else " (-)")


def _find(results, **match):
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r["result"]
    return None


def attack_table(results, cfg, model: str, defense: str, attacks: dict) -> str:
    rows = []
    for attack, eps_list in attacks.items():
        dist = ATTACKS.get(attack).norm
        for eps in eps_list:
            for mode in ("direct", "transfer"):
                cells = [_cell(_find(results, kind="attack", model=model, defense=defense, qnn=q, attack=attack,
                                     eps=eps, mode=mode), dist) for q in cfg.qnns]
                if all(c == "-" for c in cells):
                    continue
                n = next((r["result"]["summary"]["images"] for r in results if r.get("attack") == attack
                          and r.get("model") == model and r["defense"] == defense), "")
                rows.append([attack, _eps(eps), mode, dist.upper(), n, *cells])
    return md_table(["attack", "eps", "setting", "distortion", "images", *[QNN_LABEL.get(q, q) for q in cfg.qnns]],
                    rows)


def _finding_cell(v):
    """A findings table cell: floats to 4 digits, intervals as [lo, hi]."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.4g}, {v[1]:.4g}]"
    return "-" if v is None else v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--name", required=True, help="results/<name>.json and .md")
    ap.add_argument("--out", help="run folder (default runs/bench/<name>)")
    ap.add_argument("--workers", type=int)
    args = ap.parse_args()
    cfg = load_robustness_config(args.config)
    out = Path(args.out or f"runs/bench/{args.name}")
    stats = RunStats()
    doc = run_robustness(cfg, out_dir=out, workers=args.workers, stats=stats)
    results = doc["results"]
    seconds = sum(r["result"].get("seconds", 0.0) for r in results)
    sections = []
    # clean accuracy
    rows = []
    for m in cfg.models:
        for d in ("none", *cfg.defenses):
            cells = []
            for q in cfg.qnns:
                r = _find(results, kind="clean", model=m, defense=d, qnn=q)
                cells.append(f"{r['top1']:.2f} ({r['images']})" if r else "-")
            rows.append([m, d, *cells])
    sections.append("## Clean top-1 (%) (test images)\n\n" + md_table(
        ["model", "defense", *[QNN_LABEL.get(q, q) for q in cfg.qnns]], rows))
    for m in cfg.models:
        sections.append(f"## {m}, undefended: robust accuracy % (median distortion of successful examples)\n\n"
                        + attack_table(results, cfg, m, "none", cfg.attacks))
        atk = cfg.attacks if cfg.defense_attacks is None else {a: cfg.attacks[a] for a in cfg.defense_attacks}
        for d in cfg.defenses:
            sections.append(f"## {m} + {d}: robust accuracy % (median distortion)\n\n"
                            + attack_table(results, cfg, m, d, atk))
        rows = []
        for q in cfg.qnns:
            r = _find(results, kind="gradcos", model=m, defense="none", qnn=q)
            if r:
                rows.append([QNN_LABEL.get(q, q), f"{r['mean']:.3f}", f"{r['median']:.3f}", f"{r['min']:.3f}",
                             r["images"]])
        if rows:
            sections.append(f"## {m}: cosine of input gradients, float vs QNN (straight-through)\n\n"
                            + md_table(["QNN", "mean", "median", "min", "images"], rows))
        rows = []
        for r in results:
            if r["model"] == m and r["defense"] == "squeeze" and r["kind"] == "attack" and "detection" in r["result"]:
                det = r["result"]["detection"]
                rows.append([r["attack"], _eps(r["eps"]), r["mode"], QNN_LABEL.get(r["qnn"], r["qnn"]),
                             f"{det['threshold']:.3f}", f"{det['detected']}/{det['fooled']}",
                             f"{det['rate']:.0f}"])
        if rows:
            sections.append(f"## {m}: feature-squeezing detection of successful adversarial examples (threshold at "
                            "5% false positives on 1,000 clean validation images)\n\n" + md_table(
                                ["attack", "eps", "setting", "QNN", "threshold", "detected / fooled", "rate %"], rows))
    # findings
    rows = []
    for f in doc["findings"]:
        rows.append([f["finding"], f["verdict"], len(f["rows"])])
    detail = []
    for f in doc["findings"]:
        if f["rows"]:
            keys = list(f["rows"][0])
            detail.append(f"**{f['finding']}: {f['verdict']}**\n\n" + md_table(keys, [
                [_finding_cell(row[k]) for k in keys] for row in f["rows"]]))
    sections.append("## The paper's findings, re-checked\n\n" + md_table(["finding", "verdict", "cases"], rows)
                    + "\n\n" + "\n\n".join(detail))
    # mixed policies: where do attacks bite?
    where = {}
    if "mixed" in cfg.qnns:
        for m in cfg.models:
            pol = qp.Policy.from_dict(doc["policies"][m]["mixed"])
            model = qp.models.load(m)
            from qpolicy.robust.certify import pixel_images, spaced_indices

            x, y, _ = pixel_images("test", spaced_indices(10000, cfg.images))
            big = max(e for e in cfg.attacks.get("pgd", [0.008]) if e is not None)
            adv = craft(model, x, y, AttackConfig(attack="pgd", eps=big, params=dict(cfg.params.get("pgd", {}))))
            pert = layer_perturbation(model, x, torch.from_numpy(adv))
            names = list(pert)
            wbits = [pol[n].weight_bits or 32 for n in names]
            abits = [pol[n].act_bits or 32 for n in names]
            rho_w = spearmanr([pert[n] for n in names], wbits).statistic
            rho_a = spearmanr([pert[n] for n in names], abits).statistic
            where[m] = {"eps": big, "perturbation": pert, "weight_bits": dict(zip(names, wbits, strict=True)),
                        "act_bits": dict(zip(names, abits, strict=True)), "spearman_weight_bits": float(rho_w),
                        "spearman_act_bits": float(rho_a)}
            low = [n for n in names if pol[n].weight_bits is not None and pol[n].weight_bits <= 3]
            rest = [n for n in names if n not in low]
            mean_low = statistics.mean(pert[n] for n in low) if low else float("nan")
            mean_rest = statistics.mean(pert[n] for n in rest) if rest else float("nan")
            where[m].update({"mean_perturbation_low_bits": mean_low, "mean_perturbation_other": mean_rest})
            rows = [[n, pol[n].weight_bits, pol[n].act_bits, f"{pert[n]:.3f}"] for n in names]
            sections.append(
                f"## {m}: where PGD (eps {big:g}, crafted on the float model) bites vs the mixed policy's bits\n\n"
                f"Relative change of each layer's output, clean vs adversarial, mean over {len(x)} test images. "
                f"Spearman correlation of that change with the layer's weight bits: {rho_w:.2f}, with its activation "
                f"bits: {rho_a:.2f}. Mean change on layers given <= 3 weight bits: {mean_low:.3f}; on the others: "
                f"{mean_rest:.3f}.\n\n" + md_table(["layer", "weight bits", "act bits", "relative change"], rows))
    notes = (f"Config `{args.config}` ({cfg.images} test images attacked, evenly spaced; per-attack counts: "
             f"{dict(cfg.attack_images) or 'all'}; attack parameter overrides for the CPU: {dict(cfg.params) or 'none'}"
             f"). Eps in pixel units (images in [0, 1]). Robust accuracy counts every attacked image (a clean "
             f"mistake counts as not robust); the median distortion (in the attack's norm) is over the successful "
             f"examples of correctly classified images. Direct: crafted on the QNN itself (white-box attacks through "
             f"its straight-through gradients); transfer: crafted on the float model of the same defense. "
             f"Pre-processing defenses (squeeze, pixeldefend) are oblivious: examples crafted on the undefended "
             f"model, classified after the defense. QNNs: int8 = W8A8 every layer; int16x8 = W8 weights and 16-bit "
             f"activations every layer; W4A4 = first/last layer 8 bits; mixed = fisher + ILP at the BitOPs of that "
             f"W4A4. PTQ with calibration on training images. {len(results)} results; compute {seconds:.0f} s "
             f"(this call: {stats.computed} computed, {stats.resumed} resumed, {stats.seconds:.0f} s wall).")
    # per-image records stay in the run folder (robustness.json); the result file keeps the summaries
    slim = [{**r, "result": {k: v for k, v in r["result"].items() if k != "records"}} for r in results]
    write(args.name, {"config": cfg.to_dict(), "results": slim, "findings": doc["findings"],
                      "policies": doc["policies"], "where_attacks_bite": where,
                      "run": {"computed": stats.computed, "resumed": stats.resumed, "seconds": stats.seconds}},
          "\n\n".join(sections), notes)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
