"""Certify a model, float or under a policy, on a split: what ``qpolicy certify`` runs.

The base classifier is the model (quantized with :func:`qpolicy.apply_policy` when a policy is given) and the
smoothed classifier is certified by :mod:`qpolicy.robust.smoothing`, or incrementally from a reference
(full-precision) run by :mod:`qpolicy.robust.irs`. Images are every ``k``-th of the split (``k = size // images``),
so runs with the same ``images`` certify the same images under the same noise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import LOADER_SPLITS
from ..datasets import DataOptions, source
from ..errors import ConfigError
from ..quant.fake_quant import CalibConfig
from .irs import IncrementalCertifier, IRSConfig
from .smoothing import Smooth, SmoothConfig, certify_dataset

__all__ = ["certify_model", "pixel_images", "spaced_indices", "split_size", "base_warning"]

log = logging.getLogger(__name__)


def _split(split: str, data_dir: str | os.PathLike | None, data: Any):
    src = source(data, DataOptions(data_dir=str(data_dir) if data_dir else None))
    if src.split_fn is None:
        raise ConfigError(f"certification needs images in memory (a registered data set), not the loaders of "
                          f"{src.spec!r}")
    return src.split(split)


def split_size(split: str, data_dir: str | os.PathLike | None = None, data: Any = None) -> int:
    """How many images ``split`` ("test" or "val", the held-out training images) of ``data`` (a data spec;
    default: the default data set) has."""
    return len(_split(split, data_dir, data)[1])


def spaced_indices(size: int, images: int) -> list[int]:
    """Every ``size // images``-th index of a split of ``size`` images (Cohen et al.: every 100th test image)."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a positive integer, got {images!r}")
    if images > size:
        raise ConfigError(f"images ({images}) exceeds the split's {size} images")
    step = size // images
    return list(range(0, step * images, step))


def pixel_images(split: str, indices: Iterable[int], *, data_dir: str | os.PathLike | None = None, data: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images (N x 3 x H x W in [0, 1]) and labels of ``split`` at positions ``indices``; the returned indices are
    positions in the underlying file ("val": the held-out training images), which is what seeds the noise."""
    if split not in LOADER_SPLITS or split == "train":
        raise ConfigError(f"certify on 'val' or 'test', got {split!r}")
    ds, idx = _split(split, data_dir, data)
    pos = torch.tensor(list(indices), dtype=torch.long)
    file_idx = idx[pos]
    imgs = ds.images[file_idx].permute(0, 3, 1, 2).float() / 255.0
    return imgs, ds.labels[file_idx], [int(i) for i in file_idx]


def base_warning(model: nn.Module, sigma: float) -> str | None:
    """A warning when the base model was not trained under noise of this sigma (its smoothed classifier abstains
    on most images), else None."""
    trained = getattr(model, "noise_sigma", None)
    if trained is None:
        return (f"the base model was not trained under Gaussian noise: at sigma={sigma:g} its smoothed classifier "
                f"will abstain on most images (make one with `qpolicy train-noise --sigma {sigma:g}`)")
    if abs(trained - sigma) > 1e-12:
        return f"the base model was noise-trained at sigma={trained:g}, certified here at sigma={sigma:g}"
    return None


def certify_model(model: nn.Module, policy: Any = None, *, config: SmoothConfig, out_dir: str | os.PathLike,
                  split: str = "test", images: int = 100, resume: bool = False, calib: Iterable[Any] | None = None,
                  calib_config: Any = None, record: int = 0, reference: dict[str, Any] | None = None,
                  irs: IRSConfig | None = None, device: str | torch.device | None = None,
                  model_name: str | None = None, data_dir: str | os.PathLike | None = None,
                  noisy_calib: bool = True, workers: int | None = None, address: str | None = None,
                  stats: Any = None) -> dict[str, Any]:
    """Certify ``model`` (under ``policy`` when given, PTQ on ``calib``) on ``images`` images of ``split``.

    Args:
        model: The float base classifier (not modified).
        policy: A :class:`qpolicy.Policy` for this model, or None for the float model.
        config: Smoothing settings (sigma, n0, n, alpha, batch, seed).
        out_dir: Run folder; ``certify.json`` is rewritten after every image.
        split: "test" or "val".
        images: How many images, evenly spaced over the split.
        resume: Continue a run in ``out_dir``.
        calib, calib_config: Calibration batches and settings for the policy's PTQ.
        noisy_calib: Add the smoothing noise to the calibration batches (default): a noise-trained base's
            BatchNorm statistics and activation ranges belong to noisy inputs.
        record: Keep the base's classes on this many samples per image (a reference for incremental smoothing).
        reference: A certify result of the full-precision model: certify incrementally from it (IRS).
        irs: IRS settings (with ``reference``).
        device: "auto", "cpu", "cuda", ...
        model_name: Recorded in the result.
        data_dir: Data folder override.
        workers, address: Certify the images on a local Ray with this many CPUs, or on the Ray cluster at this
            address (:func:`qpolicy.runner.run_many`); the same records as serially. ``stats`` (a
            :class:`qpolicy.runner.RunStats`) receives the backend and Ray's start-up time.

    Returns:
        The written result: settings, per-image records and a summary (ACR, certified accuracy per radius).
    """

    if policy is not None:
        policy.validate(model)
    size = split_size(split, data_dir)
    positions = spaced_indices(size, images)
    if reference is not None:
        irs = irs or IRSConfig()
        ref_cfg = reference.get("settings", {}).get("config", {})
        if any(ref_cfg.get(k) != v for k, v in config.to_dict().items()):
            raise ConfigError("incremental smoothing reuses the reference's noise: certify with its settings "
                              f"({', '.join(f'{k}={v}' for k, v in ref_cfg.items())})")
    warning = base_warning(model, config.sigma)
    if warning:
        log.warning("warning: %s", warning)
    base = model
    if policy is not None:
        from ..quant import apply_policy
        from .noise import NoisyBatches

        # the base was trained (and its BatchNorm statistics gathered) on noisy images: calibrate on such images
        noisy = NoisyBatches(calib, config.sigma, seed=config.seed) if calib is not None and noisy_calib else calib
        base = apply_policy(model, policy, calib=noisy, config=calib_config)
    imgs, labels, file_idx = pixel_images(split, positions, data_dir=data_dir)
    smooth = Smooth(base, num_classes=int(labels.max()) + 1 if len(labels) else 10, sigma=config.sigma,
                    device=device)
    smooth.base.to(smooth.device)
    certify_one = None
    if reference is not None:
        missing = [i for i in file_idx if i not in {int(r["index"]) for r in reference["records"]}]
        if missing:
            raise ConfigError(f"the reference has no certificate for {len(missing)} of these images (e.g. index "
                              f"{missing[0]}): certify the reference on the same split and --images")
        certify_one = IncrementalCertifier(smooth, reference, irs).certify
    meta = {"model": model_name, "split": split, "method": "irs" if reference is not None else "rs",
            "policy": policy.to_dict() if policy is not None else None,
            "base": {"noise_sigma": getattr(model, "noise_sigma", None),
                     "weights": getattr(model, "noise_weights", None), "warning": warning},
            "irs": irs.to_dict() if reference is not None and irs is not None else None,
            # the probability that a certificate is wrong: Cohen et al.'s alpha, or IRS's union bound
            "failure_probability": (irs.failure_probability(config.alpha) if reference is not None and irs is not None
                                    else config.alpha)}
    if policy is not None:
        meta["calib"] = (calib_config or CalibConfig()).to_dict()  # the policy's PTQ
        from ..costs import policy_cost
        from ..layers import quantizable_layers

        meta["cost"] = policy_cost(quantizable_layers(model), policy).to_dict(per_layer=False)
    return certify_dataset(smooth, imgs, labels, file_idx, config, out_dir=Path(out_dir), resume=resume,
                           record=record, meta=meta, certify_one=certify_one, workers=workers, address=address,
                           stats=stats)
