"""`qpolicy profile`: a model's latency table on a deployment target; `qpolicy measure`: a policy's exported
model timed end to end there, beside the table's prediction (qpolicy.latency)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ._common import (
    _add_data,
    _add_model,
    _add_policy,
    _calib_config,
    _check_policy_args,
    _emit,
    _int_list,
    _load_model,
    _policy,
    _policy_label,
    _preflight,
    _source,
)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("profile", help="measure a latency table: each layer at each precision the target runs "
                       "(float, int8 kernels), in context on the runtime, with repeats, medians and spread")
    _add_model(p)
    _add_data(p)
    p.add_argument("--target", default="ort-cpu", help="deployment target: ort-cpu (default) or ort-cuda")
    p.add_argument("--batch", default="1", metavar="B[,B...]", help="batch sizes to measure (default 1)")
    _add_timing(p, threads_default="0: the runtime's default")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration images")
    p.add_argument("-o", "--out", required=True, help="the latency table (JSON) to write; an existing one for the "
                   "same model, target, batch sizes and machine is reused")
    p.add_argument("--force", action="store_true", help="measure again even when --out holds a matching table")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log messages")

    p = sub.add_parser("measure", help="time a policy's model, exported as it ships (int8 kernels, float layers "
                       "between them), end to end on a target; with --latency-table, beside the table's prediction")
    _add_model(p)
    _add_data(p)
    _add_policy(p, required=True)
    p.add_argument("--latency-table", metavar="FILE", help="latency table of this model on the target (`qpolicy "
                   "profile`): each batch size then shows the predicted latency and the error")
    p.add_argument("--target", help="deployment target (default: the table's, else ort-cpu)")
    p.add_argument("--batch", metavar="B[,B...]", help="batch sizes to time (default: the table's, else 1)")
    _add_timing(p, threads_default="the table's, else 0: the runtime's default")
    p.add_argument("-o", "--out", help="write the measurement (JSON, format qpolicy.latency-measure) here; "
                   "`qpolicy report` draws it")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log messages")


def _add_timing(p: argparse.ArgumentParser, *, threads_default: str) -> None:
    """How each time is measured (ProfileConfig's repeats, adaptive repeats, run length, threads)."""
    p.add_argument("--repeats", type=int, default=15, help="repeats, each alternating with the all-int8 base model "
                   "(default 15)")
    p.add_argument("--max-repeats", type=int, default=60, help="more repeats, up to this many, while a median is "
                   "still uncertain (default 60; equal to --repeats: none)")
    p.add_argument("--precision", type=float, default=0.01, help="certain enough: a median's standard error at most "
                   "this share of the base latency (default 0.01)")
    p.add_argument("--run-ms", type=float, default=20.0, help="time each repeat over about this many ms of runs")
    p.add_argument("--threads", type=int, help=f"the runtime's intra-op threads (default: {threads_default})")


def _config(args: argparse.Namespace, target: str, batches: Any, threads: int) -> Any:
    """The ProfileConfig of these options (bad values fail here, before any work)."""
    from ..latency import ProfileConfig

    return ProfileConfig(target=target, batches=tuple(batches), repeats=args.repeats, run_ms=args.run_ms,
                         threads=threads, max_repeats=args.max_repeats, precision=args.precision)


def cmd_profile(args: argparse.Namespace) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..latency import load_or_profile

    batches = _int_list(args.batch, "--batch") or ()
    config = _config(args, args.target, batches, args.threads or 0)
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"--out {args.out}: give a file in an existing folder")
    from ..latency import target

    target(config.target).check()
    model = _load_model(args)
    from ..quant import CalibConfig

    cal = data.calib_loader(_source(args), batches=CalibConfig().batches_needed, seed=args.seed)
    _preflight(model, cal)
    table, reused = load_or_profile(out, model, calib=cal, config=config, model_name=args.model,
                                    command="qpolicy " + shlex.join(sys.argv[1:]), force=args.force)
    lines = [f"{args.model} on {table.target}: {'reused' if reused else 'wrote'} {out} "
             f"({len(table.layers)} layers x {len(table.precisions(next(iter(table.layers))))} precisions)"]
    for b in table.batches:
        base, flt = table.base_ms[b], table.float_ms[b]
        lines.append(f"batch {b}: all int8 {base.median:.3f} ms (IQR {base.spread:.3f}), float {flt.median:.3f} ms "
                     f"(IQR {flt.spread:.3f}); int8 / float = {base.median / flt.median:.2f}")
        worst = max(table.delta_ms, key=lambda n: max(abs(s[b].median) for s in table.delta_ms[n].values()))
        lines.append(f"  largest layer change: {worst}: " + ", ".join(
            f"{p} {s[b].median:+.3f} ms (IQR {s[b].spread:.3f})" for p, s in table.delta_ms[worst].items()))
    obj = {"out": str(out), "reused": reused, "table": table.to_dict()}
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..latency import LatencyTable, measure_latency, target

    _check_policy_args(args)
    table = LatencyTable.load(args.latency_table) if args.latency_table else None
    batches = _int_list(args.batch, "--batch") or (table.batches[:1] if table is not None else (1,))
    threads = args.threads if args.threads is not None else (
        int(table.provenance.get("threads", 0)) if table is not None else 0)
    name = args.target or (table.target if table is not None else "ort-cpu")
    config = _config(args, name, batches, threads)
    if table is not None:
        table.check_target(config.target)
        for b in config.batches:
            table.check_batch(b)
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise ConfigError(f"--out {args.out}: give a file in an existing folder")
    target(config.target).check()
    model = _load_model(args)
    policy = _policy(args, model)
    cal = data.calib_loader(_source(args), batches=_calib_config(args).batches_needed, seed=args.seed)
    _preflight(model, cal)
    (rec,) = measure_latency(model, [policy], calib=cal, config=config, calib_config=_calib_config(args),
                             table=table, model_name=args.model, command="qpolicy " + shlex.join(sys.argv[1:]))
    if out is not None:
        rec.save(out)
    lines = [f"{args.model} | {_policy_label(policy)} on {rec.target}, {threads or 'default'} thread(s)"]
    for b in rec.batches:
        m, base = rec.measured_ms[b], rec.base_ms[b]
        line = (f"batch {b}: measured {m.median:.4g} ms (IQR {m.q1:.4g}-{m.q3:.4g}); all int8 now "
                f"{base.median:.4g} ms")
        if b in rec.predicted_ms:
            line += (f"; predicted {rec.predicted_ms[b]:.4g} ms, error {rec.error(b):.1%} of measured; the machine "
                     f"{rec.drift(b):+.1%} vs when the table was measured")
        lines.append(line)
    if out is not None:
        lines.append(f"wrote {out}")
    _emit(args, {"out": str(out) if out else None, "measurement": rec.to_dict()}, "\n".join(lines))
    return 0


COMMANDS = {"profile": cmd_profile, "measure": cmd_measure}
