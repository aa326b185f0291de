"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old file in place."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_json", "atomic_torch_save", "read_json", "parse_json", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 64 * 2**20  # a result file larger than this is refused rather than read
_MAX_INT_DIGITS = 30


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it is removed."""
    from .errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot write {path}: a part of its folder path is a file, not a folder") from None
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the permissions a plain open() would
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` with an atomic replace."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _float(text: str) -> float:
    import math

    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:40]} is out of range")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k[:60]!r} appears twice in one object")
        out[k] = v
    return out


def parse_json(text: str, source: str) -> Any:
    """Strict JSON: no NaN/Infinity, no out-of-range or huge numbers, no duplicate keys, bounded nesting, no lone
    surrogates. Every problem is a PolicyError naming ``source``."""
    from .errors import PolicyError

    try:
        data = json.loads(text, parse_constant=_bad_constant, parse_int=_int, parse_float=_float,
                          object_pairs_hook=_no_duplicates)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates (\ud800) cannot be written back
    except json.JSONDecodeError as e:
        raise PolicyError(f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise PolicyError(f"{source}: JSON nested too deeply") from None
    except UnicodeEncodeError:
        raise PolicyError(f"{source}: holds a string with an invalid character (a lone surrogate)") from None
    except ValueError as e:
        raise PolicyError(f"{source}: {e}") from None
    return data


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file strictly (:func:`parse_json`); a missing, unreadable or oversized file is a PolicyError
    saying which ``what`` it was."""
    from .errors import PolicyError

    p = Path(path)
    try:
        if p.stat().st_size > MAX_JSON_BYTES:
            raise PolicyError(f"{what} {p} is larger than {MAX_JSON_BYTES // 2**20} MiB")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise PolicyError(f"{what} {p} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read {what} {p}: {type(e).__name__}") from None
    return parse_json(text, str(p))
