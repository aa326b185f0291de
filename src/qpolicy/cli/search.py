"""`qpolicy` commands: sensitivity tables, the policy search (validated, table strategies, dmpq/smpq, arq,
qfa) and Pareto sweeps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    _add_common,
    _add_data,
    _add_model,
    _add_search_opts,
    _default_data_only,
    _emit,
    _first_last_search,
    _int_list,
    _load_model,
    _noise_base,
    _preflight,
    _source,
)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("analyze", help="per-layer sensitivity table of a model under a metric, on training images")
    _add_common(p, test=False)
    _add_analyze(p)
    p.add_argument("-o", "--out", required=True, help="sensitivity table JSON to write")

    p = sub.add_parser("search", help="the policy that meets a budget with the least damage: by default "
                       "candidates measured on "
                       "the validation split; or a strategy over a sensitivity table")
    p.add_argument("table", nargs="?", help="sensitivity table JSON (or give --model and --metric)")
    _add_model(p, required=False, help_text="analyze this model first (zoo name or package.module:factory)")
    _add_data(p)
    p.add_argument("--device", default="auto")
    _add_analyze(p)
    p.add_argument("--budget", action="append", required=True,
                   help="size=0.375 | size=70KB | bitops=0.25 | bitops=1.2G | wbits=4 | abits=8 | latency=0.7 "
                   "(of float) | latency=1.2ms (repeatable; latency needs --latency-table)")
    p.add_argument("--latency-table", metavar="FILE", help="latency table of this model on the deployment target "
                   "(`qpolicy profile`): prices latency budgets, and the search prints the predicted latency")
    p.add_argument("--latency-batch", type=int, help="the latency table's batch size to price at (default: its "
                   "only one)")
    p.add_argument("--latency-target", metavar="TARGET", help="the deployment target the latency table must have "
                   "been measured on (e.g. ort-cpu; default: whichever it was)")
    p.add_argument("--float-layers", action="store_true", help="let the search keep layers in float too (ilp, "
                   "validated): lossless, 32-bit costs, the latency table's float entry")
    _add_search_opts(p)
    p.add_argument("--workers", type=int, help="model-in-the-loop strategies on a local Ray with this many CPUs "
                   "(default: serial; the same policy): the default search's candidates, smpq's Shapley "
                   "permutations, arq's certificates, qfa's subnet measurements")
    p.add_argument("--ray-address", help="the same on an existing Ray cluster (auto or HOST:PORT)")
    p.add_argument("--weight-bits", help="candidate weight bits, e.g. 2,3,4,8 (default: the table's)")
    p.add_argument("-o", "--out", help="policy JSON to write (dmpq/smpq: the run folder)")
    g = p.add_argument_group("validated search (the default with --model: candidates measured on validation images)")
    g.add_argument("--calib", default="mse", help="the calibration the policy will be deployed with, as for "
                   "`evaluate`: minmax, percentile, mse or WEIGHT/ACT (default mse)")
    g.add_argument("--no-bn-reestimate", action="store_true", help="the deployment keeps the float BN statistics")
    g.add_argument("--metrics", default="fisher,qerror", help="metrics whose ILP optimum is a candidate "
                   "(default fisher,qerror)")
    g.add_argument("--val-images", type=int, help="validation images scoring each policy (default 2000)")
    g.add_argument("--select-on", default="val", choices=["val", "select"], help="the images every choice is made "
                   "on: the validation split (default), or 'select', half of the test split, for a model trained on "
                   "the validation images (the published ResNets); report it on the other half (`--split report`; ARQ "
                   "certifies its policy there)")
    g.add_argument("--refine-evaluations", type=int, help="evaluations spent refining (0: none; default 8)")
    g.add_argument("--tables-dir", help="also write the metrics' sensitivity tables here (METRIC.json, what "
                   "`qpolicy report` plots)")
    _add_differentiable(p)
    _add_arq(p)
    g = p.add_argument_group("QFA (--strategy qfa, with --model and --supernet): search a trained supernet")
    g.add_argument("--supernet", help="run folder of `qpolicy supernet train`")
    g.add_argument("--samples", type=int, default=60, help="subnets measured to fit the accuracy predictor")
    g.add_argument("--qfa-val-images", type=int, default=1000, help="validation images measuring a subnet")
    g.add_argument("--generations", type=int, default=60, help="NSGA-II generations")
    g.add_argument("--population", type=int, default=64, help="NSGA-II population")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("pareto", help="re-solve a sensitivity table over a budget sweep (optionally evaluate)")
    p.add_argument("table", help="sensitivity table JSON")
    g = p.add_mutually_exclusive_group(required=True)
    for key, example in (("size", "0.2:0.6:10"), ("bitops", "0.1:0.5:20"), ("wbits", "2:6:9"), ("abits", "2:8:7")):
        g.add_argument(f"--{key}", metavar="LOW:HIGH:N", help=f"sweep {key}, e.g. {example}, or a list 0.2,0.3")
    p.add_argument("--budget", action="append", default=[], help="limits that hold at every point (repeatable)")
    _add_search_opts(p)
    p.add_argument("--evaluate", action="store_true", help="PTQ top-1 of every point on the test set")
    p.add_argument("--workers", type=int, help="evaluate on a local Ray with this many CPUs (default: serial)")
    p.add_argument("--ray-address", help="evaluate on an existing Ray cluster: auto or HOST:PORT")
    _add_model(p, required=False, help_text="model to evaluate (default: the table's zoo model)")
    _add_data(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, help="evaluate on a seeded random subset of this many test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", help="front JSON to write")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")


def _add_differentiable(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differentiable search (--strategy dmpq or smpq, with --model)")
    g.add_argument("--epochs", type=int, default=3, help="supernet training epochs (default 3)")
    g.add_argument("--train-limit", type=int, help="use a seeded subset of this many training images")
    g.add_argument("--train-batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.01, help="weights and step sizes (SGD, cosine)")
    g.add_argument("--arch-lr", type=float, default=0.01, help="architecture parameters (Adam)")
    g.add_argument("--complexity-weight", type=float, default=1.0, help="weight of the budget term")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature at the first step")
    g.add_argument("--final-temperature", type=float, default=0.1,
                   help="softmax temperature at the last step, annealed exponentially (equal to --temperature: fixed)")
    g.add_argument("--shapley-samples", type=int, default=10, help="smpq: permutations per Shapley round")
    g.add_argument("--shapley-rounds", type=int, default=1, help="smpq: Shapley rounds per epoch")
    g.add_argument("--shapley-images", type=int, default=256, help="smpq: held-out images scoring a subnet")
    g.add_argument("--truncation", type=float, default=0.2, help="smpq: cut a permutation at this top-1 fraction")
    g.add_argument("--momentum", type=float, default=0.8, help="smpq: momentum of the Shapley feedback")
    g.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def _add_arq(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ARQ (--strategy arq, with --model and -o RUN_FOLDER): reinforcement learning that keeps "
                             "smoothed accuracy and certified radius")
    g.add_argument("--sigma", type=float, default=0.25, help="smoothing noise, pixel units (default 0.25)")
    g.add_argument("--episodes", type=int, default=30, help="episodes, warm-up included (default 30)")
    g.add_argument("--warmup", type=int, default=10, help="episodes of random actions first (default 10)")
    g.add_argument("--arq-val-images", type=int, default=40, help="validation images rewarding a policy")
    g.add_argument("--reference-n", type=int, default=2000, help="samples certifying the float model on them")
    g.add_argument("--n-p", type=int, default=300, help="shared-noise samples per image for a policy (IRS)")
    g.add_argument("--reward-weight", type=float, default=0.5, help="weight of clean accuracy vs ACR in the reward")
    g.add_argument("--test-images", type=int, default=100, help="test images certifying the final policy (0: none)")
    g.add_argument("--test-n", type=int, default=1000, help="samples per test image for that certificate")
    g.add_argument("--noise-weights", help="noise-trained weights (default: the train-noise cache)")
    g.add_argument("--trained-dir", help="cache of trained models")
    g.add_argument("--allow-plain-base", action="store_true", help="search on a base that was not noise-trained")


def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default="qerror", help="see `qpolicy list metrics` (default qerror)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="candidate bit-widths to score")
    p.add_argument("--metric-batches", "--calib-batches", dest="metric_batches", type=int, default=1,
                   help="batches of 128 training images the metric reads (default 1; --calib-batches: its old name)")
    p.add_argument("--label", type=int, default=0, help="te: class of the same-label minibatch (default 0)")
    p.add_argument("--metric-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a metric setting, repeatable (te: damage=noise, normalize=support, batch_size=128, ...)")
    p.add_argument("--seed", type=int, default=0)


# ---- helpers ---------------------------------------------------------------------------------------------------
def _metric_options(factory, metric: str, items: list[str]) -> dict:
    """``--metric-opt KEY=VALUE`` items -> keyword arguments of the metric (ints, floats, true/false, text)."""
    import dataclasses

    from ..errors import ConfigError, shorten, suggest

    allowed = [f.name for f in dataclasses.fields(factory) if f.name != "name"] if dataclasses.is_dataclass(
        factory) else []
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--metric-opt must look like KEY=VALUE, got {shorten(item)}")
        if key not in allowed:
            raise ConfigError(f"metric {metric!r} has no setting {shorten(key)}{suggest(key, allowed)}; "
                              f"settings: {', '.join(allowed) or 'none'}")
        low = raw.strip().lower()
        value: object
        if low in ("true", "false"):
            value = low == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw.strip()
        out[key] = value
    return out




def _search_choices(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy, activation-bits and first/last options shared by search and pareto, checked."""
    from ..search import STRATEGIES

    args.strategy = args.strategy or "ilp"
    STRATEGIES.get(args.strategy)  # unknown names: "did you mean"
    acts = _int_list(args.act_bits, "--act-bits")
    first_last = _first_last_search(args.first_last)
    return {"strategy": args.strategy, "act_bits": acts[0] if acts is not None and len(acts) == 1 else acts,
            "first_last": first_last, "tie": args.tie}


def _analyze(args: argparse.Namespace, check=None):
    from .. import data
    from ..errors import ConfigError
    from ..sensitivity import METRICS, analyze

    factory = METRICS.get(args.metric)  # unknown names fail before anything is loaded
    base = {"label": args.label} if args.metric == "te" else {"batches": args.metric_batches}
    opts = {**base, **_metric_options(factory, args.metric, args.metric_opt)}
    try:
        metric = factory(**opts)
    except TypeError as e:  # a setting of the wrong type
        raise ConfigError(f"bad --metric-opt for metric {args.metric!r}: {e}") from None
    bits = _int_list(args.bits, "--bits")
    model = _load_model(args)
    if check is not None:  # e.g. the budget's own checks, before the metric runs
        check(model)
    # plain, shuffled training images: metrics take the batches they need (te: those of one label)
    train = data.loader(_source(args), "train", batch_size=128, shuffle=True, augment=False, seed=args.seed)
    _preflight(model, train)
    name = args.model if ":" not in args.model else None
    return analyze(model, train, metric=metric, bits=bits, seed=args.seed, model_name=name)


def cmd_analyze(args: argparse.Namespace) -> int:
    table = _analyze(args)
    table.save(args.out)
    low = table.bits[0]
    obj = {"out": args.out, "metric": table.metric, "seconds": table.provenance.get("seconds"),
           "ranking": table.ranking(low)}
    text = (f"{table.metric} sensitivity of {len(table.layers)} layers in {table.provenance.get('seconds', 0):.2f} s "
            f"-> {args.out}\nmost sensitive at {low} bits: {', '.join(table.ranking(low)[:5])}")
    _emit(args, obj, text)
    return 0


def cmd_search_differentiable(args: argparse.Namespace, budget) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..supernet import DifferentiableConfig, search_differentiable

    if args.table or not args.model or not args.out:
        raise ConfigError(f"--strategy {args.strategy} trains a supernet: give --model and -o RUN_FOLDER "
                          "(no sensitivity table)")
    bits = _int_list(args.bits if args.bits != "2,3,4,5,6,8" else "2,3,4,6,8", "--bits")
    acts = _int_list(args.act_bits, "--act-bits") or bits
    first_last = _first_last_search(args.first_last)
    config = DifferentiableConfig(weight_bits=_int_list(args.weight_bits, "--weight-bits") or bits, act_bits=acts,
                       first_last=first_last, epochs=args.epochs, batch_size=args.train_batch_size,
                       train_images=args.train_limit, lr=args.lr, arch_lr=args.arch_lr,
                       complexity_weight=args.complexity_weight, temperature=args.temperature,
                       final_temperature=args.final_temperature, shapley_samples=args.shapley_samples,
                       shapley_rounds=args.shapley_rounds, shapley_images=args.shapley_images,
                       truncation=args.truncation, momentum=args.momentum, checkpoint_every=args.checkpoint_every,
                       seed=args.seed)
    model = _load_model(args)
    train = data.loader(_source(args), "train", batch_size=args.train_batch_size, seed=args.seed)
    calib = data.calib_loader(_source(args), seed=args.seed)
    _preflight(model, train)
    res = search_differentiable(model, budget, method=args.strategy, train=train, calib=calib, config=config,
                                out_dir=args.out, resume=args.resume, device=args.device,
                                model_name=args.model if ":" not in args.model else None, workers=args.workers,
                                address=args.ray_address)
    from ..costs import policy_cost

    cost = policy_cost(res.supernet.layers, res.policy)
    resumed = f" (resumed from epoch {res.resumed_from['epoch']} step {res.resumed_from['step']})" \
        if res.resumed_from else ""
    text = (f"{args.strategy} under {budget}: {config.epochs} epoch(s) in {res.seconds:.0f} s{resumed}"
            + (f", Shapley {res.shapley_seconds:.0f} s" if res.shapley else "")
            + f"\n{cost.summary()}\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + f"\nwrote {Path(args.out) / 'policy.json'}, {Path(args.out) / 'search.json'}")
    _emit(args, res.to_dict(), text)
    return 0


def cmd_search_validated(args: argparse.Namespace, budget) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..quant.fake_quant import CalibConfig
    from ..select import SelectConfig, search_validated

    if args.table or not args.model:
        raise ConfigError("the validated search measures policies on the model: give --model (no sensitivity "
                          "table), or --strategy ilp for a table")
    choices = _search_choices(args)
    if args.tables_dir is not None and Path(args.tables_dir).exists() and not Path(args.tables_dir).is_dir():
        raise ConfigError(f"--tables-dir {args.tables_dir} is a file, not a folder")
    w, _, a = args.calib.partition("/")
    calib_config = CalibConfig(weight_method=w, act_method=a or w, bn_reestimate=not args.no_bn_reestimate)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    given = {k: v for k, v in (("val_images", args.val_images), ("refine_evaluations", args.refine_evaluations))
             if v is not None}
    config = SelectConfig(metrics=metrics, bits=_int_list(args.bits, "--bits"), metric_batches=args.metric_batches,
                          seed=args.seed, **given)
    model = _load_model(args)
    val = data.loader(_source(args), args.select_on, batch_size=250)
    # the loader `qpolicy evaluate` calibrates with: the scored policy's activation ranges are the deployed ones
    calib = data.calib_loader(_source(args), batches=calib_config.batches_needed, seed=args.seed)
    train = data.loader(_source(args), "train", batch_size=128, shuffle=True, augment=False, seed=args.seed)
    _preflight(model, val)
    res = search_validated(model, budget, calib=calib, val=val, metric_data=train, calib_config=calib_config,
                           config=config, act_bits=choices["act_bits"],
                           weight_bits=_int_list(args.weight_bits, "--weight-bits"),
                           first_last=choices["first_last"], tie=args.tie, device=args.device,
                           model_name=args.model if ":" not in args.model else None, workers=args.workers,
                           address=args.ray_address, tables_dir=args.tables_dir, float_layers=args.float_layers)
    if args.out:
        res.policy.save(args.out)
    prov, sel = res.policy.provenance, res.extra["selection"]
    uni = sel["best_uniform"]
    text = (f"validated search under {budget}: {prov['chosen']} chosen from {sel['evaluations']} evaluations in "
            f"{res.seconds:.0f} s (metrics {sel['metric_seconds']:.0f} s)\n"
            f"validation ({sel['images']} images): loss {prov['val_loss']:.4f}, top-1 {prov['val_top1']:.2f}%"
            + (f"; best uniform ({uni['source']}): loss {uni['val_loss']:.4f}, top-1 {uni['val_top1']:.2f}%"
               if uni else "")
            + f"\n{res.cost.summary()}{_latency_line(budget, res.policy)}"
            + f"\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + (f"\nwrote {args.out}" if args.out else ""))
    _emit(args, res.to_dict(), text)
    return 0


def cmd_search_arq(args: argparse.Namespace, budget) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..rl.arq import ARQConfig, search_arq
    from ..rl.ddpg import DDPGConfig

    _default_data_only(args, "the arq search")
    if args.table or not args.model or not args.out:
        raise ConfigError("--strategy arq measures policies on the model: give --model and -o RUN_FOLDER (no "
                          "sensitivity table)")
    choices = _search_choices(args)
    config = ARQConfig(episodes=args.episodes, val_images=args.arq_val_images, reference_n=args.reference_n,
                       n_p=args.n_p, reward_weight=args.reward_weight, test_images=args.test_images,
                       test_n=args.test_n, ddpg=DDPGConfig(warmup=args.warmup), seed=args.seed,
                       select_on=args.select_on)
    from ..robust.noise import check_sigma

    model = _noise_base(args, check_sigma(args.sigma))
    calib = data.calib_loader(_source(args), seed=args.seed)
    _preflight(model, calib)
    res = search_arq(model, budget, calib=calib, out_dir=args.out, sigma=args.sigma, config=config,
                     act_bits=choices["act_bits"], weight_bits=_int_list(args.weight_bits, "--weight-bits"),
                     first_last=choices["first_last"], tie=args.tie, resume=args.resume, device=args.device,
                     model_name=args.model if ":" not in args.model else None, workers=args.workers,
                     address=args.ray_address)
    arq, test = res.policy.provenance["arq"], res.extra["test"]
    text = (f"arq under {budget}: {arq['episodes']} episodes in {res.seconds:.0f} s, best at episode "
            f"{arq['best_episode']} (reward {arq['best_reward']:.4f})\n"
            f"validation ({arq['val_images']} images, sigma {arq['sigma']:g}): smoothed accuracy "
            f"{arq['val_clean_accuracy']:.1f}% (float {arq['fp_val_clean_accuracy']:.1f}%), ACR {arq['val_acr']:.3f} "
            f"(float {arq['fp_val_acr']:.3f})"
            + (f"\ntest ({test['images']} images): smoothed accuracy {test['clean_accuracy']:.1f}%, ACR "
               f"{test['acr']:.3f}, certified accuracy at 0.25 {test['certified_accuracy']['0.25']:.1f}%, at 0.5 "
               f"{test['certified_accuracy']['0.5']:.1f}%" if test else "")
            + f"\n{res.cost.summary()}{_latency_line(budget, res.policy)}"
            + f"\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + f"\nwrote {Path(args.out) / 'policy.json'}, {Path(args.out) / 'search.json'}")
    _emit(args, {k: v for k, v in res.to_dict().items() if k != "history"}, text)
    return 0


def cmd_search_qfa(args: argparse.Namespace, budget) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..supernet.qfa_search import QFASearchConfig, search_qfa

    if args.table or not args.model or not args.supernet:
        raise ConfigError("--strategy qfa searches a trained supernet: give --model and --supernet RUN_FOLDER "
                          "(from `qpolicy supernet train`)")
    config = QFASearchConfig(samples=args.samples, val_images=args.qfa_val_images, generations=args.generations,
                             population=args.population, seed=args.seed)
    model = _load_model(args)
    val = data.loader(_source(args), "val", batch_size=250, limit=config.val_images)
    calib = data.calib_loader(_source(args), batches=16, seed=args.seed)
    _preflight(model, val)
    front_out = str(Path(args.out).with_suffix("")) + "_front.json" if args.out else None
    res = search_qfa(model, budget, supernet=args.supernet, calib=calib, val=val, config=config, device=args.device,
                     model_name=args.model if ":" not in args.model else None, front_out=front_out,
                     workers=args.workers, address=args.ray_address)
    if args.out:
        res.policy.save(args.out)
    q = res.policy.provenance["qfa"]
    tau = f"{q['predictor_kendall_tau']:.3f}" if q["predictor_kendall_tau"] is not None else "n/a"
    text = (f"qfa under {budget}: {q['measured_subnets']} subnets measured, predictor Kendall tau {tau} on "
            f"{q['held_out']} held out, NSGA-II front of {len(res.extra['front'])}, {res.seconds:.0f} s\n"
            f"validation top-1 {q['val_top1']:.2f}% (predicted {q['predicted_val_top1']:.2f}%)\n{res.cost.summary()}"
            f"\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + (f"\nwrote {args.out}, {front_out}" if args.out else ""))
    _emit(args, {k: v for k, v in res.to_dict().items() if k != "measured"}, text)
    return 0


RUNNERS = {"qfa": cmd_search_qfa, "arq": cmd_search_arq, "validated": cmd_search_validated,
           "supernet": lambda args, budget: cmd_search_differentiable(args, budget)}


def _latency_line(budget, policy) -> str:
    """The predicted latency of a searched policy, when the budget carries a latency table."""
    t = budget.latency_table
    if t is None:
        return ""
    ms = budget.predicted_latency_ms(policy)
    where = f"on {t.target}, batch {budget.latency_batch}"
    if ms is None:
        return f"\npredicted latency: none ({where}: the policy has layers without int8 or float kernels)"
    flt = t.float_ms[budget.latency_batch].median
    return f"\npredicted latency {ms:.4g} ms {where} ({ms / flt:.3f} of float's measured {flt:.4g} ms)"


def cmd_search(args: argparse.Namespace) -> int:
    from ..budget import Budget
    from ..errors import ConfigError
    from ..latency import LatencyTable
    from ..layers import quantizable_layers
    from ..runner import check_address, check_workers
    from ..search import STRATEGIES, search
    from ..search.base import ModelStrategy, check_budget, check_float_layers
    from ..sensitivity import DEFAULT_BITS, SensitivityTable

    table = None if not args.latency_table else LatencyTable.load(args.latency_table)
    if args.latency_target is not None:
        if table is None:
            raise ConfigError("--latency-target needs --latency-table")
        table.check_target(args.latency_target)
    budget = Budget.parse(args.budget, latency_batch=args.latency_batch, latency_table=table)
    args.strategy = args.strategy or ("validated" if args.model and not args.table else "ilp")
    entry = STRATEGIES.get(args.strategy)  # unknown names: "did you mean"
    check_workers(args.workers)  # before any work: bad counts and unreachable clusters fail at once
    check_address(args.ray_address)
    check_float_layers(args.strategy, args.float_layers)
    if isinstance(entry, ModelStrategy):  # model-in-the-loop: dispatch on the kind of run, not on the name
        if budget.has_latency() and not entry.latency:
            budget.limits((), without_latency=args.strategy)  # the library's error, before any work
        return RUNNERS[entry.runner](args, budget)
    if (args.workers or 1) > 1 or args.ray_address:
        raise ConfigError(f"--workers and --ray-address apply to the strategies that measure policies on the model "
                          f"(validated, smpq, arq, qfa); {args.strategy} solves a table in this process")
    choices = _search_choices(args)
    if args.table and args.model:
        raise ConfigError("give a sensitivity table or --model, not both")
    if args.table:
        table = SensitivityTable.load(args.table)
    elif args.model:
        def check(model) -> None:
            check_budget(quantizable_layers(model), budget, bits=_int_list(args.bits, "--bits") or DEFAULT_BITS,
                         weight_bits=_int_list(args.weight_bits, "--weight-bits"), float_layers=args.float_layers,
                         **{k: v for k, v in choices.items() if k != "strategy"})

        table = _analyze(args, check)
    else:
        raise ConfigError("give a sensitivity table file, or --model (and --metric) to analyze one")
    res = search(table, budget, seed=args.seed, weight_bits=_int_list(args.weight_bits, "--weight-bits"),
                 float_layers=args.float_layers, **choices)
    if args.out:
        res.policy.save(args.out)
    bits = " ".join(f"{b.short()}" for b in res.policy.layers.values())
    text = (f"{table.metric} + {res.strategy} under {budget}: predicted damage {res.predicted_damage:.4g}, "
            f"solved in {res.seconds * 1000:.1f} ms\n{res.cost.summary()}{_latency_line(budget, res.policy)}\n{bits}"
            + (f"\nwrote {args.out}" if args.out else ""))
    _emit(args, res.to_dict(), text)
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from .. import data
    from ..budget import Budget
    from ..errors import ConfigError
    from ..pipeline import evaluate_front
    from ..quant.fake_quant import CalibConfig
    from ..search import pareto
    from ..search.pareto import parse_sweep
    from ..sensitivity import SensitivityTable

    key = next(k for k in ("size", "bitops", "wbits", "abits") if getattr(args, k) is not None)
    values = parse_sweep(getattr(args, key))
    fixed = Budget.parse(args.budget) if args.budget else None
    choices = _search_choices(args)
    table = SensitivityTable.load(args.table)
    from ..runner import RunStats, check_address, check_workers

    check_workers(args.workers)  # before any work: bad counts and unreachable clusters fail at once
    check_address(args.ray_address)
    front = pareto(table, key, values, fixed=fixed, seed=args.seed, **choices)
    stats = RunStats()
    if args.evaluate:
        args.model = args.model or table.model
        if not args.model:
            raise ConfigError("the table names no model: give --model to evaluate the front")
        model = _load_model(args)
        cfg = CalibConfig()
        test = data.loader(_source(args), "test", batch_size=args.batch_size, limit=args.limit)
        calib = data.calib_loader(_source(args), batches=cfg.batches_needed, seed=args.seed)
        _preflight(model, test)
        partial = Path(str(args.out) + ".points.json") if args.out else None  # finished points: a rerun resumes
        front = evaluate_front(model, front, test=test, calib=calib, calib_config=cfg, device=args.device,
                               workers=args.workers, address=args.ray_address, results=partial, stats=stats)
    if args.out:
        front.save(args.out)
        if args.evaluate and partial is not None:
            partial.unlink(missing_ok=True)
    lines = [f"{table.metric} + {front.strategy}, sweep {key}: {len(front.points)} points"
             + (f", evaluated on {stats.backend} in {stats.seconds:.1f} s (Ray start {stats.startup_seconds:.1f} s"
                f", {stats.resumed} resumed)" if args.evaluate else "")
             + (f", infeasible at {', '.join(f'{v:g}' for v in front.infeasible)}" if front.infeasible else "")]
    for pt in front.points:
        c = pt["cost"]
        lines.append(f"{key}={pt['value']:.4g}: size {c['size_rel_w8a8']:.3f}, BitOPs {c['bitops_rel_w8a8']:.3f}, "
                     f"damage {pt['predicted_damage']:.4g}, {pt['seconds'] * 1000:.1f} ms"
                     + (f", top-1 {pt['top1']:.2f}%" if "top1" in pt else ""))
    _emit(args, front.to_dict(), "\n".join(lines))
    return 0


COMMANDS = {"analyze": cmd_analyze, "search": cmd_search, "pareto": cmd_pareto}
