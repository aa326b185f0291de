"""Data sets as plugins: ``--data SPEC`` on every command that reads data, ``qpolicy list datasets``.

A spec is ``NAME`` or ``NAME:ARG`` for a registered plugin (``cifar10``, ``imagefolder:DIR``, ``npz:PATH``), or a
Python reference ``package.module:FACTORY`` / ``path/to/file.py:FACTORY`` for anything else. A plugin turns the spec
and the :class:`DataOptions` (image size, channels, mean, std, split fractions) into a :class:`DataSource`: the
three splits ``train`` / ``val`` / ``test``, the input shape, the classes, the normalization, the augmentation and
the rule that made the splits (recorded in every result). :func:`qpolicy.data.loader` builds loaders from it.

Every choice qpolicy makes is made on ``val``; ``test`` is only reported; ``train`` feeds calibration, metrics and
training. A plugin must keep the three disjoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, DataError, UnknownNameError
from ..registry import Registry

__all__ = ["DataOptions", "DataSource", "DataPlugin", "REGISTRY", "register", "names", "source", "default_spec",
           "SPLITS", "TEST_HALVES", "normalization"]

SPLITS = ("train", "val", "test")
# Two fixed, stratified halves of the test split, for models whose training set overlaps the validation split (the
# published CIFAR ResNets): every choice on "select", figures reported on "report", neither seen in training.
TEST_HALVES = ("select", "report")
HALVES_SEED = 20_261_206


def _floats(value: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers, one per channel, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{what} must be finite numbers, one per channel, got {value!r}")
    return out


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """What a plugin needs besides its spec.

    Attributes:
        data_dir: Folder of downloaded data sets (``--data-dir``; default ``$QPOLICY_HOME/datasets``).
        image_size: ``(H, W)`` images are resized to (image folders), or checked against (arrays); None: as stored.
        channels: 1 (grayscale) or 3 (RGB); None: as stored.
        mean, std: Per-channel normalization of pixels scaled to [0, 1]; None: the plugin's (0 and 1, i.e. none,
            for image folders and arrays).
        val_fraction, test_fraction: Shares of each class held out when the data has no such split of its own
            (a seeded, stratified split).
        split_seed: Seeds that split.
    """

    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
                raise ConfigError(f"image size must be two positive integers H,W (or one, square), got "
                                  f"{self.image_size!r}")
            object.__setattr__(self, "image_size", size)
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", _floats(self.std, "std"))
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"mean and std need one value per channel each, got {len(self.mean)} and "
                              f"{len(self.std)}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a number in (0, 1), got {v!r}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(f"val-fraction + test-fraction must leave at least 10% for training, got "
                              f"{self.val_fraction} + {self.test_fraction}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ConfigError(f"split seed must be a non-negative integer, got {self.split_seed!r}")

    def check_image_size(self, stored: tuple[int, int], what: str) -> None:
        """For data that cannot be resized: the requested size must be the stored one."""
        if self.image_size is not None and tuple(self.image_size) != tuple(stored):
            raise ConfigError(f"{what} holds {stored[0]}x{stored[1]} images; --image-size "
                              f"{self.image_size[0]}x{self.image_size[1]} cannot be applied to it")

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` for ``channels``: the options' or none (0, 1); a length mismatch is an error."""
        mean = self.mean or (0.0,) * channels
        std = self.std or (1.0,) * channels
        for what, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, channels):
                raise ConfigError(f"--{what} has {len(v)} values; the images have {channels} channel(s)")
        return (mean * channels if len(mean) == 1 else mean), (std * channels if len(std) == 1 else std)


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """A data set's three splits and how to feed them to a model.

    Either ``split_fn`` (in-memory images: name -> ``(ArrayDataset, indices)``, batched by
    :class:`qpolicy.data.ArrayLoader`) or ``loaders`` (name -> the user's iterable of batches, any structure) is
    set. ``input_shape`` is per sample (C, H, W), None when only the batches know it.
    """

    spec: str
    kind: str
    input_shape: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pad: int = 0
    flip: bool = False
    splits_rule: str = ""
    split_fn: Callable[[str], tuple[Any, torch.Tensor]] | None = None
    loaders: Mapping[str, Iterable[Any]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> tuple[Any, torch.Tensor]:
        """``(ArrayDataset, indices)`` of split ``name`` (in-memory sources only); ``select`` and ``report`` are
        the two halves of ``test`` (stratified by label, fixed seed)."""
        if name not in SPLITS + TEST_HALVES:
            raise ConfigError(f"split must be one of {', '.join(SPLITS + TEST_HALVES)}, got {name!r}")
        if self.split_fn is None:
            raise ConfigError(f"data {self.spec!r} gives loaders, not images in memory")
        if name in TEST_HALVES:
            from ..data import stratified_split

            ds, idx = self.split_fn("test")
            halves = stratified_split(ds.labels[idx], [0.5], HALVES_SEED)
            return ds, idx[halves[TEST_HALVES.index(name)]]
        return self.split_fn(name)

    def user_loader(self, name: str) -> Iterable[Any]:
        if name in TEST_HALVES:
            raise ConfigError(f"the {name!r} half of the test split needs images in memory; data {self.spec!r} "
                              "gives its own loaders (split its test loader yourself)")
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        if self.loaders is None:
            raise ConfigError(f"data {self.spec!r} holds images in memory: use qpolicy.data.loader(source, split)")
        if name not in self.loaders:
            raise DataError(f"data {self.spec!r} has no {name!r} split (it has {', '.join(self.loaders)}); "
                            f"qpolicy needs train (calibration, metrics, training), val (every choice) and test "
                            "(reported)")
        return self.loaders[name]

    def to_dict(self) -> dict[str, Any]:
        """What a result records about its data."""
        return {"spec": self.spec, "kind": self.kind,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "classes": len(self.classes) if self.classes else None, "mean": list(self.mean),
                "std": list(self.std), "splits": self.splits_rule, **dict(self.extra)}


@dataclass(frozen=True, kw_only=True)
class DataPlugin:
    name: str
    build: Callable[[str, DataOptions], DataSource]
    summary: str
    default: bool = False


REGISTRY: Registry[DataPlugin] = Registry(
    "dataset", builtins=("qpolicy.datasets.cifar10", "qpolicy.datasets.imagefolder", "qpolicy.datasets.npz"))


def register(name: str, *, summary: str, default: bool = False):
    """Decorator registering ``build(arg, options) -> DataSource`` as the plugin for ``--data name[:arg]``."""

    def deco(build):
        REGISTRY.add(name, DataPlugin(name=name, build=build, summary=summary, default=default))
        return build

    return deco


def names() -> list[str]:
    return REGISTRY.names()


def default_spec() -> str:
    """The data set used when none is given (the one the zoo's models were trained on)."""
    for n in REGISTRY.names():
        if REGISTRY.get(n).default:
            return n
    raise ConfigError("no default data set is registered")


_SOURCES: dict[tuple[str, DataOptions], DataSource] = {}


def source(spec: str | DataSource | None = None, options: DataOptions | None = None) -> DataSource:
    """The :class:`DataSource` of ``spec`` (module docs); the same spec and options give the same object."""
    if isinstance(spec, DataSource):
        return spec
    options = options or DataOptions()
    spec = default_spec() if spec is None else spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data spec must be a non-empty string such as {default_spec()}, imagefolder:DIR, "
                          f"npz:FILE or module:factory, got {spec!r}")
    key = (spec, options)
    if key not in _SOURCES:
        scheme, sep, arg = spec.partition(":")
        if scheme in REGISTRY:
            built = REGISTRY.get(scheme).build(arg, options)
        elif sep:
            from .factory import from_factory

            built = from_factory(spec, options)
        else:
            raise UnknownNameError("dataset", scheme, REGISTRY.names())
        if len(_SOURCES) >= 8:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = built
    return _SOURCES[key]


def normalization(spec: str | DataSource | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the inputs of ``spec`` (default: the default data set) are normalized with: what attacks,
    noise and defenses working in pixel space undo and redo."""
    src = source(spec)
    return tuple(src.mean), tuple(src.std)
