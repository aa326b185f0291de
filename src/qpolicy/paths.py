"""Where data and weights live: flag > ``QPOLICY_HOME`` > the user cache; and verified downloads."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from ._io import atomic_write
from .errors import WeightsError

__all__ = ["home_dir", "models_dir", "datasets_dir", "trained_dir", "sha256_file", "download"]

log = logging.getLogger(__name__)
ENV_HOME = "QPOLICY_HOME"


def home_dir() -> Path:
    """``$QPOLICY_HOME`` if set and non-empty, else ``$XDG_CACHE_HOME/qpolicy`` or ``~/.cache/qpolicy``."""
    env = os.environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "qpolicy"


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of pretrained weight files: the override (``--weights-dir``), else ``<home>/models``."""
    return Path(override).expanduser() if override else home_dir() / "models"


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of data sets: the override (``--data-dir``), else ``<home>/datasets``."""
    return Path(override).expanduser() if override else home_dir() / "datasets"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, *, sha256_prefix: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically; check the sha256 prefix when given.

    Raises:
        WeightsError: the download failed or the hash does not match (nothing is left at ``dest``).
    """
    log.debug("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_write(dest, "wb") as f:
            h = hashlib.sha256()
            while block := resp.read(1 << 20):
                h.update(block)
                f.write(block)
            if sha256_prefix and not h.hexdigest().startswith(sha256_prefix):
                raise WeightsError(
                    f"downloaded {url} has sha256 {h.hexdigest()[:16]}..., expected prefix {sha256_prefix}"
                )
    except WeightsError:
        raise
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot download {url}: {e}") from None
    return dest


ENV_TRAINED = "QPOLICY_TRAINED"


def trained_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of models qpolicy trains itself (noise-trained bases, ...): the override (``--trained-dir``), else
    ``$QPOLICY_TRAINED``, else ``$XDG_CACHE_HOME/qpolicy/trained`` or ``~/.cache/qpolicy/trained``. Kept apart
    from ``QPOLICY_HOME``, which may be a read-only shared folder of downloaded data and weights."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_TRAINED, "").strip()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "qpolicy" / "trained"
