"""Held-out zoo models (issue 22): the ResNets trained here on the 45,000 training images outside the validation
split, measured on the validation and test splits beside the published weights they were distilled from, and with
--ship copied into the package (qpolicy.models.shipped) with their manifest.

The published weights saw every training image, the validation split included: their validation top-1 far above
their test top-1 is the memorization that makes choices on that split unfair. The held-out models never saw a
validation image, so their validation top-1 should match their test top-1 within sampling error.

    qpolicy train --model resnet20-heldout --teacher resnet20 --epochs 100 --precision bf16
    python benchmarks/heldout_models.py --models resnet20-heldout [--ship --trained-commit SHA]

A model whose weights are not in the trained-model cache is measured from its shipped file; weights already shipped
are not shipped again (their manifest, and the commit in it, stay).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import START_GIT, command, machine, md_table, write
from scipy.stats import binomtest

import qpolicy as qp
from qpolicy.models import shipped
from qpolicy.paths import sha256_file
from qpolicy.stats import verdict
from qpolicy.train.trained import FORMAT, WEIGHTS_NAME, load_weights_file, trained_model_dir

TARGETS = {"resnet20-heldout": 91.0, "resnet32-heldout": 91.8}  # issue 22's float test top-1 goals


def _top1(model: torch.nn.Module, split: str) -> dict:
    r = qp.evaluate(model, qp.data.loader("cifar10", split, batch_size=500))
    correct = round(r.top1 * r.total / 100)
    ci = binomtest(correct, r.total).proportion_ci(confidence_level=0.95, method="exact")  # Clopper-Pearson
    return {"top1": r.top1, "images": r.total, "ci95": [100 * ci.low, 100 * ci.high]}


def _cell(m: dict) -> str:
    return f"{m['top1']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20-heldout"], choices=sorted(TARGETS))
    ap.add_argument("--trained-dir", help="trained-model cache (default $QPOLICY_TRAINED or ~/.cache/qpolicy/trained)")
    ap.add_argument("--ship", action="store_true", help="copy the weights into the package with their manifest")
    ap.add_argument("--trained-commit", help="the commit the training of the newly shipped weights ran at (default: "
                                             "this checkout's HEAD)")
    ap.add_argument("--name", default="heldout_models")
    args = ap.parse_args()

    records, rows = [], []
    for name in args.models:
        teacher_name = name.removesuffix("-heldout")
        weights = trained_model_dir(name, trained=args.trained_dir) / WEIGHTS_NAME
        shipped_file = shipped.weights_path(name)
        if not weights.is_file() and shipped_file is not None:  # measured again from the package, not re-shipped
            weights = shipped_file
        model = qp.models.spec(name).factory().eval()
        saved, _ = load_weights_file(model, weights, fmt=FORMAT, what="trained weights", made_by="qpolicy train")
        history, config, recipe = saved["history"], saved["config"], saved["recipe"]
        teacher = qp.models.load(teacher_name)
        rec = {"model": name, "teacher": teacher_name, "weights": str(weights), "config": config, "recipe": recipe,
               "epochs": len(history), "train_seconds": sum(h["seconds"] for h in history),
               "last_epoch_train_top1": history[-1]["top1"], "target_test_top1": TARGETS[name]}
        for who, m in (("student", model), ("teacher", teacher)):
            rec[who] = {split: _top1(m, split) for split in ("val", "test")}
            print(name, who, rec[who], flush=True)
        s, t = rec["student"], rec["teacher"]
        rec["verdict"] = verdict(tuple(s["test"]["ci95"]), TARGETS[name], inclusive=True)
        recipe_cmd = (f"qpolicy train --model {name} --teacher {teacher_name} --epochs {config['epochs']} "
                      f"--kd-temperature {recipe['temperature']} --kd-weight {recipe['weight']} "
                      f"--precision {config.get('precision', 'fp32')}")
        rec["recipe_command"] = recipe_cmd
        already = shipped_file is not None and (weights == shipped_file or
                                                sha256_file(weights) == shipped.manifest(name)["sha256"])
        if args.ship and already:
            rec["shipped"] = shipped_file.name  # the same weights: their manifest (and its commit) stay
        elif args.ship:
            commit = args.trained_commit or START_GIT["commit"]
            path = shipped.ship(name, weights, test_top1=s["test"]["top1"], val_top1=s["val"]["top1"],
                                command=recipe_cmd, commit=commit,
                                provenance={"measured_by": command(), "measured_at": START_GIT, "machine": machine(),
                                            "train_seconds": rec["train_seconds"]})
            rec["shipped"] = str(Path(path).name)
        records.append(rec)
        rows.append([name, f"{rec['epochs']} ({config.get('precision', 'fp32')})",
                     f"{rec['train_seconds'] / 3600:.2f}", _cell(s["val"]), _cell(s["test"]),
                     f"{s['val']['top1'] - s['test']['top1']:+.2f}", f">= {TARGETS[name]}: {rec['verdict']}",
                     teacher_name, _cell(t["val"]), _cell(t["test"]),
                     f"{t['val']['top1'] - t['test']['top1']:+.2f}"])
    table = md_table(["model", "epochs (precision)", "train h", "val top-1 [95% CI]", "test top-1 [95% CI]",
                      "val - test", "goal (test)", "teacher (published)", "teacher val", "teacher test",
                      "teacher val - test"], rows)
    notes = ("Float top-1 (%) on qpolicy's CIFAR-10 validation split (5,000 of the 50,000 training images) and on the "
             "10,000 test images, with exact (Clopper-Pearson) 95% intervals. The held-out models were trained by "
             "`qpolicy train` on the other 45,000 training images only, distilled from the published weights on those "
             "images (the recipe column of the JSON); the published weights were trained on all 50,000, so their "
             "validation top-1 measures memorization, not accuracy. Recipe: "
             + "; ".join(f"`{r['recipe_command']}`" for r in records) + ".")
    write(args.name, {"models": records}, table, notes)


if __name__ == "__main__":
    main()
