"""`qpolicy` commands: PTQ evaluation of a policy, the HTML report of a run folder, and ONNX export."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    _add_common,
    _add_policy,
    _calib_config,
    _check_policy_args,
    _emit,
    _load_model,
    _loaders,
    _policy,
    _policy_label,
    _preflight,
    _source,
)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("evaluate", help="the test split's top-1 (or your task's metric) and the costs of the float "
                       "model"
                       " or of a policy after PTQ")
    _add_common(p)
    _add_policy(p)
    p.add_argument("-o", "--out", help="also write the result as JSON (what `qpolicy report` reads)")

    p = sub.add_parser("report", help="an HTML report (figures embedded) and markdown summary of a run folder")
    p.add_argument("run", help="folder with sensitivity tables, policies, Pareto fronts, evaluations")
    p.add_argument("-o", "--out", help="HTML file to write (default RUN/report.html; the .md goes beside it)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("export", help="ONNX export of a quantized model (standard Q/DQ), optionally verified")
    _add_common(p)
    _add_policy(p, required=True)
    p.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int4", action="store_true", help="INT4/UINT4 tensors for 4-bit weights and inputs (opset 21)")
    p.add_argument("--int8-kernels", action="store_true",
                   help="a policy whose layers have 8-bit inputs (weights up to 8 bits) or float ones (f) as "
                        "integer operators (QLinearConv, ...) that onnxruntime runs with int8 kernels, the float "
                        "layers as float operators between them; requantizes where the simulation keeps float, so "
                        "--verify allows 0.5 points")
    p.add_argument("--verify", action="store_true", help="run it in onnxruntime on the test set beside PyTorch")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..pipeline import evaluate_policy

    _check_policy_args(args)
    model = _load_model(args)
    policy = _policy(args, model)
    calib_config = _calib_config(args) if policy is not None else None
    test, cal = _loaders(args, calib=policy is not None)
    _preflight(model, test)
    res = evaluate_policy(model, policy, test=test, calib=cal, calib_config=calib_config, device=args.device)
    if args.save_policy and policy is not None:
        policy.save(args.save_policy)
    a = res.accuracy
    obj = {**res.record(model=args.model, data=_source(args).to_dict()), "split": args.split}
    score = (f"top-1 {a.top1:.2f}% ({a.correct}/{a.total})" if a.top1 is not None
             else f"{a.metric_name} {a.metric:.6g} ({a.total} samples)")
    text = (f"{args.model} | {_policy_label(policy)}"
            + (f" | calib {args.calib}, {args.calib_batches} batches, {res.calib_seconds:.1f} s" if policy else "")
            + f"\n{score}, loss {a.loss:.4f}, {a.seconds:.1f} s"
            + f"\n{res.cost.summary()}")
    if args.out:
        from .._io import write_json

        write_json(args.out, obj)
    _emit(args, {k: v for k, v in obj.items() if k not in ("format", "version")}, text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import render_report

    out = args.out or str(Path(args.run) / "report.html")
    info = render_report(args.run, out)
    text = ""
    for part in ("summary", "certify"):
        headers, rows = info[part]["headers"], info[part]["rows"]
        if rows:
            widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
            text += "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                              for r in [headers, *rows]) + "\n"
    text += (f"report: {info['html']} (and {Path(info['markdown']).name}): {len(info['figures'])} figures from "
             f"{info['tables']} table(s), {info['policies']} policy file(s), {info['fronts']} front(s), "
             f"{info['evaluations']} evaluation(s), {info['certificates']} certify result(s)"
             + (f"\nONNX: {', '.join(str(Path(args.run) / o) for o in info['onnx'])}" if info["onnx"] else ""))
    _emit(args, info, text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..layers import quantizable_layers
    from ..quant import apply_policy

    try:
        from ..export import export_int8, export_onnx, verify_onnx
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"export needs onnx and onnxruntime (pip install 'qpolicy[onnx]'): {e}") from None
    _check_policy_args(args)
    if args.int8_kernels and args.int4:  # before any model work
        raise ConfigError("--int8-kernels and --int4 exclude each other: integer kernels here are 8-bit")
    from ..export.onnx import check_opset

    check_opset(args.opset)
    model = _load_model(args)
    policy = _policy(args, model)
    test, cal = _loaders(args, calib=True)
    _preflight(model, test)
    qmodel = apply_policy(model, policy, calib=cal, config=_calib_config(args))
    shape = next((li.in_shape for li in quantizable_layers(model) if li.in_shape), None)
    shape = getattr(model, "input_shape", None) or shape
    wide = any(lb.act_bits is not None and lb.act_bits > 8 for lb in policy.layers.values())
    opset = max(args.opset, 21) if args.int4 or (wide and not args.int8_kernels) else args.opset
    if args.int8_kernels:
        info = export_int8(qmodel, args.out, calib=cal, input_shape=tuple(shape), policy=policy, opset=opset)
        what = ", ".join(f"{info['ops'][k]} {k}" for k in ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd")
                         if info["ops"].get(k)) + f", {len(info['float_layers'])} float layer(s)"
    else:
        info = export_onnx(qmodel, args.out, input_shape=tuple(shape), policy=policy, opset=opset, int4=args.int4)
        what = f"{info['ops'].get('QuantizeLinear', 0)} QuantizeLinear"
    obj: dict[str, Any] = {"export": info, "policy_label": _policy_label(policy)}
    text = f"{args.model} | {_policy_label(policy)}\nwrote {args.out} ({info['bytes'] / 1024:.0f} KiB, opset " \
           f"{info['opset']}, {what})"
    if args.verify:
        res = verify_onnx(args.out, qmodel, test)
        obj["verify"] = res.to_dict()
        text += (f"\nonnxruntime top-1 {res.top1_onnx:.2f}% | PyTorch top-1 {res.top1_torch:.2f}% on {res.total} "
                 f"images; predictions agree on {100 * res.agree:.2f}%; logits within one step "
                 f"({res.tolerance:.2g}) on {100 * res.images_within_tolerance:.2f}% of images, max |diff| "
                 f"{res.max_abs_diff:.3g}")
        if args.int8_kernels:
            from ..export.int8 import INT8_TOP1_TOLERANCE

            failure = "" if abs(res.top1_onnx - res.top1_torch) <= INT8_TOP1_TOLERANCE else (
                f"verification failed: onnxruntime top-1 {res.top1_onnx:.2f}% vs PyTorch {res.top1_torch:.2f}% "
                f"(an int8-kernel model may differ by {INT8_TOP1_TOLERANCE} points)")
        else:
            text += (f"\n{res.disagree} differing prediction(s), each within the top-2 margin that one step at the "
                     f"last layer's input explains ({res.margin_bound:.3g})" if res.passed else "")
            failure = res.failure()
        if failure:
            _emit(args, obj, text)
            raise ConfigError(failure)
    _emit(args, obj, text)
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "report": cmd_report, "export": cmd_export}
