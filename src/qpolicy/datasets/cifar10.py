"""CIFAR-10 (the default data set): ``--data cifar10``.

Read from ``<data dir>/cifar10/{train,test}.npz`` (keys ``images`` uint8 N x 32 x 32 x 3 RGB, ``labels``), or from a
torchvision-style ``cifar-10-batches-py`` folder, where ``<data dir>`` is ``--data-dir`` > ``$QPOLICY_HOME/datasets``
> ``~/.cache/qpolicy/datasets``. When neither exists the canonical archive is downloaded.

Splits: ``"test"`` is the 10,000-image test file (only ever reported). ``"val"`` is a fixed seeded choice of 5,000
of the 50,000 training images (:func:`qpolicy.data.validation_indices`), held out of ``"train"``, so no calibration,
metric or training batch touches it. Inputs are normalized with the mean and std the zoo's CIFAR models were
trained with; training batches are augmented with a 4-pixel padded random crop and a horizontal flip.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..data import ArrayDataset, cached, holdout_split, read_npz
from ..errors import ConfigError, DataError, DataNotFoundError, first_line
from ..paths import datasets_dir, download
from . import DataOptions, DataSource, register

__all__ = ["NAME", "MEAN", "STD", "URL", "load_cifar10", "source"]

log = logging.getLogger(__name__)

NAME = "cifar10"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FILES = ("train", "test")


class _ArraysOnly(pickle.Unpickler):
    """Unpickler for the CIFAR batch files that can build numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _from_batches(folder: Path, split: str) -> ArrayDataset:
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [folder / "test_batch"]
    images, labels = [], []
    try:
        for f in files:
            d = _read_batch(f)
            images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(d["labels"], dtype=np.int64))
        meta = _read_batch(folder / "batches.meta")
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta["label_names"])
    except Exception as e:  # corrupt, truncated or hostile pickles
        raise DataError(f"cannot read CIFAR-10 batches in {folder}: {first_line(e)}") from None
    return ArrayDataset(images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
                        labels=torch.from_numpy(np.concatenate(labels)), classes=classes, source=str(folder))


def _candidates(root: Path, split: str) -> list[Path]:
    return [root / "cifar10" / f"{split}.npz", root / f"{split}.npz", root / "cifar-10-batches-py",
            root / "cifar10" / "cifar-10-batches-py", root]


def load_cifar10(split: str = "test", *, data_dir: str | os.PathLike | None = None,
                 download_missing: bool = True) -> ArrayDataset:
    """Load a CIFAR-10 file split ("train": all 50,000 training images, or "test") from the first location that
    has it (module docs).

    Raises:
        DataNotFoundError: none of the searched locations holds the data and it cannot be downloaded.
    """
    if split not in FILES:
        raise ConfigError(f"split must be one of {', '.join(FILES)}, got {split!r}")
    root = datasets_dir(data_dir)
    for c in _candidates(root, split):
        if c.suffix == ".npz" and c.is_file():
            return cached(c, split, lambda c=c: read_npz(c, channels=3))
        if c.is_dir() and (c / "batches.meta").is_file():
            return cached(c, split, lambda c=c: _from_batches(c, split))
    if download_missing:
        try:
            archive = download(URL, root / "cifar-10-python.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
            return _from_batches(root / "cifar-10-batches-py", split)
        except Exception as e:  # no network here is the common case
            log.info("CIFAR-10 download failed: %s", e)
    searched = "; ".join(str(c) for c in _candidates(root, split)[:4])
    raise DataNotFoundError(
        f"CIFAR-10 {split} split not found. Searched: {searched}. Pass --data-dir or set QPOLICY_HOME to a folder "
        f"with cifar10/{split}.npz or cifar-10-batches-py/ (download: {URL})"
    )


@register(NAME, default=True, summary="CIFAR-10 (32x32 RGB, 10 classes): 45,000 train / 5,000 val held out of "
          "the training file / 10,000 test; downloaded when missing")
def source(arg: str, options: DataOptions) -> DataSource:
    if arg:
        raise ConfigError(f"--data {NAME} takes no argument, got {NAME}:{arg}")
    options.check_image_size((32, 32), NAME)
    data_dir = options.data_dir

    def split(name: str):
        if name == "test":
            ds = load_cifar10("test", data_dir=data_dir)
            return ds, torch.arange(len(ds))
        ds = load_cifar10("train", data_dir=data_dir)
        train, val = holdout_split(len(ds))
        return ds, (val if name == "val" else train)

    return DataSource(spec=NAME, kind=NAME, input_shape=(3, 32, 32), classes=None, mean=options.mean or MEAN,
                      std=options.std or STD, pad=4, flip=True, split_fn=split,
                      splits_rule="val: a fixed seeded 5,000 of the 50,000 training images, held out of train; "
                      "test: the test file")
