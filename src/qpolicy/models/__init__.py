"""The model zoo: a registry of names -> constructors and pretrained weight files.

Weights are found in ``--weights-dir`` > ``$QPOLICY_HOME/models`` > ``~/.cache/qpolicy/models``, checked against
the sha256 prefix in their file name (``resnet20-12fca82f.th``), and downloaded from the canonical URL when
missing. A user model is any ``nn.Module``, or from the CLI a ``package.module:factory`` or ``file.py:factory``
reference with ``--weights FILE`` and ``--model-arg KEY=VALUE``. Models qpolicy trains itself load the weights
shipped with the package when there are some (:mod:`qpolicy.models.shipped`), else from the trained-model cache.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .._imports import import_reference
from ..errors import ConfigError, WeightsError, first_line
from ..paths import download, models_dir, sha256_file
from ..registry import Registry
from .mobilenetv2 import mobilenetv2
from .resnet8 import resnet8
from .resnet_cifar import cifar_resnet
from .shipped import weights_path

__all__ = ["ModelSpec", "REGISTRY", "register", "names", "spec", "load", "load_weights", "resolve_weights",
           "from_reference"]

log = logging.getLogger(__name__)
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A zoo entry.

    Attributes:
        name: Registry name.
        factory: Builds the model with random weights.
        input_shape: Per-sample input shape (C, H, W).
        dataset: The data set it is meant for ("cifar10", "imagenet").
        weights: Pretrained weight file name (``<name>-<sha256 prefix>.<ext>``), or None.
        url: Canonical download URL of the weights.
        reference_top1: Published float top-1 (%) of the pretrained weights on the test set.
        description: One line for ``qpolicy models``.
        trained_here: No public weights: ``qpolicy train --model NAME`` (``recipe``) trains them into the
            trained-model cache, where :func:`load` finds them.
        recipe: The command that trains a ``trained_here`` model (default ``qpolicy train --model NAME``).
        trained_on: What the (pretrained or trained-here) weights were trained on, in words.
        sees_validation: The weights were trained on images of qpolicy's validation split (the published CIFAR
            ResNets saw all 50,000 training images): choices made on that split are made on memorized images, so a
            validated search on such a model warns once.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    dataset: str
    weights: str | None = None
    url: str | None = None
    reference_top1: float | None = None
    description: str = ""
    trained_here: bool = False
    recipe: str = ""
    trained_on: str = ""
    sees_validation: bool = False


REGISTRY: Registry[ModelSpec] = Registry("model")


def register(model_spec: ModelSpec) -> ModelSpec:
    REGISTRY.add(model_spec.name, model_spec)
    return model_spec


def names() -> list[str]:
    return REGISTRY.names()


def spec(name: str) -> ModelSpec:
    return REGISTRY.get(name)


_RESNET_WEIGHTS = {20: ("resnet20-12fca82f.th", 91.73), 32: ("resnet32-d509ac18.th", 92.63),
                   44: ("resnet44-014dd654.th", None), 56: ("resnet56-4bfd9763.th", None)}
for _depth, (_file, _top1) in _RESNET_WEIGHTS.items():
    register(ModelSpec(
        name=f"resnet{_depth}",
        factory=lambda d=_depth: cifar_resnet(d),
        input_shape=(3, 32, 32),
        dataset="cifar10",
        weights=_file,
        url=_AKAMASTER + _file,
        reference_top1=_top1,
        description=f"CIFAR ResNet-{_depth} (He et al. 2016, option-A shortcuts), akamaster weights",
        trained_on="all 50,000 CIFAR-10 training images (the published recipe): the validation split included",
        sees_validation=True,
    ))
# The same ResNets trained here on the 45,000 training images outside the validation split, distilled from the
# published weights on those images only (issue 22): choices made on the validation split are then made on images
# the model never saw. `make heldout-models` trains them (resumable).
HELDOUT_EPOCHS = 100
for _depth in (20, 32):
    register(ModelSpec(
        name=f"resnet{_depth}-heldout",
        factory=lambda d=_depth: cifar_resnet(d),
        input_shape=(3, 32, 32),
        dataset="cifar10",
        trained_here=True,
        recipe=f"qpolicy train --model resnet{_depth}-heldout --teacher resnet{_depth} --epochs {HELDOUT_EPOCHS} "
               "--precision bf16",
        description=f"CIFAR ResNet-{_depth} trained here without the validation images, distilled from "
                    f"resnet{_depth} (`make heldout-models`)",
        trained_on=f"the 45,000 CIFAR-10 training images outside the validation split, distilled from resnet{_depth}"
                   " on those images only",
    ))
register(ModelSpec(
    name="resnet8",
    factory=resnet8,
    input_shape=(3, 32, 32),
    dataset="cifar10",
    trained_here=True,
    description="MLPerf Tiny ResNet-8 for CIFAR-10 (78k parameters); weights trained here by `qpolicy train`",
    trained_on="the 45,000 CIFAR-10 training images outside the validation split (`qpolicy train`)",
))
register(ModelSpec(
    name="mobilenetv2_cifar",
    factory=lambda: mobilenetv2(10, image_size=32),
    input_shape=(3, 32, 32),
    dataset="cifar10",
    description="MobileNetV2 for 32x32 inputs (stride-1 stem and stage 2), no pretrained weights",
))
register(ModelSpec(
    name="mobilenetv2",
    factory=lambda: mobilenetv2(1000, image_size=224),
    input_shape=(3, 224, 224),
    dataset="imagenet",
    description="ImageNet MobileNetV2 (224x224), random weights: for timing work",
))

_HASHED = re.compile(r"-(?P<h>[0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def resolve_weights(model_spec: ModelSpec, weights_dir: str | os.PathLike | None = None,
                    *, download_missing: bool = True) -> Path:
    """Path of a zoo model's verified weight file, downloading it when missing.

    Raises:
        WeightsError: no weights for this model, hash mismatch, or missing and not downloadable.
    """
    if not model_spec.weights:
        raise WeightsError(f"model {model_spec.name!r} has no pretrained weights (use pretrained=False)")
    folder = models_dir(weights_dir)
    path = folder / model_spec.weights
    m = _HASHED.search(model_spec.weights)
    prefix = m["h"] if m else None
    if not path.exists():
        if not download_missing or not model_spec.url:
            raise WeightsError(f"weights {model_spec.weights} not found in {folder}")
        try:
            download(model_spec.url, path, sha256_prefix=prefix)
        except WeightsError as e:
            raise WeightsError(f"weights {model_spec.weights} not found in {folder}, and {e}") from None
    if prefix:
        digest = sha256_file(path)
        if not digest.startswith(prefix):
            raise WeightsError(f"weights file {path} is corrupt: sha256 {digest[:16]}... does not start with {prefix}")
    return path


_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights into ``model``: a bare state dict, a checkpoint holding one (under ``state_dict``,
    ``model_state_dict``, ``model``, ``net`` or ``weights``), or a ``.safetensors`` file; ``module.`` prefixes
    (DataParallel) are removed. Files are read without unpickling code (``weights_only``).

    Raises:
        WeightsError: unreadable file, no state dict in it, or keys/shapes that do not fit the model (one line).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise WeightsError(f"{path} is a safetensors file: pip install safetensors") from None
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise WeightsError(f"cannot read weights file {path}: {first_line(e)}") from None
    state = obj
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors, "
                           f"bare or under one of {', '.join(_STATE_KEYS)})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]  # BN fills it in
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"weights file {path} does not fit the model: keys {'; '.join(parts)}")
    bad = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(v.shape)}" for k, v in own.items() if k in state
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"weights file {path} does not fit the model: shapes differ for {len(bad)} tensors, "
                           f"e.g. {bad[0]}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"weights file {path} does not fit the model: {first_line(e)}") from None
    return model


def load(name: str, *, pretrained: bool = True, weights_dir: str | os.PathLike | None = None,
         download_missing: bool = True, trained_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build a zoo model, with its pretrained weights when ``pretrained`` and it has some (for a model trained
    here, from the trained-model cache ``trained_dir``; WeightsError naming the command that trains it if absent).

    The model is returned in eval mode and carries ``input_shape`` and ``zoo_name`` attributes.
    """
    s = spec(name)
    model = s.factory()
    if pretrained and s.trained_here:
        from ..train.trained import load_trained, trained_model_dir

        shipped = weights_path(name)  # package data (qpolicy.models.shipped) first
        folder = shipped or trained_model_dir(name, trained=trained_dir)
        if shipped is None and not (folder / "weights.pt").is_file():
            raise WeightsError(f"no trained {name} in {folder}: it has no public weights; train it once with "
                               f"`{s.recipe or f'qpolicy train --model {name}'}` (or `make {name}`), or use "
                               "--random-init")
        load_trained(model, folder)
    elif pretrained and s.weights:
        load_weights(model, resolve_weights(s, weights_dir, download_missing=download_missing))
    elif pretrained:
        log.info("model %s has no pretrained weights; using random initialization", name)
    model.input_shape = s.input_shape
    model.zoo_name = s.name
    model.sees_validation = bool(pretrained and s.sees_validation)
    return model.eval()


def from_reference(ref: str, **kwargs: Any) -> nn.Module:
    """Build a user model from ``package.module:factory`` (importable from the current folder too) or
    ``path/to/file.py:factory``; the factory is called with ``kwargs``."""
    factory = import_reference(ref, "model")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model factory {ref} does not take the arguments {sorted(kwargs)}: {first_line(e)}") \
            from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model
