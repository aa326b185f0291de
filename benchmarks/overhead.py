"""Inference cost of fake quantization: forward time of ResNet-20 over the CIFAR-10 test set, float vs
fake-quantized (eval mode, no grad, batch 500), median of several repeats on pre-built batches (data loading
excluded).

    python benchmarks/overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import md_table, write

import qpolicy as qp


def forward_seconds(model: torch.nn.Module, batches: list[torch.Tensor], repeats: int) -> list[float]:
    times = []
    model.eval()
    with torch.no_grad():
        model(batches[0])  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            for x in batches:
                model(x)
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = qp.models.load("resnet20")
    batches = [x for x, _ in qp.data.loader("cifar10", "test", batch_size=500)]
    calib = qp.data.calib_loader("cifar10")
    variants = {"float": model}
    for spec in ("w8a8", "w4a4", "w3a8"):
        variants[spec] = qp.apply_policy(model, qp.uniform_policy(model, spec), calib=calib)
    results, rows = {}, []
    for name, m in variants.items():
        ts = forward_seconds(m, batches, args.repeats)
        results[name] = {"seconds_median": statistics.median(ts), "seconds": ts}
        print(name, results[name], flush=True)
    base = results["float"]["seconds_median"]
    for name, r in results.items():
        r["ratio_to_float"] = r["seconds_median"] / base
        rows.append([name.upper() if name != "float" else "float", f"{r['seconds_median']:.2f}",
                     f"{r['ratio_to_float']:.2f}x", f"{10_000 / r['seconds_median']:.0f}"])
    table = md_table(["model", "forward s (10,000 images)", "vs float", "images/s"], rows)
    notes = ("ResNet-20, forward passes over the 10,000 CIFAR-10 test images in batches of 500, eval mode, "
             f"torch.no_grad, median of {args.repeats} repeats; the batches are built beforehand, so data loading "
             "is excluded. Target: fake-quant <= 1.5x float.")
    write("overhead", {"repeats": args.repeats, "results": results}, table, notes)


if __name__ == "__main__":
    main()
