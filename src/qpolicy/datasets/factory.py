"""The user's own data: ``--data package.module:FACTORY`` or ``--data path/to/file.py:FACTORY``.

``FACTORY()`` returns a mapping from split name (``train``, ``val``, ``test``) to either

- ``(images, labels)`` arrays (uint8 (N, H, W[, C]) images, integer labels): batched, split and normalized like
  ``npz`` data (a missing ``val`` / ``test`` is a seeded, stratified share of ``train``); or
- an iterable of batches (a ``torch.utils.data.DataLoader``, or a :class:`qpolicy.Data` that also carries the
  task: how a batch becomes model inputs, the per-sample loss and metric). These are used as they are.

or a ready :class:`qpolicy.datasets.DataSource`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from .._imports import import_reference
from ..data import ArrayDataset
from ..errors import ConfigError, DataError
from . import SPLITS, DataOptions, DataSource
from ._arrays import array_source


def _arrays(spec: str, split: str, value) -> ArrayDataset:
    images, labels = (np.asarray(v.cpu() if torch.is_tensor(v) else v) for v in value)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or labels.ndim != 1 \
            or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{spec}: split {split!r} must be (images uint8 (N, H, W[, 1|3]), labels (N,) integers), "
                        f"got {images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
    n = int(labels.max()) + 1 if len(labels) else 1
    return ArrayDataset(images=torch.from_numpy(np.ascontiguousarray(images)),
                        labels=torch.from_numpy(labels.astype(np.int64)), classes=tuple(map(str, range(n))),
                        source=f"{spec}[{split}]")


def from_factory(spec: str, options: DataOptions) -> DataSource:
    factory = import_reference(spec, "data")
    try:
        out = factory()
    except Exception as e:  # the user's code may raise anything
        raise DataError(f"data factory {spec} failed: {type(e).__name__}: {e}") from None
    if isinstance(out, DataSource):
        return out
    if not isinstance(out, Mapping) or not out:
        raise ConfigError(f"data factory {spec} must return a mapping of split name ({', '.join(SPLITS)}) to "
                          f"(images, labels) arrays or to an iterable of batches, got {type(out).__name__}")
    unknown = [k for k in out if k not in SPLITS]
    if unknown:
        raise ConfigError(f"data factory {spec} returned unknown splits {unknown}; allowed: {', '.join(SPLITS)}")
    pairs = {k: isinstance(v, (tuple, list)) and len(v) == 2 and not isinstance(v[0], (tuple, list, dict))
             for k, v in out.items()}
    if all(pairs.values()):
        parts = {k: _arrays(spec, k, v) for k, v in out.items()}
        return array_source(spec, "factory", parts, options)
    if any(pairs.values()):
        raise ConfigError(f"data factory {spec}: give every split as (images, labels) arrays or every split as an "
                          "iterable of batches, not a mix")
    for k, v in out.items():
        if not isinstance(v, Iterable):
            raise ConfigError(f"data factory {spec}: split {k!r} is a {type(v).__name__}, not an iterable of batches")
    return DataSource(spec=spec, kind="factory", input_shape=None, classes=None, loaders=dict(out),
                      splits_rule="the factory's own splits: " + ", ".join(out))
