"""Weights qpolicy trained itself and ships as package data (issue 22's held-out ResNets).

A shipped model is two files in ``qpolicy/models/shipped/``: the weights ``<model>-<sha256 prefix>.pt`` (a
``qpolicy.trained_model`` file written by ``qpolicy train``: state dict, recipe, config, per-epoch history) and the
manifest ``<model>.json`` (``qpolicy.shipped-weights`` v1): the file name and full sha256, the float top-1 measured on
the test and validation splits, the command that trained the weights and the commit it ran at, and the machine and
versions of the measurement. Both are written by :func:`ship` (``benchmarks/heldout_models.py --ship``), never by
hand. A zoo model with a manifest loads these weights; one without loads its weights from the trained-model cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .._io import atomic_write, read_json, write_json
from ..errors import PolicyError, WeightsError
from ..paths import sha256_file

__all__ = ["SHIPPED_DIR", "FORMAT", "manifest", "weights_path", "ship"]

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
FORMAT = "qpolicy.shipped-weights"
_REQUIRED = {"model": str, "weights": str, "sha256": str, "test_top1": float, "val_top1": float, "command": str,
             "commit": str}


def manifest(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The manifest of zoo model ``name``'s shipped weights, or None when it ships none.

    Raises:
        WeightsError: the manifest is unreadable, of another format, or lacks a field.
    """
    path = Path(folder or SHIPPED_DIR) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        obj = read_json(path, "shipped-weights manifest")
    except PolicyError as e:
        raise WeightsError(str(e)) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
        raise WeightsError(f"{path} is not a {FORMAT} v1 manifest")
    bad = [k for k, t in _REQUIRED.items() if not isinstance(obj.get(k), (int, float) if t is float else t)]
    if bad or obj["model"] != name:
        raise WeightsError(f"shipped-weights manifest {path} is damaged: "
                           f"{'missing or wrong ' + ', '.join(bad) if bad else 'it names model ' + repr(obj['model'])}")
    return obj


def weights_path(name: str, folder: str | os.PathLike | None = None) -> Path | None:
    """The verified shipped weight file of ``name``, or None when it ships none.

    Raises:
        WeightsError: the manifest is damaged, or the file is missing or does not match its sha256.
    """
    m = manifest(name, folder)
    if m is None:
        return None
    path = Path(folder or SHIPPED_DIR) / m["weights"]
    if path.name != m["weights"] or not path.is_file():
        raise WeightsError(f"shipped weights {m['weights']} of {name} are missing from {path.parent}: reinstall "
                           "qpolicy")
    digest = sha256_file(path)
    if digest != m["sha256"]:
        raise WeightsError(f"shipped weights {path} are corrupt: sha256 {digest[:16]}... is not the manifest's "
                           f"{m['sha256'][:16]}...: reinstall qpolicy")
    return path


def ship(name: str, weights: str | os.PathLike, *, test_top1: float, val_top1: float, command: str, commit: str,
         provenance: dict[str, Any] | None = None, folder: str | os.PathLike | None = None) -> Path:
    """Copy a ``qpolicy train`` weight file into the package as ``name``'s shipped weights and write its manifest
    (both atomically; the previous weights of ``name`` are removed). Returns the manifest's path."""
    out = Path(folder or SHIPPED_DIR)
    out.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(weights)
    target = out / f"{name}-{digest[:8]}.pt"
    with atomic_write(target, "wb", encoding=None) as f, open(weights, "rb") as src:
        shutil.copyfileobj(src, f)
    old = manifest(name, out)
    path = out / f"{name}.json"
    write_json(path, {"format": FORMAT, "version": 1, "model": name, "weights": target.name, "sha256": digest,
                      "test_top1": float(test_top1), "val_top1": float(val_top1), "command": command,
                      "commit": commit, **(provenance or {})})
    if old is not None and old["weights"] != target.name:
        (out / old["weights"]).unlink(missing_ok=True)
    return path
