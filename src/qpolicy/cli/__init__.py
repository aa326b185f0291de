"""The ``qpolicy`` command line: a package of thin command modules, one per family (``models``, ``evaluate``,
``train``, ``robust``, ``search``, ``supernet``), each calling public functions of the library.

Every error a user can cause prints one line ``qpolicy: error: ...`` and exits with status 2 (130 on Ctrl-C);
nothing is left half-written, since every file is written atomically.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from . import evaluate, latency, models, robust, search, supernet, train
from ._common import EXIT_USAGE, _one_line


class _Parser(argparse.ArgumentParser):
    """argparse with qpolicy's error form: one line ``qpolicy: error: ...`` and exit 2 (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        if "expected one argument" in message:  # e.g. --bitops -1,0.2: argparse takes "-1,0.2" for an option
            message += " (a value that starts with '-' goes as OPTION=VALUE, e.g. --bitops=-1,0.2)"
        cmd = self.prog.removeprefix("qpolicy").strip()
        print(f"qpolicy: error: {cmd + ': ' if cmd else ''}{_one_line(message, 400)} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(EXIT_USAGE)


FAMILIES = (models, evaluate, latency, train, robust, search, supernet)
COMMANDS = {name: fn for family in FAMILIES for name, fn in family.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qpolicy", description=(
        "Find, apply and check mixed-precision quantization policies for a PyTorch model on its data: inspect, "
        "analyze, search, evaluate, finetune, export, report; robustness (attack, certify). Every choice is made on "
        "the validation split of --data; test is only reported."))
    parser.add_argument("--version", action="version", version=f"qpolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (building it costs milliseconds; parsing reuses it)."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    from .. import progress
    from ..errors import QPolicyError

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
