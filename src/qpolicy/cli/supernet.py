"""`qpolicy` commands: QFA supernets: train once, evaluate any policy without retraining."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    _add_model,
    _add_run_opts,
    _emit,
    _first_last_search,
    _int_list,
    _join_torchrun,
    _load_model,
    _policy_label,
    _preflight,
    _preflight_split,
    _source,
)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("supernet", help="a quantized-for-all (QFA) bit-width supernet: train once, use any policy")
    ss = p.add_subparsers(dest="supernet_command", required=True, metavar="ACTION")
    t = ss.add_parser("train", help="train a QFA supernet (sandwich rule, distillation, BatchQuant)")
    _add_model(t)
    t.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, result.json")
    t.add_argument("--weight-bits", default="2,3,4,8", help="candidate weight bits (default 2,3,4,8)")
    t.add_argument("--act-bits", default="2,3,4,8", help="candidate activation bits (default 2,3,4,8)")
    t.add_argument("--first-last", default="8", help="fix first and last layer at these bits, or 'search'")
    t.add_argument("--act-quantizer", default="batchquant", help="batchquant (default) or lsq")
    t.add_argument("--random-subnets", type=int, default=2, help="random subnets per step besides the extremes")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--train-batch-size", type=int, default=128)
    t.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--seed", type=int, default=0)
    _add_run_opts(t)
    e = ss.add_parser("eval", help="top-1 of any policy on a trained supernet, without retraining")
    e.add_argument("run", help="the supernet's run folder")
    _add_model(e)
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--uniform", metavar="SPEC", help="uniform policy, e.g. w4a4")
    g.add_argument("--policy", metavar="FILE", help="policy JSON file")
    e.add_argument("--first-last", default="8", help="bits of the first and last layer for --uniform")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--limit", type=int, help="a seeded random subset of this many images")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("-o", "--out", help="write the evaluation JSON (what `qpolicy report` reads)")
    _add_run_opts(e)


def cmd_supernet(args: argparse.Namespace) -> int:
    from .. import data
    from ..supernet.shared import QFAConfig, load_qfa, subnet_model, train_qfa

    if args.supernet_command == "train":
        _join_torchrun(args)
        first_last = _first_last_search(args.first_last)
        config = QFAConfig(weight_bits=_int_list(args.weight_bits, "--weight-bits") or (),
                           act_bits=_int_list(args.act_bits, "--act-bits") or (), first_last=first_last,
                           epochs=args.epochs, lr=args.lr, random_subnets=args.random_subnets,
                           act_quantizer=args.act_quantizer, checkpoint_every=args.checkpoint_every, seed=args.seed)
        model = _load_model(args)
        train = data.loader(_source(args), "train", batch_size=args.train_batch_size, limit=args.train_limit,
                            seed=args.seed)
        calib = data.calib_loader(_source(args), batches=max(config.calib_batches, config.bn_batches), seed=args.seed)
        _preflight(model, train)
        res = train_qfa(model, train, calib=calib, config=config, out_dir=args.out, resume=args.resume,
                        device=args.device, model_name=args.model if ":" not in args.model else None)
        from .._io import write_json

        obj = {"format": "qpolicy.qfa", "version": 1, "model": args.model, "config": config.to_dict(),
               "train": res.train.to_dict()}
        write_json(Path(args.out) / "result.json", obj)
        t = res.train
        text = (f"QFA supernet of {args.model}: {t.epochs} epoch(s) in {t.seconds:.0f} s, weight bits "
                f"{list(config.weight_bits)}, act bits {list(config.act_bits)} ({config.act_quantizer}); last epoch "
                f"loss {t.history[-1]['loss']:.3f}, largest-subnet train top-1 {t.history[-1]['top1']:.2f}%\n"
                f"wrote {Path(args.out) / 'checkpoint.pt'}, {Path(args.out) / 'result.json'}")
        _emit(args, obj, text)
        return 0
    from ..evaluate import evaluate
    from ..policy import Policy, uniform_policy

    if args.uniform is not None:
        from ..policy import _first_last_bits, parse_uniform_spec

        _first_last_bits(args.first_last, parse_uniform_spec(args.uniform))
    model = _load_model(args)
    _preflight_split(model, args, args.split)
    net, config = load_qfa(model, args.run)
    policy = Policy.load(args.policy) if args.policy is not None else uniform_policy(model, args.uniform,
                                                                         first_last=args.first_last,
                                                                         model_name=args.model)
    policy.validate(model)
    calib = data.calib_loader(_source(args), batches=max(config.calib_batches, config.bn_batches))
    plain = subnet_model(net, policy, calib, config)
    split = data.loader(_source(args), args.split, batch_size=args.batch_size, limit=args.limit)
    res = evaluate(plain, split, device=args.device)
    from ..costs import policy_cost
    from ..layers import quantizable_layers

    cost = policy_cost(quantizable_layers(model), policy)
    obj = {"format": "qpolicy.evaluation", "version": 1, "model": args.model, "supernet": str(args.run),
           "split": args.split, "top1": res.top1, "loss": res.loss, "correct": res.correct, "total": res.total,
           "cost": cost.to_dict(per_layer=False),
           "policy": policy.with_provenance(supernet=str(args.run)).to_dict()}
    if args.out:
        from .._io import write_json

        write_json(args.out, obj)
    _emit(args, obj, f"{args.model} | {_policy_label(policy)} on the QFA supernet {args.run} (no retraining)\n"
                     f"{args.split} top-1 {res.top1:.2f}% ({res.correct}/{res.total})\n{cost.summary()}")
    return 0


COMMANDS = {"supernet": cmd_supernet}
