"""Shared helpers of the benchmark scripts: machine/version record and JSON + markdown output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

import qpolicy
from qpolicy._io import atomic_write, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def add_base_model(ap) -> None:
    """``--model``: the ResNet-20 a benchmark starts from, the published one (default) or the one trained here
    without the validation images."""
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "resnet20-heldout"],
                    help="the base model: the published ResNet-20 or the one trained here without the validation "
                         "images")


def machine() -> dict[str, Any]:
    from qpolicy.latency.profile import _cpu_name

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "qpolicy": qpolicy.__version__,
    }


def git_commit() -> dict[str, Any]:
    """The commit of the code that produced a result, and whether the work tree differed from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks",
                                     ":!benchmarks/results"],  # the code, not the results other scripts write
                                    cwd=root, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


# taken when the script starts: the code that ran, even if the tree moves on while a long benchmark runs
START_GIT = git_commit()


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


META_KEYS = ("benchmark", "date", "command", "git", "machine")


def write(name: str, payload: dict[str, Any], table: str, notes: str = "", *,
          stored: dict[str, Any] | None = None) -> None:
    """Write results/<name>.json and results/<name>.md with the machine, versions and command. ``stored``: the
    meta of a stored run whose results are rendered again (its date, command, commit and machine are kept, and the
    rendering command and commit are added)."""
    meta = {"benchmark": name, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": command(), "git": START_GIT, "machine": machine()}
    rendered = ""
    if stored is not None:
        meta = {**{k: stored[k] for k in META_KEYS}, "rendered": meta}
        rendered = (f"Rendered from the stored results by `{meta['rendered']['command']}` at git "
                    f"{meta['rendered']['git']['commit']}  \n")
    write_json(RESULTS / f"{name}.json", {**meta, **payload})
    m = meta["machine"]
    md = (f"# {name}\n\n{notes}\n\n{table}\n\n"
          f"Command: `{meta['command']}`  \nDate: {meta['date']}  \n"
          f"Code: git {meta['git']['commit'] or 'unknown'}{' (uncommitted changes)' if meta['git']['dirty'] else ''}"
          "  \n" + rendered +
          f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
          f"CUDA: {m['cuda'] or 'none'}  \nVersions: python {m['python']}, torch {m['torch']}, "
          f"qpolicy {m['qpolicy']}\n")
    with atomic_write(RESULTS / f"{name}.md") as f:
        f.write(md)
    print(md)


def timed_log():
    """A ``log(msg)`` that prints each message with the seconds since this call."""
    import time

    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:.0f} s] {msg}", flush=True)

    return log


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2)
