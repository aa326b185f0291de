"""`qpolicy` commands for training: QAT under a policy, noise training for smoothing, float training and
train-based defenses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    _add_common,
    _add_model,
    _add_policy,
    _add_run_opts,
    _calib_config,
    _check_policy_args,
    _default_data_only,
    _emit,
    _join_torchrun,
    _load_model,
    _loaders,
    _policy,
    _policy_label,
    _preflight,
    _source,
)


def _add_training_run(p: argparse.ArgumentParser, run_name: str) -> None:
    """The flags of a training run that is cached (or written to --out), checkpointed and resumable."""
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between mid-epoch checkpoints (0: off)")
    p.add_argument("--trained-dir", help="cache of trained models (default $QPOLICY_TRAINED or ~/.cache/qpolicy/"
                   f"trained); the run goes to TRAINED_DIR/{run_name}")
    p.add_argument("--out", help="run folder instead of the cache (checkpoint.pt, weights.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    _add_run_opts(p)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("finetune", help="quantization-aware fine-tuning under a policy (checkpointed, resumable)")
    _add_common(p)
    _add_policy(p, required=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, policy.json, result.json")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between mid-epoch checkpoints (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--kurtosis-lambda", type=float, default=0.0, help="KURE: weight of the kurtosis regularizer "
                   "(the paper: 1.0; default 0: off)")
    p.add_argument("--kurtosis-target", type=float, default=1.8, help="KURE: target kurtosis (1.8: uniform)")
    p.add_argument("--kurtosis-bn-folded", action="store_true", help="KURE: regularize BatchNorm-folded weights")

    p = sub.add_parser("train-noise", help="fine-tune a model under Gaussian noise: the base of a smoothed classifier")
    _add_model(p)
    p.add_argument("--sigma", type=float, default=0.25, help="noise standard deviation, pixel units (default 0.25)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    _add_training_run(p, "MODEL-noiseSIGMA")

    p = sub.add_parser("train", help="train a float model from random weights (a zoo model without public "
                       "weights, or your model file on your --data), or a train-based adversarial defense "
                       "(checkpointed, resumable)")
    _add_model(p)
    p.add_argument("--defense", help="a train-based defense (see `qpolicy list defenses`); default: plain training "
                   "from random weights")
    p.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense setting, e.g. eps=0.008 (repeatable; see `qpolicy list defenses`)")
    p.add_argument("--epochs", type=int, help="default 30 from scratch, 3 for a defense (fine-tuning)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 from scratch, 0.01 for a defense)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="SGD with Nesterov momentum "
                   "(default) or AdamW")
    p.add_argument("--teacher", metavar="MODEL", help="distill from this zoo model (Hinton et al. 2015) on the same "
                   "training images: the student sees nothing the plain run would not")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="softmax temperature of the distillation")
    p.add_argument("--kd-weight", type=float, default=0.9, help="the distillation term's share of the loss")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: bfloat16 autocast with "
                   "channels-last batches, about 2x faster on CPUs with AVX-512 BF16 and on recent GPUs (weights "
                   "stay float32)")
    _add_training_run(p, "MODEL[-DEFENSE]")


def cmd_finetune(args: argparse.Namespace) -> int:
    from .. import data
    from ..pipeline import finetune_policy
    from ..qat.finetune import FinetuneConfig

    _check_policy_args(args)
    _join_torchrun(args)
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                            checkpoint_every=args.checkpoint_every, seed=args.seed,
                            kurtosis_lambda=args.kurtosis_lambda, kurtosis_target=args.kurtosis_target,
                            kurtosis_bn_folded=args.kurtosis_bn_folded)
    model = _load_model(args)
    policy = _policy(args, model)
    test, cal = _loaders(args, calib=True)
    train = data.loader(_source(args), "train", batch_size=args.train_batch_size, limit=args.train_limit,
                        seed=args.seed)
    _preflight(model, test)
    run, _ = finetune_policy(model, policy, train=train, test=test, calib=cal, out_dir=args.out, config=config,
                             calib_config=_calib_config(args), resume=args.resume, device=args.device)
    f = run.finetune
    resumed = f" (resumed from epoch {f.resumed_from['epoch']} step {f.resumed_from['step']})" if f.resumed_from else ""
    spe = f"{f.seconds_per_epoch:.1f} s/epoch" if f.seconds_per_epoch else f"{f.seconds:.1f} s"
    text = (f"{args.model} | {_policy_label(policy)} | {f.epochs} epoch(s){resumed}, {spe}\n"
            f"top-1 before {run.before.top1:.2f}% -> after {run.after.top1:.2f}%\n"
            f"wrote {Path(args.out) / 'result.json'}, {Path(args.out) / 'policy.json'}, {f.checkpoint}")
    _emit(args, run.to_dict(), text)
    return 0




def cmd_train_noise(args: argparse.Namespace) -> int:
    from .. import data
    from ..errors import ConfigError
    from ..evaluate import evaluate
    from ..robust.noise import NoiseTrainConfig, noise_model_dir, train_noise

    _default_data_only(args, "train-noise")
    config = NoiseTrainConfig(sigma=args.sigma, epochs=args.epochs, lr=args.lr, checkpoint_every=args.checkpoint_every,
                              seed=args.seed)
    if ":" in args.model and not args.out:
        raise ConfigError("a model outside the zoo has no cache name: give --out RUN_FOLDER")
    out = Path(args.out) if args.out else noise_model_dir(args.model, config.sigma, args.trained_dir)
    model = _load_model(args)
    train = data.loader(_source(args), "train", batch_size=args.train_batch_size, limit=args.train_limit,
                        seed=args.seed)
    _preflight(model, train)
    res = train_noise(model, train, config=config, out_dir=out, resume=args.resume, device=args.device,
                      model_name=args.model)
    val = evaluate(model, data.loader(_source(args), "val", batch_size=500, limit=1000),
                   device=args.device, desc="val")
    obj = {"model": args.model, "sigma": config.sigma, "out": str(out), "weights": str(out / "weights.pt"),
           "train": res.to_dict(), "val_top1_clean": val.top1}
    resumed = f" (resumed from epoch {res.resumed_from['epoch']})" if res.resumed_from else ""
    text = (f"{args.model} fine-tuned under Gaussian noise sigma={config.sigma:g}: {res.epochs} epoch(s){resumed}, "
            f"{res.seconds:.0f} s; last epoch train top-1 under noise {res.history[-1]['top1']:.2f}%\n"
            f"clean validation top-1 (1,000 images) {val.top1:.2f}%\nwrote {out / 'weights.pt'}")
    _emit(args, obj, text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .. import data, models
    from ..errors import ConfigError
    from ..evaluate import evaluate
    from ..train.trained import FloatTrainConfig, train_float, trained_model_dir

    _join_torchrun(args)
    defense = None
    if args.defense is not None:
        from ..robust.defenses import DEFENSES, parse_options

        defense = DEFENSES.get(args.defense)
        options = defense.make_config(parse_options(args.defense_option))
    elif args.defense_option:
        raise ConfigError("--defense-option needs --defense")
    config = FloatTrainConfig(epochs=args.epochs if args.epochs is not None else (3 if defense else 30),
                              lr=args.lr if args.lr is not None else (0.01 if defense else 0.1),
                              checkpoint_every=args.checkpoint_every, seed=args.seed, optimizer=args.optimizer,
                              precision=args.precision)
    if ":" in args.model and not args.out:
        raise ConfigError("a model outside the zoo has no cache name: give --out RUN_FOLDER")
    variant = defense.name if defense else None
    if defense is not None and defense.train is None:
        raise ConfigError(f"defense {defense.name!r} has nothing to train (it is a pre-processing step): use it in "
                          "`qpolicy attack --defense` or a robustness config")
    out = Path(args.out) if args.out else (
        trained_model_dir(defense.cache_name, None, args.trained_dir) if defense is not None and defense.cache_name
        else trained_model_dir(args.model, variant, args.trained_dir))
    if defense is None and not args.random_init and ":" not in args.model and not models.spec(args.model).trained_here:
        raise ConfigError(f"{args.model} has pretrained weights; `qpolicy train` without --defense trains from random "
                          "weights: add --random-init to do that anyway")
    if defense is None:
        args.random_init = True
    kd = teacher = None
    if args.teacher is not None:
        from ..train.distill import DistillConfig

        if defense is not None:
            raise ConfigError("--teacher distills a plain training run; it does not combine with --defense")
        kd = DistillConfig(temperature=args.kd_temperature, weight=args.kd_weight)
        models.spec(args.teacher)  # unknown names: "did you mean", before any work
    model = _load_model(args)
    train = data.loader(_source(args), "train", batch_size=args.train_batch_size, limit=args.train_limit,
                        seed=args.seed)
    _preflight(model, train)
    if kd is not None:
        teacher = _teacher(args.teacher, model, train)
    if defense is not None:
        res = defense.train(model, train, options, config=config, out_dir=out, resume=args.resume,
                            device=args.device, model_name=args.model, trained_dir=args.trained_dir)
    elif kd is not None:
        from ..train.distill import kd_term

        res = train_float(model, train, config=config, out_dir=out, resume=args.resume, device=args.device,
                          model_name=args.model, kind="distilled", loss_terms=(kd_term(teacher, kd),),
                          task_loss_weight=1.0 - kd.weight, settings={"teacher": args.teacher, **kd.to_dict()})
    else:
        res = train_float(model, train, config=config, out_dir=out, resume=args.resume, device=args.device,
                          model_name=args.model)
    what = f"{args.model} with defense {defense.name}" if defense else f"{args.model} from random weights" + (
        f", distilled from {args.teacher}" if kd is not None else "")
    obj = {"model": args.model, "defense": variant, "out": str(out), "weights": str(out / "weights.pt"),
           "train": res.to_dict(), "val_top1": None}
    resumed = f" (resumed from epoch {res.resumed_from['epoch']})" if res.resumed_from else ""
    if defense is not None and defense.cache_name:  # trained an auxiliary model, not the classifier
        _emit(args, obj, f"trained the {defense.cache_name} of defense {defense.name}: {res.epochs} epoch(s)"
              f"{resumed}, {res.seconds:.0f} s, last epoch loss {res.history[-1]['loss']:.4f}\nwrote "
              f"{out / 'weights.pt'}")
        return 0
    val = evaluate(model, data.loader(_source(args), "val", batch_size=500), device=args.device,
                   desc="val")
    obj["val_top1"] = val.top1
    resumed = f" (resumed from epoch {res.resumed_from['epoch']})" if res.resumed_from else ""
    text = (f"trained {what}: {res.epochs} epoch(s){resumed}, {res.seconds:.0f} s; last epoch train top-1 "
            f"{res.history[-1]['top1']:.2f}%\nvalidation top-1 ({val.total:,} held-out training images) "
            f"{val.top1:.2f}%\nwrote {out / 'weights.pt'}")
    _emit(args, obj, text)
    return 0


def _teacher(name: str, student: Any, train: Any) -> Any:
    """The zoo model ``name`` with its weights, checked to give the student's output shape on a training batch."""
    import itertools

    import torch

    from .. import models
    from ..errors import ConfigError
    from ..task import task_of

    s = models.spec(name)
    if not (s.weights or s.trained_here):
        raise ConfigError(f"teacher {name} has no weights to distill from: use a zoo model with pretrained or "
                          "trained-here weights (see `qpolicy models`)")
    teacher = models.load(name)
    x = task_of(train).inputs(next(itertools.islice(iter(train), 1)))[:2]
    with torch.no_grad():
        got, want = teacher.eval()(x).shape, student.eval()(x).shape
    if got != want:
        raise ConfigError(f"teacher {name} gives outputs of shape {tuple(got)[1:]}, the student "
                          f"{tuple(want)[1:]}: distill from a model of the same task")
    return teacher


COMMANDS = {"finetune": cmd_finetune, "train-noise": cmd_train_noise, "train": cmd_train}
