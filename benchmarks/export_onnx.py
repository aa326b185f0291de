"""ONNX export + onnxruntime verification of ResNet-20 at W8A8, uniform W4A4 and a mixed 2-8-bit policy (fisher + ilp
at the BitOPs of W3A4, candidates 2..8), on the full CIFAR-10 test set; and the speed of an integer model that
onnxruntime runs with int8 kernels, built from our W8A8 policy (``export_int8``) and, for comparison, by
onnxruntime's own static quantizer, vs the float ONNX model, batch 1 and 64, 2 threads.

    python benchmarks/export_onnx.py [--limit N] [--threads 2] [--pause-pids PID,...]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import md_table, write

import qpolicy as qp
from qpolicy.export import export_int8, export_onnx, verify_onnx
from qpolicy.export.int8 import _Reader

RUNS = Path(__file__).resolve().parents[1] / "runs" / "bench_export"


def latencies(paths: dict[str, Path], batch: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median latency of each model, measured interleaved (one run of each model per round), so that all of them
    see the same background load of a shared machine."""
    sessions = {}
    for label, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sessions[label] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    times: dict[str, list[float]] = {label: [] for label in paths}
    for r in range(repeats + 5):
        for label, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, {"input": x})
            if r >= 5:  # warm-up rounds
                times[label].append(time.perf_counter() - t)
    return {label: {"median_ms": statistics.median(v) * 1000, "images_per_s": batch / statistics.median(v)}
            for label, v in times.items()}


def top1_onnx(path: Path, test, threads: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in test:
        out = sess.run(None, {name: x.numpy()})[0]
        correct += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return 100.0 * correct / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause-pids", default="", help="comma-separated PIDs to SIGSTOP while timing (then SIGCONT)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    model = qp.models.load("resnet20")
    layers = qp.quantizable_layers(model)
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.limit)
    calib = qp.data.calib_loader("cifar10")
    plain = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)
    w3a4 = qp.policy_cost(layers, qp.uniform_policy(model, "w3a4")).bitops_rel_w8a8
    fisher = qp.analyze(model, plain, metric="fisher", bits=(2, 3, 4, 5, 6, 7, 8))
    mixed = qp.search(fisher, qp.Budget(bitops=w3a4), first_last=8, model_name="resnet20").policy
    w4a4 = qp.uniform_policy(model, "w4a4", model_name="resnet20")
    policies = {"W8A8": (qp.uniform_policy(model, "w8a8", model_name="resnet20"), {}),
                "W4A4 (first/last 8)": (w4a4, {}),
                "W4A4, INT4/UINT4 tensors (opset 21)": (w4a4, {"int4": True, "opset": 21}),
                "mixed 2-8 (fisher + ilp, BitOPs of W3A4)": (mixed, {})}
    rows, records = [], {}
    for k, (label, (policy, opts)) in enumerate(policies.items()):
        qm = qp.apply_policy(model, policy, calib=calib)
        path = RUNS / f"policy{k}.onnx"
        t = time.perf_counter()
        info = export_onnx(qm, path, input_shape=(3, 32, 32), policy=policy, **opts)
        export_s = time.perf_counter() - t
        res = verify_onnx(path, qm, test, threads=args.threads)
        widths = sorted({b for lb in policy.layers.values() for b in (lb.weight_bits, lb.act_bits) if b})
        records[label] = {"export": info, "export_seconds": export_s, "verify": res.to_dict(),
                          "widths": widths, "policy": policy.to_dict()}
        print(label, info["ops"], res, flush=True)
        rows.append([label, ",".join(map(str, widths)), f"{info['bytes'] / 1024:.0f}", f"{res.top1_torch:.2f}",
                     f"{res.top1_onnx:.2f}", f"{100 * res.agree:.2f}", f"{100 * res.images_within_tolerance:.1f}",
                     f"{res.max_abs_diff:.3g}", f"{res.tolerance:.2g}"])
    table = md_table(["policy", "widths", "ONNX KiB", "PyTorch top-1 %", "onnxruntime top-1 %",
                      "same prediction %", "images with logits within 1 step %", "max logit diff", "1 step"],
                     rows)

    # int8 deployment: our W8A8 policy as integer operators, beside onnxruntime's own static quantizer
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, pre_path = RUNS / "float.onnx", RUNS / "float_pre.onnx"
    ours_path, ort_path = RUNS / "int8_policy.onnx", RUNS / "int8_ort.onnx"
    ours_s8_path, w7_path = RUNS / "int8_policy_s8.onnx", RUNS / "int8_policy_w7a8.onnx"
    with torch.no_grad():
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(float_path), opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    quant_pre_process(str(float_path), str(pre_path))
    quantize_static(str(pre_path), str(ort_path), _Reader(calib, "input"), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    w8a8 = policies["W8A8"][0]
    q8 = qp.apply_policy(model, w8a8, calib=calib)
    int8_info = export_int8(q8, ours_path, calib=calib, input_shape=(3, 32, 32), policy=w8a8)
    int8_verify = verify_onnx(ours_path, q8, test, threads=args.threads)
    export_int8(q8, ours_s8_path, calib=calib, input_shape=(3, 32, 32), policy=w8a8, weight_type="int8")
    s8_verify = verify_onnx(ours_s8_path, q8, test, threads=args.threads)
    w7a8 = qp.uniform_policy(model, "w7a8", first_last="same", model_name="resnet20")
    q7 = qp.apply_policy(model, w7a8, calib=calib)
    w7_info = export_int8(q7, w7_path, calib=calib, input_shape=(3, 32, 32), policy=w7a8)  # auto: int8 weights
    w7_verify = verify_onnx(w7_path, q7, test, threads=args.threads)
    print("int8 (policy)", int8_info["ops"], int8_verify, flush=True)
    if args.pause_pids:  # timing wants the CPU to itself: stop other jobs meanwhile
        for pid in args.pause_pids.split(","):
            os.kill(int(pid), signal.SIGSTOP)
    models = {"float ONNX": float_path,
              "int8, our W8A8 policy (QLinearConv u8u8, qpolicy.export.export_int8)": ours_path,
              "int8, our W8A8 policy with int8 weights (QLinearConv u8s8, weight_type='int8')": ours_s8_path,
              "int8, our W7A8 policy (every layer; int8 weights, u8s8 without saturation)": w7_path,
              "int8, onnxruntime's own quantizer (QLinearConv u8s8)": ort_path}
    speed_rows, speed = [], {}
    try:
        lat = {b: latencies(models, b, args.threads, 300 if b == 1 else 40) for b in (1, 64)}
        for label, path in models.items():
            speed[label] = {"latency": {b: lat[b][label] for b in (1, 64)}, "bytes": path.stat().st_size}
    finally:
        if args.pause_pids:
            for pid in args.pause_pids.split(","):
                os.kill(int(pid), signal.SIGCONT)
    f = speed["float ONNX"]["latency"]
    for label, path in models.items():
        speed[label]["top1"] = acc = top1_onnx(path, test, args.threads)
        s = speed[label]["latency"]
        speed_rows.append([label, f"{acc:.2f}", f"{path.stat().st_size / 1024:.0f}", f"{s[1]['median_ms']:.2f}",
                           f"{f[1]['median_ms'] / s[1]['median_ms']:.2f}x", f"{s[64]['median_ms']:.1f}",
                           f"{f[64]['median_ms'] / s[64]['median_ms']:.2f}x", f"{s[64]['images_per_s']:.0f}"])
        print(label, speed[label], flush=True)
    speed["policy_int8_verify"] = int8_verify.to_dict()
    speed["policy_int8_export"] = int8_info
    speed["policy_int8_s8_verify"] = s8_verify.to_dict()
    speed["policy_w7a8_verify"], speed["policy_w7a8_export"] = w7_verify.to_dict(), w7_info
    table += "\n\n" + md_table(["model", "top-1 %", "KiB", "batch 1 ms", "speed-up", "batch 64 ms", "speed-up",
                                 "batch 64 images/s"], speed_rows)
    table += (f"\n\nOur int8 model against the PyTorch W8A8 fake-quant model: top-1 {int8_verify.top1_onnx:.2f} vs "
              f"{int8_verify.top1_torch:.2f}, same prediction on {100 * int8_verify.agree:.2f}% of images, max logit "
              f"difference {int8_verify.max_abs_diff:.3g}. The same with int8 weights (u8s8 kernels): top-1 "
              f"{s8_verify.top1_onnx:.2f}, same prediction on {100 * s8_verify.agree:.2f}%, max logit difference "
              f"{s8_verify.max_abs_diff:.3g}. W7A8 (every layer, int8 weights) against its own fake-quant model: "
              f"top-1 {w7_verify.top1_onnx:.2f} vs {w7_verify.top1_torch:.2f}, same prediction on "
              f"{100 * w7_verify.agree:.2f}%, max logit difference {w7_verify.max_abs_diff:.3g}.")
    notes = ("ResNet-20, CIFAR-10 test set. Our PTQ (MSE + BN re-estimation) under each policy, exported with "
             "`qpolicy.export.export_onnx` (opset 17: int8 weight initializers -> DequantizeLinear; inputs "
             "QuantizeLinear -> Clip to the b-bit range -> DequantizeLinear; the INT4 row: INT4 weights and UINT4 "
             "unsigned 4-bit inputs, opset 21) and run by onnxruntime "
             f"{ort.__version__} (CPU, {args.threads} threads) beside the PyTorch fake-quant model. One step = the "
             "last layer's input step x its largest weight step. Second table: median latency of integer models "
             "(measured interleaved: each round runs every model once) "
             "against the float export: ours (`export_int8`: the W8A8 policy's integer weights with BN folded into "
             "per-channel scales, its input step sizes, stored as uint8 so onnxruntime takes its exact u8u8 kernels; "
             "the requantization points the simulation keeps in float calibrated min-max on the 4,096 calibration "
             "images) and onnxruntime's own static quantization (QOperator, per-channel int8 weights, the same "
             "calibration images). On this CPU (AVX2 without VNNI) onnxruntime's u8s8 kernels add pairs of products "
             "in int16, which saturates; the u8u8 kernels are exact but slower.")
    write("export_onnx", {"policies": records, "int8": speed, "ort": ort.__version__}, table, notes)


if __name__ == "__main__":
    main()
