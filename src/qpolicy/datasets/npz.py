"""Images in numpy arrays: ``--data npz:PATH``.

``PATH`` is a file with arrays ``images`` uint8 (N, H, W) or (N, H, W, C) and ``labels`` (N,) integers, or with
``train_images`` / ``train_labels`` (and optionally ``val_*``, ``test_*``); or a folder with ``train.npz`` (and
optionally ``val.npz``, ``test.npz``) holding ``images`` and ``labels``. An optional ``classes`` array names the
classes. Splits that are not given are a seeded, stratified share of the training images (``--val-fraction``,
``--test-fraction``). Pixels are scaled to [0, 1] and not normalized unless ``--mean`` / ``--std`` say so; training
batches are augmented by a random crop of H/8-pixel zero padding (no flip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import cached, read_npz
from ..errors import ConfigError, DataError, DataNotFoundError, first_line
from . import SPLITS, DataOptions, DataSource, register
from ._arrays import array_source


def _files_in(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except Exception as e:  # numpy/zipfile raise many types for corrupt or truncated files
        raise DataError(f"cannot read {path}: {first_line(e)}") from None


@register("npz", summary="npz:PATH: arrays images (N,H,W[,C]) uint8 + labels, in one file (optionally train_*, "
          "val_*, test_*) or a folder of train/val/test.npz; missing splits: seeded stratified shares")
def source(arg: str, options: DataOptions) -> DataSource:
    if not arg:
        raise ConfigError("--data npz needs a path: npz:FILE.npz or npz:FOLDER (with train.npz, val.npz, test.npz)")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"npz data {arg} not found")
    parts = {}
    if path.is_dir():
        for s in SPLITS:
            f = path / f"{s}.npz"
            if f.is_file():
                parts[s] = cached(f, s, lambda f=f: read_npz(f, channels=options.channels))
        if "train" not in parts:
            raise DataNotFoundError(f"npz folder {arg} has no train.npz (expected train.npz, optionally val.npz "
                                    "and test.npz)")
    else:
        names = _files_in(path)
        prefixes = [s for s in SPLITS if f"{s}_images" in names]
        if prefixes:
            for s in prefixes:
                parts[s] = cached(path, s, lambda s=s: read_npz(path, channels=options.channels, prefix=f"{s}_"))
        else:
            parts["train"] = cached(path, "all", lambda: read_npz(path, channels=options.channels))
    h, w = parts["train"].images.shape[1:3]
    options.check_image_size((int(h), int(w)), f"npz:{arg}")
    return array_source(f"npz:{arg}", "npz", parts, options)
