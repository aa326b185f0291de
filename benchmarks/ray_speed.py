"""Wall time of a Pareto front's evaluation (what ``qpolicy pareto --evaluate`` runs): 10 points of ResNet-20 (fisher
table, BitOPs 0.1 .. 0.5 of W8A8), PTQ + top-1 on the 10,000 test images, serially vs on a local Ray with 2 workers
(and with --workers N for each N given), with Ray's start-up cost reported separately. The fronts must be equal.

    python benchmarks/ray_speed.py [--workers 2,4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import evaluate_front
from qpolicy.runner import RunStats
from qpolicy.search import pareto


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="2")
    ap.add_argument("--points", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    model = qp.models.load("resnet20")
    table = qp.analyze(model, qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False),
                       metric="fisher", bits=(2, 3, 4, 5, 6, 8), model_name="resnet20")
    n = args.points
    front = pareto(table, "bitops", [0.1 + 0.4 * i / (n - 1) for i in range(n)])
    test = qp.data.loader("cifar10", "test", batch_size=500)
    calib = qp.data.calib_loader("cifar10")
    cfg = qp.CalibConfig()
    runs = []
    t = time.perf_counter()
    stats = RunStats()
    serial = evaluate_front(model, front, test=test, calib=calib, calib_config=cfg, device="cpu", stats=stats)
    runs.append({"backend": "serial", "workers": 1, "torch_threads": torch.get_num_threads(),
                 "seconds": time.perf_counter() - t, "startup_seconds": 0.0, "same": True})
    for w in [int(x) for x in args.workers.split(",")]:
        stats = RunStats()
        t = time.perf_counter()
        on_ray = evaluate_front(model, front, test=test, calib=calib, calib_config=cfg, device="cpu", workers=w,
                                stats=stats)
        same = ([p["policy"] for p in serial.points] == [p["policy"] for p in on_ray.points]
                and [p["top1"] for p in serial.points] == [p["top1"] for p in on_ray.points])
        runs.append({"backend": "ray", "workers": w, "torch_threads": 1, "seconds": time.perf_counter() - t,
                     "startup_seconds": stats.startup_seconds, "same": same})
    base = runs[0]["seconds"]
    rows = [[r["backend"], r["workers"], r["torch_threads"], f"{r['seconds']:.0f}", f"{r['startup_seconds']:.1f}",
             f"{r['seconds'] - r['startup_seconds']:.0f}", f"{base / r['seconds']:.2f}x",
             "yes" if r["same"] else "NO"] for r in runs]
    table_md = md_table(["backend", "workers", "torch threads per worker", "wall s", "Ray start-up s",
                         "wall s without start-up", "speed-up vs serial", "same front"], rows)
    tops = ", ".join(f"{p['top1']:.2f}" for p in serial.points)
    notes = (f"{n} points of a fisher + ILP front of ResNet-20 (BitOPs 0.1 .. 0.5 of W8A8), each PTQ'd (MSE, BatchNorm "
             f"re-estimated) and evaluated on the 10,000 test images; serial uses torch's threads "
             f"({torch.get_num_threads()}), each Ray task one. Test top-1 of the points: {tops}.")
    write("ray_speed", {"runs": runs, "points": [{"top1": p["top1"], "cost": p["cost"]} for p in serial.points]},
          table_md, notes)


if __name__ == "__main__":
    main()
