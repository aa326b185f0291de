"""QAT of ResNet-20 at uniform W3A4 (first/last layer 8-bit) for one epoch on the CPU: top-1 before/after on the
full CIFAR-10 test set and seconds per epoch; then the same run killed (SIGKILL) after its mid-epoch checkpoint
at step --kill-after and continued with --resume, to show it picks up from the last checkpoint.

    python benchmarks/qat_w3a4.py [--epochs 1] [--kill-after 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import md_table, write

import qpolicy as qp
from qpolicy.pipeline import finetune_policy
from qpolicy.qat import load_checkpoint

RUNS = Path(__file__).resolve().parents[1] / "runs" / "bench_qat"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "qpolicy.cli", "finetune", "--model", "resnet20", "--uniform", "w3a4", *args]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kill-after", type=int, default=200, help="kill once a checkpoint at this step exists")
    args = ap.parse_args()
    shutil.rmtree(RUNS, ignore_errors=True)

    # 1. The uninterrupted run, in-process.
    model = qp.models.load("resnet20")
    policy = qp.uniform_policy(model, "w3a4", model_name="resnet20")
    train = qp.data.loader("cifar10", "train", batch_size=128)
    test = qp.data.loader("cifar10", "test", batch_size=500)
    t = time.perf_counter()
    run, _ = finetune_policy(model, policy, train=train, test=test, calib=qp.data.calib_loader("cifar10"),
                             out_dir=RUNS / "full", config=qp.FinetuneConfig(epochs=args.epochs))
    full_wall = time.perf_counter() - t
    print("full run:", run.before.top1, "->", run.after.top1, run.finetune.seconds_per_epoch, flush=True)
    # 1b. The same from plain min-max PTQ (no BN re-estimation), the usual ~70% starting point.
    minmax = qp.CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False)
    mm, _ = finetune_policy(model, policy, train=train, test=test, calib=qp.data.calib_loader("cifar10"),
                            out_dir=RUNS / "minmax", config=qp.FinetuneConfig(epochs=args.epochs),
                            calib_config=minmax)
    print("min-max start:", mm.before.top1, "->", mm.after.top1, flush=True)

    # 2. The same run through the CLI, killed after a mid-epoch checkpoint, then resumed.
    out = RUNS / "killed"
    common = ["--epochs", str(args.epochs), "--out", str(out), "--checkpoint-every", "100", "--quiet"]
    proc = subprocess.Popen(cli(*common), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt, killed_at = out / "checkpoint.pt", None
    t_kill = time.perf_counter()
    while proc.poll() is None:
        time.sleep(2)
        if ckpt.exists():
            ck = load_checkpoint(ckpt)
            if ck["epoch"] * len(train) + ck["step"] >= args.kill_after:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = {"epoch": ck["epoch"], "step": ck["step"]}
                break
    killed_seconds = time.perf_counter() - t_kill
    if killed_at is None:
        raise SystemExit(f"the run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}")
    t = time.perf_counter()
    res = subprocess.run(cli(*common, "--resume", "--json"), capture_output=True, text=True, check=True)
    resumed_seconds = time.perf_counter() - t
    resumed = json.loads(res.stdout)
    print("killed at", killed_at, "resumed:", resumed["finetune"]["resumed_from"], resumed["after"]["top1"], flush=True)

    rows = [["from our PTQ (MSE + BN re-estimation), uninterrupted", f"{run.before.top1:.2f}",
             f"{run.after.top1:.2f}", f"{run.finetune.seconds_per_epoch:.0f}", f"{full_wall:.0f}"],
            ["from plain min-max PTQ, uninterrupted", f"{mm.before.top1:.2f}", f"{mm.after.top1:.2f}",
             f"{mm.finetune.seconds_per_epoch:.0f}", "-"],
            [f"from our PTQ, killed at step {killed_at['step']}, then --resume (CLI)",
             f"{resumed['before']['top1']:.2f}",
             f"{resumed['after']['top1']:.2f}", "-", f"{killed_seconds:.0f} + {resumed_seconds:.0f}"]]
    table = md_table(["run", "top-1 before %", "top-1 after %", "s / epoch", "wall s"], rows)
    notes = (f"ResNet-20, uniform W3A4 (first/last layer W8A8), PTQ calibration then "
             f"{args.epochs} epoch(s) of QAT: SGD momentum 0.9 Nesterov, lr 0.01 cosine, weight decay 5e-4, batch "
             "128, LSQ step sizes, standard augmentation; top-1 on the full CIFAR-10 test set. The second run was "
             f"SIGKILLed once its checkpoint at step {killed_at['step']} existed and resumed from it "
             f"(resumed_from = {resumed['finetune']['resumed_from']}).")
    write("qat_w3a4", {"policy": "w3a4", "epochs": args.epochs, "full": run.to_dict(), "full_wall_seconds": full_wall,
                       "from_minmax": mm.to_dict(),
                       "killed_at": killed_at, "killed_run_seconds": killed_seconds, "resumed": resumed,
                       "resumed_wall_seconds": resumed_seconds}, table, notes)


if __name__ == "__main__":
    main()
