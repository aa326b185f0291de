"""PTQ top-1 of ResNet-20 on the full CIFAR-10 test set at uniform bit-widths (first/last layer at 8 bits),
with plain min-max calibration and with qpolicy's default (MSE clipping + BatchNorm re-estimation); plus the
float accuracy of ResNet-20 and ResNet-32 through the zoo.

    python benchmarks/uniform_ptq.py [--specs w8a8,w4a4] [--limit N]
"""

from __future__ import annotations

import argparse
import time

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy

SPECS = ["w8a8", "w6a6", "w5a5", "w4a8", "w4a4", "w3a8", "w3a4", "w2a8"]
CALIBS = {
    "minmax": qp.CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False),
    "ours": qp.CalibConfig(weight_method="mse", act_method="mse", bn_reestimate=True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    args = ap.parse_args()
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.limit)
    calib = qp.data.calib_loader("cifar10", batches=CALIBS["ours"].batches_needed, batch_size=128)

    floats = {}
    for name in ("resnet20", "resnet32"):
        r = qp.evaluate(qp.models.load(name), test)
        floats[name] = {"top1": r.top1, "reference_top1": qp.models.spec(name).reference_top1, "seconds": r.seconds}
        print(name, floats[name], flush=True)

    model = qp.models.load("resnet20")
    rows, records = [], []
    for spec in args.specs.split(","):
        policy = qp.uniform_policy(model, spec, first_last=8, model_name="resnet20")
        rec = {"spec": spec}
        for label, cfg in CALIBS.items():
            t = time.perf_counter()
            res = evaluate_policy(model, policy, test=test, calib=calib, calib_config=cfg)
            rec[label] = {"top1": res.accuracy.top1, "eval_seconds": res.accuracy.seconds,
                          "calib_seconds": res.calib_seconds, "total_seconds": time.perf_counter() - t}
            rec["cost"] = res.cost.to_dict(per_layer=False)
            print(spec, label, rec[label], flush=True)
        records.append(rec)
        c = rec["cost"]
        rows.append([spec.upper(), f"{rec['minmax']['top1']:.2f}", f"{rec['ours']['top1']:.2f}",
                     f"{rec['ours']['top1'] - rec['minmax']['top1']:+.2f}", f"{c['size_bytes'] / 1024:.1f}",
                     f"{c['size_rel_w8a8']:.3f}", f"{c['bitops'] / 1e9:.3f}", f"{c['bitops_rel_w8a8']:.3f}",
                     f"{rec['minmax']['eval_seconds']:.1f} / {rec['ours']['eval_seconds']:.1f}",
                     f"{rec['ours']['calib_seconds']:.1f}"])
    n = records and test.num_samples
    float_rows = [[k, f"{v['top1']:.2f}", f"{v['reference_top1']:.2f}", f"{v['seconds']:.1f}"]
                  for k, v in floats.items()]
    table = (md_table(["model", "float top-1 %", "reference %", "eval s"], float_rows) + "\n\n" + md_table(
        ["policy (first/last 8)", "min-max top-1 %", "ours top-1 %", "gain", "size KiB", "size / W8A8",
         "GBitOPs", "BitOPs / W8A8", "eval s (min-max / ours)", "calib s (ours)"], rows))
    notes = (f"ResNet-20, CIFAR-10 test set ({n} images), PTQ only. Calibration: random training images with "
             "the training augmentation, "
             "batches of 128; activation ranges from 8 batches (1,024 images). *min-max*: per-channel weight and "
             "per-tensor activation ranges from min/max. *ours*: MSE-optimal clipping for both, after "
             "re-estimating BatchNorm statistics of the weight-quantized model on 32 batches (4,096 images). "
             "Size counts conv/linear weights only; BitOPs per image.")
    write("uniform_ptq", {"float": floats, "test_images": n, "policies": records}, table, notes)


if __name__ == "__main__":
    main()
