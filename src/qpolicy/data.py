"""Data sets and deterministic loaders.

CIFAR-10 is read from ``<data dir>/cifar10/{train,test}.npz`` (keys ``images`` uint8 N x 32 x 32 x 3 RGB, ``labels``),
or from a torchvision-style ``cifar-10-batches-py`` folder, where ``<data dir>`` is ``--data-dir`` >
``$QPOLICY_HOME/datasets`` > ``~/.cache/qpolicy/datasets``. When neither exists the canonical archive is downloaded.

Splits: ``"test"`` (only ever reported), ``"val"`` and ``"train"``. The validation split is held out from the
training images: a fixed seeded choice of 5,000 of CIFAR-10's 50,000 (a tenth of a smaller training file), never
seen by ``"train"``, so no calibration, metric or training batch touches it. Every choice qpolicy makes (which
candidate policy, which refinement) is made on it.

Loaders hold the whole split as one uint8 tensor and build each batch with vectorized tensor ops (normalization,
random crop with 4-pixel zero padding, horizontal flip): on a 2-core CPU this is far faster than per-image
transforms, and the batch order and augmentation depend only on ``(seed, epoch)``, so a resumed run sees exactly
the batches it would have seen.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError, DataNotFoundError, UnknownNameError, first_line
from .paths import datasets_dir, download

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "ArrayDataset", "ArrayLoader", "load_cifar10", "loader", "calib_loader",
           "DATASETS", "LOADER_SPLITS", "VAL_SIZE", "validation_indices"]

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DATASETS = ("cifar10",)
SPLITS = ("train", "test")  # the files
LOADER_SPLITS = ("train", "val", "test")  # "val" is held out of the training file
VAL_SIZE = 5000
VAL_SEED = 20_261_129  # fixed: the validation images are the same for every run and every seed


@dataclass(frozen=True, kw_only=True)
class ArrayDataset:
    """A whole split in memory: ``images`` uint8 (N, H, W, C), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())


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


def _from_npz(path: Path) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else tuple(map(str, range(10)))
    except Exception as e:  # numpy/zipfile raise many types for corrupt or truncated files
        raise DataError(f"cannot read {path}: {first_line(e)}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise DataError(f"{path}: expected images uint8 (N, H, W, 3) and N labels, got {images.dtype} "
                        f"{images.shape} and {labels.shape}")
    return ArrayDataset(images=torch.from_numpy(np.ascontiguousarray(images)),
                        labels=torch.from_numpy(labels.astype(np.int64)), classes=classes, source=str(path))


def _candidates(root: Path, split: str) -> list[Path]:
    return [root / "cifar10" / f"{split}.npz", root / f"{split}.npz", root / "cifar-10-batches-py",
            root / "cifar10" / "cifar-10-batches-py", root]


_CACHE: dict[tuple[str, str, int], ArrayDataset] = {}


def _cached(path: Path, split: str, read) -> ArrayDataset:
    """One in-memory copy per file and modification time (a process often loads the same split twice)."""
    key = (str(path.resolve()), split, path.stat().st_mtime_ns)
    if key not in _CACHE:
        if len(_CACHE) >= 2:  # train + test at most
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = read()
    return _CACHE[key]


def load_cifar10(split: str = "test", *, data_dir: str | os.PathLike | None = None,
                 download_missing: bool = True) -> ArrayDataset:
    """Load a CIFAR-10 split from the first location that has it (see the module docstring).

    Raises:
        DataNotFoundError: none of the searched locations holds the data and it cannot be downloaded.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = datasets_dir(data_dir)
    for c in _candidates(root, split):
        if c.suffix == ".npz" and c.is_file():
            return _cached(c, split, lambda c=c: _from_npz(c))
        if c.is_dir() and (c / "batches.meta").is_file():
            return _cached(c, split, lambda c=c: _from_batches(c, split))
    if download_missing:
        try:
            archive = download(CIFAR10_URL, root / "cifar-10-python.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
            return _from_batches(root / "cifar-10-batches-py", split)
        except Exception as e:  # no network here is the common case
            log.info("CIFAR-10 download failed: %s", e)
    searched = "; ".join(str(c) for c in _candidates(root, split)[:4])
    raise DataNotFoundError(
        f"CIFAR-10 {split} split not found. Searched: {searched}. Pass --data-dir or set QPOLICY_HOME to a folder "
        f"with cifar10/{split}.npz or cifar-10-batches-py/ (download: {CIFAR10_URL})"
    )


class ArrayLoader:
    """Batches of normalized ``(x, y)`` from an in-memory uint8 image tensor, deterministic per (seed, epoch).

    Args:
        dataset: The split.
        batch_size: Images per batch.
        shuffle: Reshuffle every epoch.
        augment: Random crop (4-pixel zero padding) and horizontal flip.
        seed: Seeds shuffling and augmentation.
        mean, std: Per-channel normalization of inputs scaled to [0, 1].
        indices: Optional subset of the dataset, in order.
    """

    def __init__(self, dataset: ArrayDataset, *, batch_size: int = 256, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD, indices: torch.Tensor | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.indices = torch.arange(len(dataset)) if indices is None else indices
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch number ``start`` on (earlier ones are skipped, not built)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.indices)
        order = self.indices[torch.randperm(n, generator=gen)] if self.shuffle else self.indices
        if self.augment:  # drawn for the whole epoch up front, so skipping batches does not change them
            offsets = torch.randint(0, 9, (n, 2), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
        for b in range(start, len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl]
            imgs = self.dataset.images[idx]  # (B, H, W, C) uint8
            if self.augment:
                imgs = _crop_flip(imgs, offsets[sl], flips[sl])
            x = (imgs.permute(0, 3, 1, 2).float() - self._mean) * self._inv_std  # (B, C, H, W)
            yield x.contiguous(), self.dataset.labels[idx]


def _crop_flip(imgs: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop from a zero-padded image and optional horizontal flip, by one gather for the batch."""
    b, h, w, _ = imgs.shape
    padded = torch.nn.functional.pad(imgs, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, C)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = offsets[:, :1] + ar_h  # (B, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def validation_indices(n_train: int) -> torch.Tensor:
    """The indices (into the training file of ``n_train`` images) of the validation split: ``min(VAL_SIZE,
    n_train // 10)`` images chosen by a fixed seed, in random order, so that any prefix (the images a search
    scores on) is a random sample too: CIFAR-10's training file is sorted by class."""
    n_val = min(VAL_SIZE, n_train // 10)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[:n_val]


def loader(name: str = "cifar10", split: str = "test", *, batch_size: int = 256, shuffle: bool | None = None,
           augment: bool | None = None, limit: int | None = None, seed: int = 0, classes: Sequence[int] | None = None,
           data_dir: str | os.PathLike | None = None) -> ArrayLoader:
    """A deterministic loader over a data set split.

    Args:
        name: Data set name (``"cifar10"``).
        split: "train" (the training file less the validation images), "val" (held out from the training
            file; see the module docs) or "test".
        batch_size: Images per batch.
        shuffle: Default true for "train", false for "val" and "test".
        augment: Default true for "train" (crop + flip), false for "val" and "test".
        limit: Keep only this many images: a seeded random subset (the first ``limit`` of a fixed permutation).
        seed: Seeds the subset, shuffling and augmentation.
        classes: Keep only images of these labels.
        data_dir: Data folder overriding ``$QPOLICY_HOME/datasets``.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    if split not in LOADER_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(LOADER_SPLITS)}, got {split!r}")
    ds = load_cifar10("test" if split == "test" else "train", data_dir=data_dir)
    idx = torch.arange(len(ds))
    if split != "test":
        held = torch.zeros(len(ds), dtype=torch.bool)
        held[validation_indices(len(ds))] = True
        idx = validation_indices(len(ds)) if split == "val" else idx[~held]
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < len(ds.classes)]
        if bad:
            raise ConfigError(f"classes must be labels in 0..{len(ds.classes) - 1}, got {bad}")
        idx = idx[torch.isin(ds.labels, torch.tensor([int(c) for c in classes]))]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {limit!r}")
        perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))
        idx = idx[perm[:limit]]  # random order: any prefix is a random sample, even of a class-sorted file
    train = split == "train"
    return ArrayLoader(ds, batch_size=batch_size, shuffle=train if shuffle is None else shuffle,
                       augment=train if augment is None else augment, seed=seed, indices=idx)


def calib_loader(name: str = "cifar10", *, batches: int = 32, batch_size: int = 128, seed: int = 0,
                 data_dir: str | os.PathLike | None = None) -> ArrayLoader:
    """Calibration batches: ``batches * batch_size`` seeded training images **with** training augmentation.

    The augmentation matters: BatchNorm statistics are re-estimated on these batches, and the pretrained
    statistics were gathered on augmented images (crop with zero padding, flip). Re-estimating the float
    ResNet-20's statistics on 4,096 plain images drops its test top-1 from 91.73% to 88.84%; on the same images
    augmented it gives 91.77%.
    """
    return loader(name, "train", batch_size=batch_size, shuffle=False, augment=True, limit=batches * batch_size,
                  seed=seed, data_dir=data_dir)
