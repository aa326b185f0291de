"""Helpers shared by the command modules: the flags every family takes, and how a command turns them into a
model, data, a policy and a calibration (each a call into the library)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("qpolicy")
EXIT_USAGE = 2


def _add_model(p: argparse.ArgumentParser, *, required: bool = True, help_text: str | None = None) -> None:
    p.add_argument("--model", required=required,
                   help=help_text or "zoo name (see `qpolicy models`) or package.module:factory")
    p.add_argument("--weights-dir", help="folder with pretrained weight files (default: $QPOLICY_HOME/models)")
    p.add_argument("--random-init", action="store_true", help="do not load pretrained weights: random ones, seeded "
                   "by --seed")
    p.add_argument("--weights", metavar="FILE", help="weights to load into the model: a state_dict, a checkpoint "
                   "holding one (state_dict / model_state_dict / model), or .safetensors")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the model factory (repeatable; VALUE is parsed as JSON when it can be)")
    p.add_argument("--input-shape", help="per-sample input shape C,H,W (default: the model's input_shape, else the "
                   "data's)")


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (see `qpolicy list datasets`)")
    g.add_argument("--data", metavar="SPEC", help="cifar10 (default), imagefolder:DIR, npz:PATH, "
                   "package.module:factory or path/to/file.py:factory")
    g.add_argument("--data-dir", help="folder of downloaded data sets (default: $QPOLICY_HOME/datasets)")
    g.add_argument("--image-size", metavar="H[,W]", help="resize image-folder images to this size (default: as "
                   "stored)")
    g.add_argument("--channels", type=int, choices=[1, 3], help="1 (grayscale) or 3 (RGB); default: as stored")
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean of pixels in [0, 1] to subtract (default: "
                   "the data set's; none for image folders and arrays)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std to divide by (default: the data set's)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out for validation "
                   "when the data has no val split (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share of each class held out for the test "
                   "when the data has no test split (default 0.2)")


def _add_search_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", help="see `qpolicy list strategies` (default: validated with --model, ilp for a "
                   "table)")
    p.add_argument("--act-bits", help="candidate activation bits, or one value to hold them fixed")
    p.add_argument("--first-last", default="8", help="fix first and last layer at these bits, or 'search' (default 8)")
    p.add_argument("--tie", default="act", choices=["act", "all", "none"],
                   help="layers reading one tensor share activation bits (act, default), all bits, or none")


def _add_common(p: argparse.ArgumentParser, *, data: bool = True, test: bool = True) -> None:
    _add_model(p)
    _add_data(p)
    if data:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    if data and test:
        p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
        p.add_argument("--limit", type=int, help="evaluate on a seeded random subset of this many test images")
        p.add_argument("--split", default="test", choices=["test", "report"],
                       help="the images reported: the test split (default) or 'report', the half of it a search "
                       "with `--select-on select` did not choose on")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log messages")


def _add_run_opts(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log messages")


def _add_policy(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--uniform", metavar="SPEC", help="uniform policy, e.g. w4a8 (f = float)")
    g.add_argument("--policy", metavar="FILE", help="policy JSON file")
    p.add_argument("--first-last", default="8", help="bits of the first and last layer for --uniform: 2..8, "
                   "'same' or 'float' (default 8)")
    p.add_argument("--calib", default="mse", help="clipping for weights and activations: minmax, percentile, mse, "
                   "or WEIGHT/ACT such as mse/percentile (default mse)")
    p.add_argument("--calib-batches", type=int, default=8, help="batches of 128 train images for activation ranges")
    p.add_argument("--bn-batches", type=int, default=32, help="batches of 128 train images for BatchNorm statistics")
    p.add_argument("--no-bn-reestimate", action="store_true", help="skip re-estimating BatchNorm statistics")
    p.add_argument("--act-quantizer", default="lsq", help="activation quantizer: lsq (a calibrated step, default) or "
                   "batchquant (a range that follows the batch; not exportable)")
    p.add_argument("--save-policy", metavar="FILE", help="also write the policy used to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset and of training")


def _shape(text: str | None) -> tuple[int, ...] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be integers like 3,32,32, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def _model_args(items: list[str]) -> dict[str, Any]:
    from ..errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--model-arg must be KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _source(args: argparse.Namespace):
    """The data set of ``--data`` and its options (built once per command)."""
    cached = getattr(args, "_data_source", None)
    if cached is not None:
        return cached
    from ..datasets import DataOptions, source

    size = _int_list(getattr(args, "image_size", None), "--image-size")
    if size is not None and len(size) == 1:
        size = (size[0], size[0])
    options = DataOptions(data_dir=getattr(args, "data_dir", None), image_size=size,
                          channels=getattr(args, "channels", None),
                          mean=_float_list(getattr(args, "mean", None), "--mean"),
                          std=_float_list(getattr(args, "std", None), "--std"),
                          val_fraction=getattr(args, "val_fraction", 0.1),
                          test_fraction=getattr(args, "test_fraction", 0.2))
    args._data_source = source(getattr(args, "data", None), options)
    return args._data_source


def _float_list(text: str | None, what: str) -> tuple[float, ...] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers such as 0.5 or 0.485,0.456,0.406, got "
                          f"{text!r}") from None


def _load_model(args: argparse.Namespace):
    from .. import models
    from ..errors import ConfigError, UnknownNameError

    shape = _shape(args.input_shape)
    kwargs = _model_args(getattr(args, "model_arg", []))
    weights = getattr(args, "weights", None)
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"--weights {weights}: no such file")
    if ":" not in args.model and args.model not in models.REGISTRY:
        raise UnknownNameError("model", args.model, models.names())
    if ":" not in args.model and kwargs:
        raise ConfigError(f"--model-arg is for a model factory (module:factory); zoo model {args.model!r} takes none")
    import torch

    with torch.random.fork_rng():  # random weights (--random-init, a factory's own): the same for the same --seed
        torch.manual_seed(getattr(args, "seed", 0) or 0)
        if ":" in args.model:
            model = models.from_reference(args.model, **kwargs)
        else:
            model = models.load(args.model, pretrained=not args.random_init and weights is None,
                                weights_dir=args.weights_dir, trained_dir=getattr(args, "trained_dir", None))
    if weights is not None:
        models.load_weights(model, weights)
    elif ":" in args.model and not args.random_init:
        log.warning("model %s: no --weights given, so its weights are the factory's", args.model)
    if shape is not None:
        model.input_shape = shape
    elif getattr(model, "input_shape", None) is None and hasattr(args, "data"):
        src = _source(args)
        if src.input_shape is not None:  # costs are computed at the data's real input size
            model.input_shape = src.input_shape
    return model


def _calib_config(args: argparse.Namespace):
    from ..quant.fake_quant import CalibConfig

    w, _, a = args.calib.partition("/")
    return CalibConfig(weight_method=w, act_method=a or w, batches=args.calib_batches, bn_batches=args.bn_batches,
                       seed=args.seed, bn_reestimate=not args.no_bn_reestimate, act_quantizer=args.act_quantizer)


def _check_policy_args(args: argparse.Namespace) -> None:
    """Fail on a bad spec, first/last rule or calibration choice before any model or data is loaded."""
    from ..errors import ConfigError
    from ..policy import _first_last_bits, parse_uniform_spec

    if getattr(args, "save_policy", None) and args.uniform is None and args.policy is None:
        raise ConfigError("--save-policy needs a policy: give --uniform SPEC or --policy FILE")
    if args.uniform is not None:
        _first_last_bits(args.first_last, parse_uniform_spec(args.uniform))
    _calib_config(args)


def _policy(args: argparse.Namespace, model):
    from ..policy import Policy, uniform_policy

    if args.policy is not None:
        policy = Policy.load(args.policy)
        policy.validate(model)
        return policy
    if args.uniform is not None:
        return uniform_policy(model, args.uniform, first_last=args.first_last, model_name=args.model)
    return None


def _loaders(args: argparse.Namespace, *, calib: bool):
    from .. import data

    test = data.loader(_source(args), getattr(args, "split", "test"), batch_size=args.batch_size, limit=args.limit)
    cal = None
    if calib:
        cal = data.calib_loader(_source(args), batches=_calib_config(args).batches_needed, seed=args.seed)
    return test, cal


def _preflight(model, loader) -> None:
    """One batch through the model before any work: shapes, output and label range (qpolicy.preflight). A model
    that declares no input shape takes the data's (what its costs are computed at)."""
    import torch

    from ..preflight import preflight
    from ..task import task_of

    if getattr(model, "input_shape", None) is None:
        try:
            x = task_of(loader).inputs(next(iter(loader)))
        except Exception:  # noqa: BLE001 - preflight reports what is wrong with the data, in one line
            x = None
        if torch.is_tensor(x) and x.dim() >= 2:
            model.input_shape = tuple(x.shape[1:])
    preflight(model, loader)


def _preflight_split(model, args: argparse.Namespace, split: str) -> None:
    from .. import data

    _preflight(model, data.loader(_source(args), split, batch_size=2, limit=2))


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if getattr(args, "rank_silent", False):  # a torchrun process other than rank 0
        return
    print(json.dumps(obj, indent=2) if args.json else text)


def _policy_label(policy) -> str:
    from ..pipeline import policy_label

    return policy_label(policy)


def _int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    from ..errors import shorten

    try:
        if len(text) > 1000:
            raise ValueError
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{what} must be integers like 2,4,8, got {shorten(text)}") from None


def _one_line(message: str, limit: int = 500) -> str:
    """An error message as one line of at most ``limit`` characters (a message may echo a huge input)."""
    message = " ".join(message.split())
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message)} characters)"


def _noise_base(args: argparse.Namespace, sigma: float):
    """The model with its noise-trained weights: --noise-weights, else the train-noise cache; a plain base only
    with --allow-plain-base."""
    from ..errors import ConfigError
    from ..robust.noise import WEIGHTS_NAME, load_noise_model, noise_model_dir

    model = _load_model(args)
    if args.noise_weights:
        return load_noise_model(model, args.noise_weights)
    cached = noise_model_dir(args.model, sigma, args.trained_dir) / WEIGHTS_NAME if ":" not in args.model else None
    if cached is not None and cached.is_file():
        return load_noise_model(model, cached)
    if not args.allow_plain_base:
        raise ConfigError(f"no noise-trained {args.model} for sigma={sigma:g}"
                          + (f" in {cached.parent}" if cached is not None else "")
                          + f": randomized smoothing needs a base trained under that noise. Make it with `qpolicy "
                          f"train-noise --model {args.model} --sigma {sigma:g}`, give --noise-weights FILE, or "
                          "--allow-plain-base to certify the plain model anyway")
    return model


def _join_torchrun(args: argparse.Namespace) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group: the training engine then runs data-parallel
    (qpolicy.train.distributed); processes other than rank 0 print nothing."""
    from .. import progress
    from ..train.distributed import init_from_env, is_main

    if init_from_env(args.device) and not is_main():
        args.quiet = args.rank_silent = True
        progress.set_enabled(False)
        logging.getLogger().setLevel(logging.WARNING)


def _first_last_search(text: str) -> int | None:
    """``--first-last`` of the searches: one bit-width, or 'search' (None: searched like the others)."""
    from ..bits import check_bits
    from ..errors import ConfigError, shorten

    if text == "search":
        return None
    bits = _int_list(text, "--first-last")
    if bits is None or len(bits) != 1:
        raise ConfigError(f"--first-last must be one bit-width or 'search', got {shorten(text)}")
    return check_bits(bits[0], "--first-last")  # BitWidthError: a ConfigError


def _default_data_only(args: argparse.Namespace, what: str) -> None:
    """Refuse another --data for commands whose pixel-space images and noise are still the default data set's."""
    from ..datasets import default_spec
    from ..errors import ConfigError

    spec = getattr(args, "data", None)
    if spec is not None and spec != default_spec():
        raise ConfigError(f"{what} runs on the default data set ({default_spec()}) only so far: its pixel-space "
                          f"images, noise and normalization are that data set's; --data {spec} is not supported")
