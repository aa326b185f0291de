"""`qpolicy` commands: robustness: adversarial attacks, the attack suite and certified radii (randomized smoothing)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    _add_data,
    _add_model,
    _add_policy,
    _add_run_opts,
    _calib_config,
    _check_policy_args,
    _default_data_only,
    _emit,
    _load_model,
    _noise_base,
    _policy,
    _policy_label,
    _preflight_split,
    _source,
)


def add_parsers(sub: Any) -> None:
    """Add this family's subcommands to ``sub``."""
    p = sub.add_parser("attack", help="adversarial attack (ART) on a model or a policy's QNN: robust accuracy and "
                       "distortion per eps (resumable)")
    _add_model(p)
    _add_policy(p)
    p.add_argument("-o", "--out", required=True, help="run folder: attack.json (rewritten after every chunk)")
    p.add_argument("--attack", required=True, help="see `qpolicy list attacks`")
    p.add_argument("--eps", help="comma-separated budgets in pixel units (images in [0, 1]), e.g. 0.002,0.004; "
                   "omit for minimal-perturbation attacks")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the attack's paper parameters (repeatable; see `qpolicy list attacks`)")
    p.add_argument("--images", type=int, default=100, help="images, evenly spaced over the split (default 100)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--transfer", action="store_true", help="craft on the float model, classify with the policy's QNN")
    p.add_argument("--defense", help="a pre-processing defense in front of the classifier (squeeze, pixeldefend)")
    p.add_argument("--chunk", type=int, default=50, help="images per checkpoint")
    p.add_argument("--trained-dir", help="cache of trained models (resnet8, defenses)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    _add_run_opts(p)

    p = sub.add_parser("robustness", help="the attack suite: models x defenses x QNNs x attacks x eps from a JSON "
                       "config, with the findings table (resumable; serial or on Ray)")
    p.add_argument("config", help="robustness config JSON (keys: models, qnns, attacks, params, transfer, defenses, "
                   "defense_attacks, images, clean_images, seed)")
    p.add_argument("-o", "--out", required=True, help="run folder: robustness.json, items.json (resume)")
    p.add_argument("--workers", type=int, help="run items on a local Ray with this many CPUs (default: serial)")
    p.add_argument("--ray-address", help="join an existing Ray cluster: auto or HOST:PORT")
    p.add_argument("--trained-dir", help="cache of trained models (resnet8, defenses)")
    _add_data(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log messages")

    p = sub.add_parser("certify", help="certified L2 robustness (randomized smoothing) of a model or a policy")
    _add_model(p)
    _add_policy(p)
    p.add_argument("-o", "--out", required=True, help="run folder: certify.json (rewritten after every image)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise standard deviation, pixel units (default 0.25)")
    p.add_argument("--n0", type=int, default=100, help="samples selecting the class (default 100)")
    p.add_argument("--n", type=int, default=10000, help="samples bounding its probability (default 10000; Cohen et "
                   "al. 100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability per certificate (default 0.001)")
    p.add_argument("--images", type=int, help="images, evenly spaced over the split (default 100: every 100th "
                   "test image; with --incremental, the reference's)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--record", type=int, default=0, help="keep the base's classes on this many samples per image: "
                   "a reference for --incremental runs")
    p.add_argument("--incremental", metavar="REF", help="certify incrementally (IRS) from this full-precision "
                   "certify run (made with --record >= --n-p); its settings are reused")
    p.add_argument("--n-p", type=int, default=1000, help="IRS: shared-noise samples bounding the disagreement")
    p.add_argument("--no-fallback", action="store_true", help="IRS: abstain where it cannot certify instead of "
                   "certifying from scratch")
    p.add_argument("--noise-weights", help="noise-trained weights (default: the train-noise cache for this model "
                   "and sigma)")
    p.add_argument("--trained-dir", help="cache of trained models (default $QPOLICY_TRAINED or ~/.cache/qpolicy/"
                   "trained)")
    p.add_argument("--allow-plain-base", action="store_true", help="certify a base that was not noise-trained "
                   "(it abstains on most images)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    p.add_argument("--workers", type=int, help="certify the images on a local Ray with this many CPUs (default: "
                   "serial; the same certificates)")
    p.add_argument("--ray-address", help="certify them on an existing Ray cluster: auto or HOST:PORT")
    _add_run_opts(p)


def _eps_list(text: str | None) -> list[float | None]:
    from ..errors import ConfigError

    if text is None:
        return [None]
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"--eps must be comma-separated numbers (pixel units, images in [0, 1]), got "
                              f"{text!r}") from None
    return out


def cmd_attack(args: argparse.Namespace) -> int:
    from ..robust.adversarial import attack_model
    from ..robust.attacks import AttackConfig
    from ..robust.defenses import DEFENSES, parse_options

    _default_data_only(args, "attack")
    _check_policy_args(args)
    eps = _eps_list(args.eps)
    params = parse_options(args.param)
    for e in eps:  # bad attack, eps or parameter: fail before loading anything
        AttackConfig(attack=args.attack, eps=e, params=params, seed=args.seed)
    pre = None
    if args.defense:
        spec = DEFENSES.get(args.defense)
        if spec.kind != "preprocess":
            from ..errors import ConfigError

            raise ConfigError(f"--defense {spec.name} is train-based: attack its trained model with --model and "
                              f"the weights from `qpolicy train --defense {spec.name}` (robustness configs do this)")
    model = _load_model(args)
    _preflight_split(model, args, args.split)
    if args.defense:
        pre = spec.build(model, spec.make_config(), trained_dir=args.trained_dir)
    policy = _policy(args, model)
    cal = None
    if policy is not None:
        from .. import data

        cal = data.calib_loader(_source(args), batches=_calib_config(args).batches_needed, seed=args.seed)
    res = attack_model(model, policy, attack=args.attack, eps=eps, params=params, out_dir=args.out,
                       images=args.images, split=args.split, transfer=args.transfer, preprocess=pre,
                       defense=args.defense, chunk=args.chunk, resume=args.resume, calib=cal,
                       calib_config=_calib_config(args) if policy is not None else None, seed=args.seed,
                       device=args.device, model_name=args.model)
    lines = [f"{args.model} | {_policy_label(policy)} | {args.attack}"
             + (" (transfer from float)" if args.transfer else "") + (f" | defense {args.defense}" if args.defense
                                                                      else "")]
    for key, run in res["runs"].items():
        s = run["summary"]
        med = s["median_distortion"]
        lines.append(f"eps {key}: clean {s['clean_accuracy']:.1f}%, robust {s['robust_accuracy']:.1f}%, success "
                     f"{s['success_rate']:.1f}% ({s['images']} images); median L2 "
                     + (f"{med['l2']:.4f}, Linf {med['linf']:.4f}" if med["l2"] is not None else "-")
                     + f"; {run['seconds']:.0f} s")
    lines.append(f"wrote {Path(args.out) / 'attack.json'}")
    _emit(args, {k: v for k, v in res.items()}, "\n".join(lines))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from ..robust.adversarial import load_robustness_config, run_robustness
    from ..runner import RunStats, check_address, check_workers

    check_workers(args.workers)
    check_address(args.ray_address)
    config = load_robustness_config(args.config)
    stats = RunStats()
    doc = run_robustness(config, out_dir=args.out, workers=args.workers, address=args.ray_address,
                         trained_dir=args.trained_dir, data_dir=args.data_dir, stats=stats)
    lines = [f"{len(doc['results'])} results ({stats.resumed} resumed) in {stats.seconds:.0f} s"]
    for f in doc["findings"]:
        lines.append(f"- {f['finding']}: {f['verdict'].upper()}")
    lines.append(f"wrote {Path(args.out) / 'robustness.json'}")
    _emit(args, {k: v for k, v in doc.items() if k != "results"}, "\n".join(lines))
    return 0




def cmd_certify(args: argparse.Namespace) -> int:
    from ..robust.certify import certify_model
    from ..robust.irs import IRSConfig, check_reference
    from ..robust.smoothing import SmoothConfig, load_certify
    from ..runner import check_address, check_workers

    _default_data_only(args, "certify")
    _check_policy_args(args)
    check_workers(args.workers)  # before any work
    check_address(args.ray_address)
    reference, irs = None, None
    if args.incremental:
        irs = IRSConfig(n_p=args.n_p, alpha=args.alpha, fallback=not args.no_fallback)
        reference = load_certify(args.incremental)
        config = check_reference(reference, irs.n_p)
    else:
        config = SmoothConfig(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch)
    model = _noise_base(args, config.sigma)
    _preflight_split(model, args, reference.get("split", args.split) if reference is not None else args.split)
    policy = _policy(args, model)
    cal = None
    if policy is not None:
        from .. import data

        cal = data.calib_loader(_source(args), batches=_calib_config(args).batches_needed, seed=args.seed)
    images = args.images if args.images is not None else (len(reference["records"]) if reference is not None else 100)
    split = reference.get("split", args.split) if reference is not None else args.split
    res = certify_model(model, policy, config=config, out_dir=args.out, split=split, images=images,
                        resume=args.resume, calib=cal, calib_config=_calib_config(args) if policy else None,
                        record=args.record, reference=reference, irs=irs, device=args.device,
                        model_name=args.model, workers=args.workers, address=args.ray_address)
    s = res["summary"]
    ca = s["certified_accuracy"]
    text = (f"{args.model} | {_policy_label(policy)} | sigma {config.sigma:g}, n0 {config.n0}, n {config.n}, "
            f"alpha {config.alpha:g}" + (f" | incremental from {args.incremental} (n_p {irs.n_p})" if irs else "")
            + f"\n{s['images']} {split} images: ACR {s['acr']:.3f}, smoothed clean accuracy {s['clean_accuracy']:.1f}%,"
            f" abstain {s['abstain']:.1f}%\ncertified accuracy " + ", ".join(f"r={k}: {v:.1f}%" for k, v in ca.items())
            + f"\n{s['samples']:,} noisy samples in {s['seconds']:.0f} s\nwrote {Path(args.out) / 'certify.json'}")
    _emit(args, {k: v for k, v in res.items() if k != "records"}, text)
    return 0


COMMANDS = {"attack": cmd_attack, "robustness": cmd_robustness, "certify": cmd_certify}
