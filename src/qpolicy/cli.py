"""The ``qpolicy`` command line: thin subcommands over the public API.

Every error a user can cause prints one line ``qpolicy: error: ...`` and exits with status 2 (130 on Ctrl-C);
nothing is left half-written, since every file is written atomically.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

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


def _add_common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    _add_model(p)
    _add_data(p)
    if data:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
        p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
        p.add_argument("--limit", type=int, help="evaluate on a seeded random subset of this many test images")
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


class _Parser(argparse.ArgumentParser):
    """argparse with qpolicy's error form: one line ``qpolicy: error: ...`` and exit 2 (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        if "expected one argument" in message:  # e.g. --bitops -1,0.2: argparse takes "-1,0.2" for an option
            message += " (a value that starts with '-' goes as OPTION=VALUE, e.g. --bitops=-1,0.2)"
        cmd = self.prog.removeprefix("qpolicy").strip()
        print(f"qpolicy: error: {cmd + ': ' if cmd else ''}{_one_line(message, 400)} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qpolicy", description="Mixed-precision quantization policies for PyTorch.")
    parser.add_argument("--version", action="version", version=f"qpolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("inspect", help="table of quantizable layers: name, kind, params, MACs, shapes, kurtosis")
    _add_common(p, data=False)
    p.add_argument("-o", "--out", help="also write the table as JSON (`qpolicy report` plots the weight kurtosis)")

    p = sub.add_parser("evaluate", help="top-1 and costs of the float model or a policy (PTQ)")
    _add_common(p)
    _add_policy(p)
    p.add_argument("-o", "--out", help="also write the result as JSON (what `qpolicy report` reads)")

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
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between mid-epoch checkpoints (0: off)")
    p.add_argument("--trained-dir", help="cache of trained models (default $QPOLICY_TRAINED or ~/.cache/qpolicy/"
                   "trained); the run goes to TRAINED_DIR/MODEL-noiseSIGMA")
    p.add_argument("--out", help="run folder instead of the cache (checkpoint.pt, weights.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    _add_run_opts(p)

    p = sub.add_parser("train", help="train a float model: a zoo model without public weights (resnet8), or a "
                       "train-based adversarial defense of a model (checkpointed, resumable, cached)")
    _add_model(p)
    p.add_argument("--defense", help="a train-based defense (see `qpolicy list defenses`); default: plain training "
                   "from random weights")
    p.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense setting, e.g. eps=0.008 (repeatable; see `qpolicy list defenses`)")
    p.add_argument("--epochs", type=int, help="default 30 from scratch, 3 for a defense (fine-tuning)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 from scratch, 0.01 for a defense)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="SGD with Nesterov momentum "
                   "(default) or AdamW")
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between mid-epoch checkpoints (0: off)")
    p.add_argument("--trained-dir", help="cache of trained models (default $QPOLICY_TRAINED or ~/.cache/qpolicy/"
                   "trained); the run goes to TRAINED_DIR/MODEL[-DEFENSE]")
    p.add_argument("--out", help="run folder instead of the cache (checkpoint.pt, weights.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    _add_run_opts(p)

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

    p = sub.add_parser("analyze", help="per-layer sensitivity table of a model under a metric")
    _add_common(p)
    _add_analyze(p)
    p.add_argument("-o", "--out", required=True, help="sensitivity table JSON to write")

    p = sub.add_parser("search", help="the least-damage policy within a budget")
    p.add_argument("table", nargs="?", help="sensitivity table JSON (or give --model and --metric)")
    _add_model(p, required=False, help_text="analyze this model first (zoo name or package.module:factory)")
    _add_data(p)
    p.add_argument("--device", default="auto")
    _add_analyze(p)
    p.add_argument("--budget", action="append", required=True,
                   help="size=0.375 | size=70KB | bitops=0.25 | bitops=1.2G | wbits=4 | abits=8 (repeatable)")
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
                   help="a policy with 8-bit inputs (weights up to 8 bits) as integer operators (QLinearConv, ...) "
                        "that onnxruntime runs with int8 kernels; requantizes where the simulation keeps float, so "
                        "--verify allows 0.5 points")
    p.add_argument("--verify", action="store_true", help="run it in onnxruntime on the test set beside PyTorch")

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

    p = sub.add_parser("list", help="registered metrics, strategies, models, datasets, attacks or defenses")
    p.add_argument("what", choices=["metrics", "strategies", "models", "datasets", "attacks", "defenses"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return parser


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
    p.add_argument("--calib-batches", type=int, default=1, help="batches of 128 train images the metric uses")
    p.add_argument("--label", type=int, default=0, help="te: class of the same-label minibatch (default 0)")
    p.add_argument("--metric-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a metric setting, repeatable (te: damage=noise, normalize=support, batch_size=128, ...)")
    p.add_argument("--seed", type=int, default=0)


# ---- helpers ---------------------------------------------------------------------------------------------------
def _metric_options(factory, metric: str, items: list[str]) -> dict:
    """``--metric-opt KEY=VALUE`` items -> keyword arguments of the metric (ints, floats, true/false, text)."""
    import dataclasses

    from .errors import ConfigError, shorten, suggest

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


def _shape(text: str | None) -> tuple[int, ...] | None:
    from .errors import ConfigError

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
    from .errors import ConfigError

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
    from .datasets import DataOptions, source

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
    from .errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers such as 0.5 or 0.485,0.456,0.406, got "
                          f"{text!r}") from None


def _load_model(args: argparse.Namespace):
    from . import models
    from .errors import ConfigError, UnknownNameError

    shape = _shape(args.input_shape)
    kwargs = _model_args(getattr(args, "model_arg", []))
    weights = getattr(args, "weights", None)
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"--weights {weights}: no such file")
    if ":" in args.model:
        model = models.from_reference(args.model, **kwargs)
        if weights is not None:
            models.load_weights(model, weights)
        elif not args.random_init:
            log.warning("model %s: no --weights given, so its weights are the factory's", args.model)
    elif args.model in models.REGISTRY:
        import torch

        if kwargs:
            raise ConfigError(f"--model-arg is for a model factory (module:factory); zoo model {args.model!r} takes "
                              "none")
        with torch.random.fork_rng():  # --random-init: the same weights for the same --seed, run after run
            torch.manual_seed(getattr(args, "seed", 0) or 0)
            model = models.load(args.model, pretrained=not args.random_init and weights is None,
                                weights_dir=args.weights_dir, trained_dir=getattr(args, "trained_dir", None))
        if weights is not None:
            models.load_weights(model, weights)
    else:
        raise UnknownNameError("model", args.model, models.names())
    if shape is not None:
        model.input_shape = shape
    elif getattr(model, "input_shape", None) is None and hasattr(args, "data"):
        src = _source(args)
        if src.input_shape is not None:  # costs are computed at the data's real input size
            model.input_shape = src.input_shape
    return model


def _calib_config(args: argparse.Namespace):
    from .quant.fake_quant import CalibConfig

    w, _, a = args.calib.partition("/")
    return CalibConfig(weight_method=w, act_method=a or w, batches=args.calib_batches, bn_batches=args.bn_batches,
                       seed=args.seed, bn_reestimate=not args.no_bn_reestimate, act_quantizer=args.act_quantizer)


def _check_policy_args(args: argparse.Namespace) -> None:
    """Fail on a bad spec, first/last rule or calibration choice before any model or data is loaded."""
    from .errors import ConfigError
    from .policy import _first_last_bits, parse_uniform_spec

    if getattr(args, "save_policy", None) and args.uniform is None and args.policy is None:
        raise ConfigError("--save-policy needs a policy: give --uniform SPEC or --policy FILE")
    if args.uniform is not None:
        _first_last_bits(args.first_last, parse_uniform_spec(args.uniform))
    _calib_config(args)


def _policy(args: argparse.Namespace, model):
    from .policy import Policy, uniform_policy

    if args.policy is not None:
        policy = Policy.load(args.policy)
        policy.validate(model)
        return policy
    if args.uniform is not None:
        return uniform_policy(model, args.uniform, first_last=args.first_last, model_name=args.model)
    return None


def _loaders(args: argparse.Namespace, *, calib: bool):
    from . import data

    test = data.loader(_source(args), "test", batch_size=args.batch_size, limit=args.limit)
    cal = None
    if calib:
        cal = data.calib_loader(_source(args), batches=_calib_config(args).batches_needed, seed=args.seed)
    return test, cal


def _preflight(model, loader) -> None:
    """One batch through the model before any work: shapes, output and label range (qpolicy.preflight). A model
    that declares no input shape takes the data's (what its costs are computed at)."""
    import torch

    from .preflight import preflight
    from .task import task_of

    if getattr(model, "input_shape", None) is None:
        try:
            x = task_of(loader).inputs(next(iter(loader)))
        except Exception:  # noqa: BLE001 - preflight reports what is wrong with the data, in one line
            x = None
        if torch.is_tensor(x) and x.dim() >= 2:
            model.input_shape = tuple(x.shape[1:])
    preflight(model, loader)


def _preflight_split(model, args: argparse.Namespace, split: str) -> None:
    from . import data

    _preflight(model, data.loader(_source(args), split, batch_size=2, limit=2))


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if getattr(args, "rank_silent", False):  # a torchrun process other than rank 0
        return
    print(json.dumps(obj, indent=2) if args.json else text)


def _policy_label(policy) -> str:
    from .pipeline import policy_label

    return policy_label(policy)


# ---- commands ----------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from . import models

    rows = [models.spec(n) for n in models.names()]
    obj = {"models": [{"name": s.name, "dataset": s.dataset, "input_shape": list(s.input_shape),
                       "pretrained": bool(s.weights), "weights": s.weights, "url": s.url,
                       "reference_top1": s.reference_top1, "description": s.description} for s in rows]}
    lines = [f"{'name':<18} {'dataset':<9} {'input':<12} {'weights':<24} description"]
    for s in rows:
        lines.append(f"{s.name:<18} {s.dataset:<9} {'x'.join(map(str, s.input_shape)):<12} "
                     f"{s.weights or '-':<24} {s.description}")
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .layers import quantizable_layers
    from .train.kurtosis import layer_kurtosis

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
        from ._io import write_json

        write_json(args.out, {"format": "qpolicy.layers", "version": 1, **obj})
    _emit(args, obj, "\n".join(lines))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_policy

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
    obj = res.record(model=args.model, data=_source(args).to_dict())
    score = (f"top-1 {a.top1:.2f}% ({a.correct}/{a.total})" if a.top1 is not None
             else f"{a.metric_name} {a.metric:.6g} ({a.total} samples)")
    text = (f"{args.model} | {_policy_label(policy)}"
            + (f" | calib {args.calib}, {args.calib_batches} batches, {res.calib_seconds:.1f} s" if policy else "")
            + f"\n{score}, loss {a.loss:.4f}, {a.seconds:.1f} s"
            + f"\n{res.cost.summary()}")
    if args.out:
        from ._io import write_json

        write_json(args.out, obj)
    _emit(args, {k: v for k, v in obj.items() if k not in ("format", "version")}, text)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from . import data
    from .pipeline import finetune_policy
    from .qat.finetune import FinetuneConfig

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


def _join_torchrun(args: argparse.Namespace) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group: the training engine then runs data-parallel
    (qpolicy.train.distributed); processes other than rank 0 print nothing."""
    from . import progress
    from .train.distributed import init_from_env, is_main

    if init_from_env(args.device) and not is_main():
        args.quiet = args.rank_silent = True
        progress.set_enabled(False)
        logging.getLogger().setLevel(logging.WARNING)


def cmd_train_noise(args: argparse.Namespace) -> int:
    from . import data
    from .errors import ConfigError
    from .evaluate import evaluate
    from .robust.noise import NoiseTrainConfig, noise_model_dir, train_noise

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
    from . import data, models
    from .errors import ConfigError
    from .evaluate import evaluate
    from .train.trained import FloatTrainConfig, train_float, trained_model_dir

    _join_torchrun(args)
    defense = None
    if args.defense is not None:
        from .robust.defenses import DEFENSES, parse_options

        defense = DEFENSES.get(args.defense)
        options = defense.make_config(parse_options(args.defense_option))
    elif args.defense_option:
        raise ConfigError("--defense-option needs --defense")
    config = FloatTrainConfig(epochs=args.epochs if args.epochs is not None else (3 if defense else 30),
                              lr=args.lr if args.lr is not None else (0.01 if defense else 0.1),
                              checkpoint_every=args.checkpoint_every, seed=args.seed, optimizer=args.optimizer)
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
    model = _load_model(args)
    train = data.loader(_source(args), "train", batch_size=args.train_batch_size, limit=args.train_limit,
                        seed=args.seed)
    _preflight(model, train)
    if defense is not None:
        res = defense.train(model, train, options, config=config, out_dir=out, resume=args.resume,
                            device=args.device, model_name=args.model, trained_dir=args.trained_dir)
    else:
        res = train_float(model, train, config=config, out_dir=out, resume=args.resume, device=args.device,
                          model_name=args.model)
    what = f"{args.model} with defense {defense.name}" if defense else f"{args.model} from random weights"
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


def _eps_list(text: str | None) -> list[float | None]:
    from .errors import ConfigError

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
    from .robust.adversarial import attack_model
    from .robust.attacks import AttackConfig
    from .robust.defenses import DEFENSES, parse_options

    _check_policy_args(args)
    eps = _eps_list(args.eps)
    params = parse_options(args.param)
    for e in eps:  # bad attack, eps or parameter: fail before loading anything
        AttackConfig(attack=args.attack, eps=e, params=params, seed=args.seed)
    pre = None
    if args.defense:
        spec = DEFENSES.get(args.defense)
        if spec.kind != "preprocess":
            from .errors import ConfigError

            raise ConfigError(f"--defense {spec.name} is train-based: attack its trained model with --model and "
                              f"the weights from `qpolicy train --defense {spec.name}` (robustness configs do this)")
    model = _load_model(args)
    _preflight_split(model, args, args.split)
    if args.defense:
        pre = spec.build(model, spec.make_config(), trained_dir=args.trained_dir)
    policy = _policy(args, model)
    cal = None
    if policy is not None:
        from . import data

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
    from .robust.adversarial import load_robustness_config, run_robustness
    from .runner import RunStats, check_address, check_workers

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


def _noise_base(args: argparse.Namespace, sigma: float):
    """The model with its noise-trained weights: --noise-weights, else the train-noise cache; a plain base only
    with --allow-plain-base."""
    from .errors import ConfigError
    from .robust.noise import WEIGHTS_NAME, load_noise_model, noise_model_dir

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


def cmd_certify(args: argparse.Namespace) -> int:
    from .robust.certify import certify_model
    from .robust.irs import IRSConfig, check_reference
    from .robust.smoothing import SmoothConfig, load_certify
    from .runner import check_address, check_workers

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
        from . import data

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


def _int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    from .errors import ConfigError

    if text is None:
        return None
    from .errors import shorten

    try:
        if len(text) > 1000:
            raise ValueError
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{what} must be integers like 2,4,8, got {shorten(text)}") from None


def _first_last_search(text: str) -> int | None:
    """``--first-last`` of the searches: one bit-width, or 'search' (None: searched like the others)."""
    from .bits import check_bits
    from .errors import ConfigError, shorten

    if text == "search":
        return None
    bits = _int_list(text, "--first-last")
    if bits is None or len(bits) != 1:
        raise ConfigError(f"--first-last must be one bit-width or 'search', got {shorten(text)}")
    return check_bits(bits[0], "--first-last")  # BitWidthError: a ConfigError


def _search_choices(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy, activation-bits and first/last options shared by search and pareto, checked."""
    from .search import STRATEGIES

    args.strategy = args.strategy or "ilp"
    STRATEGIES.get(args.strategy)  # unknown names: "did you mean"
    acts = _int_list(args.act_bits, "--act-bits")
    first_last = _first_last_search(args.first_last)
    return {"strategy": args.strategy, "act_bits": acts[0] if acts is not None and len(acts) == 1 else acts,
            "first_last": first_last, "tie": args.tie}


def _analyze(args: argparse.Namespace):
    from . import data
    from .errors import ConfigError
    from .sensitivity import METRICS, analyze

    factory = METRICS.get(args.metric)  # unknown names fail before anything is loaded
    base = {"label": args.label} if args.metric == "te" else {"batches": args.calib_batches}
    opts = {**base, **_metric_options(factory, args.metric, args.metric_opt)}
    try:
        metric = factory(**opts)
    except TypeError as e:  # a setting of the wrong type
        raise ConfigError(f"bad --metric-opt for metric {args.metric!r}: {e}") from None
    bits = _int_list(args.bits, "--bits")
    model = _load_model(args)
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
    from . import data
    from .errors import ConfigError
    from .supernet import DifferentiableConfig, search_differentiable

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
    from .costs import policy_cost

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
    from . import data
    from .errors import ConfigError
    from .quant.fake_quant import CalibConfig
    from .select import SelectConfig, search_validated

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
    config = SelectConfig(metrics=metrics, bits=_int_list(args.bits, "--bits"), metric_batches=args.calib_batches,
                          seed=args.seed, **given)
    model = _load_model(args)
    val = data.loader(_source(args), "val", batch_size=250)
    calib = data.calib_loader(_source(args), batches=max(config.bn_batches, config.act_batches), seed=args.seed)
    train = data.loader(_source(args), "train", batch_size=128, shuffle=True, augment=False, seed=args.seed)
    _preflight(model, val)
    res = search_validated(model, budget, calib=calib, val=val, metric_data=train, calib_config=calib_config,
                           config=config, act_bits=choices["act_bits"],
                           weight_bits=_int_list(args.weight_bits, "--weight-bits"),
                           first_last=choices["first_last"], tie=args.tie, device=args.device,
                           model_name=args.model if ":" not in args.model else None, workers=args.workers,
                           address=args.ray_address, tables_dir=args.tables_dir)
    if args.out:
        res.policy.save(args.out)
    prov, sel = res.policy.provenance, res.extra["selection"]
    uni = sel["best_uniform"]
    text = (f"validated search under {budget}: {prov['chosen']} chosen from {sel['evaluations']} evaluations in "
            f"{res.seconds:.0f} s (metrics {sel['metric_seconds']:.0f} s)\n"
            f"validation ({sel['images']} images): loss {prov['val_loss']:.4f}, top-1 {prov['val_top1']:.2f}%"
            + (f"; best uniform ({uni['source']}): loss {uni['val_loss']:.4f}, top-1 {uni['val_top1']:.2f}%"
               if uni else "")
            + f"\n{res.cost.summary()}\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + (f"\nwrote {args.out}" if args.out else ""))
    _emit(args, res.to_dict(), text)
    return 0


def cmd_search_arq(args: argparse.Namespace, budget) -> int:
    from . import data
    from .errors import ConfigError
    from .rl.arq import ARQConfig, search_arq
    from .rl.ddpg import DDPGConfig

    if args.table or not args.model or not args.out:
        raise ConfigError("--strategy arq measures policies on the model: give --model and -o RUN_FOLDER (no "
                          "sensitivity table)")
    choices = _search_choices(args)
    config = ARQConfig(episodes=args.episodes, val_images=args.arq_val_images, reference_n=args.reference_n,
                       n_p=args.n_p, reward_weight=args.reward_weight, test_images=args.test_images,
                       test_n=args.test_n, ddpg=DDPGConfig(warmup=args.warmup), seed=args.seed)
    from .robust.noise import check_sigma

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
            + f"\n{res.cost.summary()}\n{' '.join(b.short() for b in res.policy.layers.values())}"
            + f"\nwrote {Path(args.out) / 'policy.json'}, {Path(args.out) / 'search.json'}")
    _emit(args, {k: v for k, v in res.to_dict().items() if k != "history"}, text)
    return 0


def cmd_search_qfa(args: argparse.Namespace, budget) -> int:
    from . import data
    from .errors import ConfigError
    from .supernet.qfa_search import QFASearchConfig, search_qfa

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


def cmd_search(args: argparse.Namespace) -> int:
    from .budget import Budget
    from .errors import ConfigError
    from .runner import check_address, check_workers
    from .search import STRATEGIES, search
    from .search.base import ModelStrategy
    from .sensitivity import SensitivityTable

    budget = Budget.parse(args.budget)
    args.strategy = args.strategy or ("validated" if args.model and not args.table else "ilp")
    entry = STRATEGIES.get(args.strategy)  # unknown names: "did you mean"
    check_workers(args.workers)  # before any work: bad counts and unreachable clusters fail at once
    check_address(args.ray_address)
    if isinstance(entry, ModelStrategy):  # model-in-the-loop: dispatch on the kind of run, not on the name
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
        table = _analyze(args)
    else:
        raise ConfigError("give a sensitivity table file, or --model (and --metric) to analyze one")
    res = search(table, budget, seed=args.seed, weight_bits=_int_list(args.weight_bits, "--weight-bits"), **choices)
    if args.out:
        res.policy.save(args.out)
    bits = " ".join(f"{b.short()}" for b in res.policy.layers.values())
    text = (f"{table.metric} + {res.strategy} under {budget}: predicted damage {res.predicted_damage:.4g}, "
            f"solved in {res.seconds * 1000:.1f} ms\n{res.cost.summary()}\n{bits}"
            + (f"\nwrote {args.out}" if args.out else ""))
    _emit(args, res.to_dict(), text)
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from . import data
    from .budget import Budget
    from .errors import ConfigError
    from .pipeline import evaluate_front
    from .quant.fake_quant import CalibConfig
    from .search import pareto
    from .search.pareto import parse_sweep
    from .sensitivity import SensitivityTable

    key = next(k for k in ("size", "bitops", "wbits", "abits") if getattr(args, k) is not None)
    values = parse_sweep(getattr(args, key))
    fixed = Budget.parse(args.budget) if args.budget else None
    choices = _search_choices(args)
    table = SensitivityTable.load(args.table)
    from .runner import RunStats, check_address, check_workers

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


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report

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
    from .errors import ConfigError
    from .layers import quantizable_layers
    from .quant import apply_policy

    try:
        from .export import export_int8, export_onnx, verify_onnx
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"export needs onnx and onnxruntime (pip install 'qpolicy[onnx]'): {e}") from None
    _check_policy_args(args)
    if args.int8_kernels and args.int4:  # before any model work
        raise ConfigError("--int8-kernels and --int4 exclude each other: integer kernels here are 8-bit")
    from .export.onnx import check_opset

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
        what = ", ".join(f"{info['ops'].get(k, 0)} {k}" for k in ("QLinearConv", "QGemm", "QLinearAdd"))
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
            from .export.int8 import INT8_TOP1_TOLERANCE

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


def cmd_supernet(args: argparse.Namespace) -> int:
    from . import data
    from .supernet.shared import QFAConfig, load_qfa, subnet_model, train_qfa

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
        from ._io import write_json

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
    from .evaluate import evaluate
    from .policy import Policy, uniform_policy

    if args.uniform is not None:
        from .policy import _first_last_bits, parse_uniform_spec

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
    from .costs import policy_cost
    from .layers import quantizable_layers

    cost = policy_cost(quantizable_layers(model), policy)
    obj = {"format": "qpolicy.evaluation", "version": 1, "model": args.model, "supernet": str(args.run),
           "split": args.split, "top1": res.top1, "loss": res.loss, "correct": res.correct, "total": res.total,
           "cost": cost.to_dict(per_layer=False),
           "policy": policy.with_provenance(supernet=str(args.run)).to_dict()}
    if args.out:
        from ._io import write_json

        write_json(args.out, obj)
    _emit(args, obj, f"{args.model} | {_policy_label(policy)} on the QFA supernet {args.run} (no retraining)\n"
                     f"{args.split} top-1 {res.top1:.2f}% ({res.correct}/{res.total})\n{cost.summary()}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import models
    from .search import STRATEGIES
    from .sensitivity import METRICS

    if args.what == "datasets":
        from . import datasets

        rows = {n: datasets.REGISTRY.get(n) for n in datasets.names()}
        obj = {"datasets": {n: {"summary": p.summary, "default": p.default} for n, p in rows.items()},
               "also": "package.module:FACTORY or path/to/file.py:FACTORY (a function returning the splits)"}
        lines = [f"{n:12s} {p.summary}{' (default)' if p.default else ''}" for n, p in rows.items()]
        lines.append(f"{'MODULE:FN':12s} {obj['also']}")
        _emit(args, obj, "\n".join(lines))
        return 0
    if args.what in ("attacks", "defenses"):
        from .robust.attacks import ATTACKS
        from .robust.defenses import DEFENSES

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


COMMANDS = {"models": cmd_models, "inspect": cmd_inspect, "evaluate": cmd_evaluate, "finetune": cmd_finetune,
            "certify": cmd_certify, "supernet": cmd_supernet,
            "train-noise": cmd_train_noise, "train": cmd_train, "attack": cmd_attack,
            "robustness": cmd_robustness,
            "analyze": cmd_analyze, "search": cmd_search, "pareto": cmd_pareto, "export": cmd_export,
            "report": cmd_report,
            "list": cmd_list}


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (building it costs milliseconds; parsing reuses it)."""
    return build_parser()


def _one_line(message: str, limit: int = 500) -> str:
    """An error message as one line of at most ``limit`` characters (a message may echo a huge input)."""
    message = " ".join(message.split())
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message)} characters)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    from . import progress
    from .errors import QPolicyError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, printed) or --help / --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", force=True)
    if getattr(args, "quiet", False):
        progress.set_enabled(False)
    try:
        return COMMANDS[args.command](args)
    except QPolicyError as e:
        print(f"qpolicy: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qpolicy: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    finally:
        progress.set_enabled(None)


if __name__ == "__main__":
    sys.exit(main())
