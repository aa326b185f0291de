"""`qpolicy` commands: the model zoo, a model's quantizable layers, and the registries."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _add_common, _emit, _load_model


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("inspect", help="table of a model's quantizable layers (name, kind, params, MACs, shapes, "
                       "kurtosis) at the data's input size")
    _add_common(p, data=False)
    p.add_argument("-o", "--out", help="also write the table as JSON (`qpolicy report` plots the weight kurtosis)")

    p = sub.add_parser("list", help="registered metrics, strategies, models, datasets, attacks, defenses or latency "
                       "targets")
    p.add_argument("what", choices=["metrics", "strategies", "models", "datasets", "attacks", "defenses", "targets"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


# ---- commands ----------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .. import models
    from ..models.shipped import manifest

    rows = [(models.spec(n), manifest(n)) for n in models.names()]
    obj = {"models": [{"name": s.name, "dataset": s.dataset, "input_shape": list(s.input_shape),
                       "pretrained": bool(s.weights or m), "weights": s.weights or (m and m["weights"]), "url": s.url,
                       "reference_top1": s.reference_top1 if m is None else m["test_top1"],
                       "description": s.description, "trained_on": s.trained_on or None,
                       "sees_validation": s.sees_validation, "shipped": m} for s, m in rows]}
    lines = [f"{'name':<18} {'dataset':<9} {'input':<12} {'weights':<26} {'test top-1':>10}  description"]
    for (s, m), row in zip(rows, obj["models"], strict=True):
        top1 = f"{row['reference_top1']:.2f}" if row["reference_top1"] is not None else "-"
        lines.append(f"{s.name:<18} {s.dataset:<9} {'x'.join(map(str, s.input_shape)):<12} "
                     f"{row['weights'] or '-':<26} {top1:>10}  {s.description}")
        if s.trained_on:
            lines.append(f"{'':<18} trained on {s.trained_on}")
        if m is not None:
            lines.append(f"{'':<18} shipped with qpolicy: trained by `{m['command']}` at commit {m['commit'][:10]}; "
                         f"validation top-1 {m['val_top1']:.2f}")
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..layers import quantizable_layers
    from ..train.kurtosis import layer_kurtosis

    model = _load_model(args)
    layers = quantizable_layers(model)
    kurt = layer_kurtosis(model, [li.name for li in layers])
    obj = {"model": args.model, "layers": [{**li.to_dict(), "kurtosis": kurt[li.name]} for li in layers],
           "total": {"params": sum(li.params for li in layers), "macs": sum(li.macs for li in layers)}}
    lines = [f"{'#':>3} {'name':<28} {'kind':<9} {'params':>9} {'MACs':>11} {'input':<14} {'output':<14} kurtosis"]
    for i, li in enumerate(layers):
        fmt = lambda s: "x".join(map(str, s)) if s else "-"  # noqa: E731
        lines.append(f"{i:>3} {li.name:<28} {li.kind:<9} {li.params:>9,} {li.macs:>11,} {fmt(li.in_shape):<14} "
                     f"{fmt(li.out_shape):<14} {kurt[li.name]:.2f}")
    lines.append(f"{len(layers)} quantizable layers, {obj['total']['params']:,} weights, "
                 f"{obj['total']['macs'] / 1e6:.2f} M MACs per sample")
    if args.out:
        from .._io import write_json

        write_json(args.out, {"format": "qpolicy.layers", "version": 1, **obj})
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .. import models
    from ..search import STRATEGIES
    from ..sensitivity import METRICS

    if args.what == "datasets":
        from .. import datasets

        rows = {n: datasets.REGISTRY.get(n) for n in datasets.names()}
        obj = {"datasets": {n: {"summary": p.summary, "default": p.default} for n, p in rows.items()},
               "also": "package.module:FACTORY or path/to/file.py:FACTORY (a function returning the splits)"}
        lines = [f"{n:12s} {p.summary}{' (default)' if p.default else ''}" for n, p in rows.items()]
        lines.append(f"{'MODULE:FN':12s} {obj['also']}")
        _emit(args, obj, "\n".join(lines))
        return 0
    if args.what == "targets":
        from ..latency import PRECISIONS, TARGETS

        rows = {n: TARGETS.get(n) for n in TARGETS.names()}
        obj = {"targets": {n: {"description": t.description, "provider": t.provider,
                               "precisions": {p: PRECISIONS[p] for p in t.precisions}} for n, t in rows.items()}}
        _emit(args, obj, "\n".join(f"{n:10s} {t.description}; precisions: {', '.join(t.precisions)}"
                                   for n, t in rows.items()))
        return 0
    if args.what in ("attacks", "defenses"):
        from ..robust.attacks import ATTACKS
        from ..robust.defenses import DEFENSES

        reg = ATTACKS if args.what == "attacks" else DEFENSES
        rows = {n: reg.get(n) for n in reg.names()}
        obj = {args.what: {n: {"description": s.description, **({"params": dict(s.defaults), "black_box": s.black_box,
                                                                   "uses_eps": s.uses_eps} if args.what == "attacks"
                                                                 else {"kind": s.kind, "options": s.make_config()
                                                                       .to_dict()})} for n, s in rows.items()}}
        _emit(args, obj, "\n".join(f"{n:12s} {s.description}" for n, s in rows.items()))
        return 0
    names = {"metrics": METRICS.names(), "strategies": STRATEGIES.names(),
             "models": models.names()}[args.what]
    _emit(args, {args.what: names}, "\n".join(names))
    return 0


COMMANDS = {"models": cmd_models, "inspect": cmd_inspect, "list": cmd_list}
