"""Wall time of two many-item jobs, serially vs on a local Ray with 2 workers (and with --workers N for each N
given), with Ray's start-up cost reported separately; the results must be equal.

* ``pareto`` (what ``qpolicy pareto --evaluate`` runs): 10 points of ResNet-20 (fisher table, BitOPs 0.1 .. 0.5 of
  W8A8), PTQ + top-1 on the 10,000 test images.
* ``certify`` (what ``qpolicy certify`` runs, and ARQ for its reference and test certificates): randomized
  smoothing of the noise-trained ResNet-20 (sigma 0.25, from ``qpolicy train-noise``) on 20 test images with
  n = 2,000 samples each.

    python benchmarks/ray_speed.py [--workers 2,4] [--jobs pareto,certify]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import md_table, write

import qpolicy as qp
from qpolicy.runner import RunStats


def pareto_job(points: int):
    """A function of (workers, stats) returning a comparable result, and the job's description."""
    from qpolicy.pipeline import evaluate_front
    from qpolicy.search import pareto

    model = qp.models.load("resnet20")
    table = qp.analyze(model, qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False),
                       metric="fisher", bits=(2, 3, 4, 5, 6, 8), model_name="resnet20")
    front = pareto(table, "bitops", [0.1 + 0.4 * i / (points - 1) for i in range(points)])
    test = qp.data.loader("cifar10", "test", batch_size=500)
    calib = qp.data.calib_loader("cifar10")

    def run(workers, stats):
        out = evaluate_front(model, front, test=test, calib=calib, calib_config=qp.CalibConfig(), device="cpu",
                             workers=workers, stats=stats)
        return [(p["policy"], p["top1"]) for p in out.points]

    return run, (f"{points} points of a fisher + ILP front of ResNet-20 (BitOPs 0.1 .. 0.5 of W8A8), each PTQ'd "
                 "(MSE, BatchNorm re-estimated) and evaluated on the 10,000 test images")


def certify_job(images: int, n: int):
    from qpolicy.robust.certify import certify_model
    from qpolicy.robust.noise import WEIGHTS_NAME, load_noise_model, noise_model_dir
    from qpolicy.robust.smoothing import SmoothConfig

    weights = noise_model_dir("resnet20", 0.25) / WEIGHTS_NAME
    if not weights.is_file():
        raise SystemExit(f"no noise-trained ResNet-20 at {weights}: run `qpolicy train-noise --model resnet20 "
                         "--sigma 0.25` first")
    model = load_noise_model(qp.models.load("resnet20"), weights)
    cfg = SmoothConfig(sigma=0.25, n0=100, n=n, alpha=0.001, batch=500)

    def run(workers, stats):
        with tempfile.TemporaryDirectory() as d:
            res = certify_model(model, None, config=cfg, out_dir=Path(d), images=images, device="cpu",
                                workers=workers, stats=stats)
        return [{k: v for k, v in r.items() if k != "seconds"} for r in res["records"]]

    return run, (f"randomized smoothing of the noise-trained ResNet-20 (sigma 0.25) on {images} test images, n0 100 + "
                 f"n {n:,} samples each")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="2")
    ap.add_argument("--jobs", default="pareto,certify")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runs, notes = [], []
    for job in args.jobs.split(","):
        run, what = pareto_job(args.points) if job == "pareto" else certify_job(args.images, args.n)
        notes.append(f"`{job}`: {what}.")
        t = time.perf_counter()
        serial = run(None, RunStats())
        base = time.perf_counter() - t
        runs.append({"job": job, "backend": "serial", "workers": 1, "torch_threads": torch.get_num_threads(),
                     "seconds": base, "startup_seconds": 0.0, "same": True})
        print(runs[-1], flush=True)
        for w in [int(x) for x in args.workers.split(",")]:
            stats = RunStats()
            t = time.perf_counter()
            same = run(w, stats) == serial
            seconds = time.perf_counter() - t
            runs.append({"job": job, "backend": "ray", "workers": w, "torch_threads": 1, "seconds": seconds,
                         "startup_seconds": stats.startup_seconds, "same": same, "speedup": base / seconds})
            print(runs[-1], flush=True)
    base = {r["job"]: r["seconds"] for r in runs if r["backend"] == "serial"}
    rows = [[r["job"], r["backend"], r["workers"], r["torch_threads"], f"{r['seconds']:.0f}",
             f"{r['startup_seconds']:.1f}", f"{r['seconds'] - r['startup_seconds']:.0f}",
             f"{base[r['job']] / r['seconds']:.2f}x", "yes" if r["same"] else "NO"] for r in runs]
    table_md = md_table(["job", "backend", "workers", "torch threads per worker", "wall s", "Ray start-up s",
                         "wall s without start-up", "speed-up vs serial", "same result"], rows)
    notes.append(f"Serial uses torch's threads ({torch.get_num_threads()}), each Ray task one. Ray is started by "
                 "each run (its start-up is the column). Same result: the front's policies and top-1, or every "
                 "certificate record apart from its timing, equal to the serial run's.")
    write("ray_speed", {"runs": runs}, table_md, " ".join(notes))


if __name__ == "__main__":
    main()
