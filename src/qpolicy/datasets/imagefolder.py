"""A folder of images in class subfolders: ``--data imagefolder:DIR``.

``DIR/<class>/<image>``, or ``DIR/train/<class>/...`` with optionally ``DIR/val/...`` and ``DIR/test/...``. Classes
are the subfolder names in sorted order (label 0 is the first), the same in every split. Splits that are not given
are a seeded, stratified share of the training images (``--val-fraction``, ``--test-fraction``). Images are read
with Pillow, converted to ``--channels`` (default: grayscale when the first image is, else RGB) and resized to
``--image-size`` (default: as stored, which must then be one size). Pixels are scaled to [0, 1] and not normalized
unless ``--mean`` / ``--std`` say so; training batches are augmented by a random crop of H/8-pixel zero padding
(no flip: not every image is symmetric).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import ArrayDataset, cached
from ..errors import ConfigError, DataError, DataNotFoundError, first_line
from . import SPLITS, DataOptions, DataSource, register
from ._arrays import array_source

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_GRAY = ("1", "L", "LA", "I", "I;16", "F")


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for label, c in enumerate(classes):
        d = folder / c
        if d.is_dir():
            out += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in EXTENSIONS and f.is_file()]
    return out


def _read(folder: Path, files: list[tuple[Path, int]], classes: list[str], channels: int,
          size: tuple[int, int] | None) -> ArrayDataset:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # Pillow raises many types for unreadable files
            raise DataError(f"cannot read image {f}: {first_line(e)}") from None
        if images and a.shape != images[0].shape:
            raise DataError(f"{f} is {a.shape[1]}x{a.shape[0]}, {files[0][0]} is {images[0].shape[1]}x"
                            f"{images[0].shape[0]}: give --image-size H,W to resize every image to one size")
        images.append(a)
    arr = np.stack(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    return ArrayDataset(images=torch.from_numpy(arr), labels=torch.tensor([y for _, y in files], dtype=torch.int64),
                        classes=tuple(classes), source=str(folder))


@register("imagefolder", summary="imagefolder:DIR: class subfolders (optionally under train/, val/, test/); "
          "missing splits: seeded stratified shares; --image-size, --channels")
def source(arg: str, options: DataOptions) -> DataSource:
    if not arg:
        raise ConfigError("--data imagefolder needs a folder: imagefolder:DIR (class subfolders, optionally under "
                          "train/, val/, test/)")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {arg} not found")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{arg} has {', '.join(split_dirs)}/ but no train/: qpolicy needs training images for "
                        "calibration")
    if not split_dirs:
        split_dirs = {"train": root}
    classes = _classes(split_dirs["train"])
    if not classes:
        raise DataError(f"{split_dirs['train']} has no class subfolders (expected DIR/<class>/<image>)")
    for d in split_dirs.values():
        extra = sorted(set(_classes(d)) - set(classes))
        if extra:
            raise DataError(f"{d} has classes {extra} that train/ does not have")
    files = {s: _files(d, classes) for s, d in split_dirs.items()}
    for s, f in files.items():
        if not f:
            raise DataError(f"{split_dirs[s]} has no images ({', '.join(EXTENSIONS)}) in its class subfolders")
    channels = options.channels
    if channels is None:
        from PIL import Image

        try:
            with Image.open(files["train"][0][0]) as im:
                channels = 1 if im.mode in _GRAY else 3
        except Exception as e:  # Pillow raises many types for unreadable files
            raise DataError(f"cannot read image {files['train'][0][0]}: {first_line(e)}") from None
    sig = tuple((s, len(f), max(p.stat().st_mtime_ns for p, _ in f)) for s, f in files.items())
    parts = {s: cached(split_dirs[s], s, lambda s=s: _read(split_dirs[s], files[s], classes, channels,
                                                             options.image_size),
                       key=(channels, options.image_size, sig))
             for s in files}
    return array_source(f"imagefolder:{arg}", "imagefolder", parts, options)
