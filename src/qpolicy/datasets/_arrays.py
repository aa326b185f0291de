"""Shared by the plugins that hold images in memory: the three splits from whatever splits the data has."""

from __future__ import annotations

import torch

from ..data import ArrayDataset, stratified_split
from ..errors import DataError
from . import SPLITS, DataOptions, DataSource


def _pool(parts: dict[str, ArrayDataset]) -> tuple[ArrayDataset, dict[str, torch.Tensor]]:
    """One dataset holding every given split, and each split's index range in it."""
    shapes = {name: tuple(ds.images.shape[1:]) for name, ds in parts.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the splits hold images of different shapes (H, W, C): {shapes}")
    images = torch.cat([ds.images for ds in parts.values()])
    labels = torch.cat([ds.labels for ds in parts.values()])
    ranges, start = {}, 0
    for name, ds in parts.items():
        ranges[name] = torch.arange(start, start + len(ds))
        start += len(ds)
    classes = max((ds.classes for ds in parts.values()), key=len)
    src = "; ".join(f"{n}: {ds.source}" for n, ds in parts.items())
    return ArrayDataset(images=images, labels=labels, classes=classes, source=src), ranges


def array_source(spec: str, kind: str, parts: dict[str, ArrayDataset], options: DataOptions) -> DataSource:
    """A source over ``parts`` (``train`` required; ``val`` / ``test`` optional: what is missing is a seeded,
    stratified share of ``train``, ``options.val_fraction`` / ``test_fraction`` of each class)."""
    if "train" not in parts:
        raise DataError(f"{spec}: no training images (a train split, or images to split)")
    pool, ranges = _pool(parts)
    missing = [s for s in ("val", "test") if s not in parts]
    train = ranges["train"]
    rules = [f"{s}: given" for s in ("val", "test") if s in parts]
    if missing:
        fractions = [options.val_fraction if s == "val" else options.test_fraction for s in missing]
        *held, rest = stratified_split(pool.labels[train], fractions, options.split_seed)
        for s, f, idx in zip(missing, fractions, held, strict=True):
            ranges[s] = train[idx]
            rules.append(f"{s}: {f:g} of each class of train (seed {options.split_seed})")
        ranges["train"] = train[rest]
    for s in SPLITS:
        if len(ranges[s]) == 0:
            raise DataError(f"{spec}: the {s} split is empty ({len(train)} training images); give more images or "
                            "a larger --val-fraction / --test-fraction")
    n_classes = int(pool.labels.max()) + 1
    if len(pool.classes) < n_classes:
        raise DataError(f"{spec}: labels go up to {n_classes - 1} but {len(pool.classes)} class names are given")
    h, w, c = pool.images.shape[1:]
    mean, std = options.normalization(c)
    counts = {s: len(ranges[s]) for s in SPLITS}
    return DataSource(spec=spec, kind=kind, input_shape=(c, h, w), classes=tuple(pool.classes), mean=mean, std=std,
                      pad=max(1, h // 8), flip=False, split_fn=lambda s: (pool, ranges[s]),
                      splits_rule="; ".join(rules), extra={"counts": counts})
