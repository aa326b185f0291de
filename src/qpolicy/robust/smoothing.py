"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019): a certified L2 radius for any base classifier.

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is constant within L2 radius
``sigma * Phi^-1(p_A)`` of ``x`` when ``p_A`` lower-bounds the top class's probability and exceeds 1/2.

* :meth:`Smooth.predict` (the paper's PREDICT): ``n`` noisy samples; the top class unless a two-sided binomial test
  of its count against the runner-up's (p = 1/2) has p-value above ``alpha``, then abstain.
* :meth:`Smooth.certify` (CERTIFY): the top class from ``n0`` samples, its count from ``n`` fresh ones, the
  one-sided ``1 - alpha`` Clopper-Pearson lower bound ``p_A`` on its probability; abstain when ``p_A < 1/2``, else
  radius ``sigma * Phi^-1(p_A)``. Each certificate is wrong with probability at most ``alpha``.

Noise is in pixel units (images in [0, 1]); the base model sees ``(x + e - mean) / std``. It is drawn in blocks of
:data:`BLOCK` samples, each from its own generator seeded by (seed, image index, stage, block), so the noise an
image gets does not depend on the batch size, a resumed run draws what an uninterrupted one would, and two models
can be evaluated under the very same noise (what incremental smoothing, :mod:`qpolicy.robust.irs`, relies on).

:func:`certify_dataset` certifies a set of images into a run folder, one atomic rewrite per finished image, so a
killed run keeps every finished certificate and ``resume`` continues after the last one.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import read_json, write_json
from .._validate import require_ints, require_probability
from ..datasets import normalization
from ..errors import CheckpointError, ConfigError
from ..evaluate import resolve_device
from .noise import check_sigma

__all__ = ["ABSTAIN", "BLOCK", "check_certify", "certify_records", "SmoothConfig", "Smooth", "Certificate",
           "lower_confidence_bound", "upper_confidence_bound", "radius_from", "summarize", "certify_dataset", "RADII",
           "CERTIFY_NAME", "load_certify", "encode_preds", "decode_preds"]

log = logging.getLogger(__name__)
ABSTAIN = -1
BLOCK = 100  # noise samples per seeded block
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CERTIFY_NAME = "certify.json"
_FORMAT = "qpolicy.certify"


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion from ``k`` of ``n``
    (the two-sided exact interval at level ``1 - 2 alpha``, as in Cohen et al.'s code)."""
    from scipy.stats import binomtest

    if k == 0:
        return 0.0
    return float(binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low)


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson upper bound on a binomial proportion from ``k`` of ``n``."""
    from scipy.stats import binomtest

    if k == n:
        return 1.0
    return float(binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").high)


def radius_from(p_lower: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_lower)``; 0 at or below 1/2 (the caller abstains there)."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


@dataclass(frozen=True, kw_only=True)
class SmoothConfig:
    """Randomized-smoothing settings (defaults: Cohen et al.'s CIFAR-10 certification, n = 100,000).

    Args:
        sigma: Noise standard deviation, pixel units.
        n0: Samples that select the top class.
        n: Samples that bound its probability.
        alpha: Failure probability of each certificate (and the test level of predict).
        batch: Noisy samples per forward pass (rounded up to whole blocks of 100).
        seed: Seeds the noise (with the image index).
    """

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_sigma(self.sigma)
        require_ints(self, ("n0", "n", "batch"), minimum=1)
        require_ints(self, ("seed",), minimum=0)
        if self.n0 > self.n:
            raise ConfigError(f"n0 (samples selecting the class, {self.n0}) must not exceed n (samples bounding "
                              f"its probability, {self.n}); Cohen et al. use n0=100, n=100000")
        require_probability(self, ("alpha",))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Certificate:
    """One image's certificate. ``prediction`` is :data:`ABSTAIN` (-1) when the smoothed classifier abstains."""

    index: int
    label: int
    prediction: int
    radius: float
    p_lower: float
    count: int
    samples: int
    seconds: float
    method: str = "rs"

    @property
    def correct(self) -> bool:
        return self.prediction == self.label

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["correct"] = self.correct
        return d


def _block_seed(seed: int, index: int, stage: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, index, stage, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Smooth:
    """A smoothed classifier around ``base`` (which takes normalized images).

    Args:
        base: The base classifier (its mode and device are left as they are; it runs in eval mode here).
        num_classes: Number of classes.
        sigma: Noise standard deviation, pixel units.
        mean, std: The normalization the base expects, per channel (default: the default data set's).
        device: Where the noise and forward passes run ("auto": CUDA when available).
    """

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, device: str | torch.device | None = None):
        if mean is None or std is None:  # the default data set's normalization
            mean, std = normalization()
        self.base = base
        self.num_classes = int(num_classes)
        self.sigma = check_sigma(sigma)
        self.device = resolve_device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.forward_passes = 0

    def _noise(self, shape: tuple[int, ...], seed: int, index: int, stage: int, first: int, count: int
               ) -> torch.Tensor:
        """Noise samples ``first .. first+count`` of (seed, index, stage), block-wise (independent of batching)."""
        out = []
        b0, b1 = first // BLOCK, -(-(first + count) // BLOCK)
        for b in range(b0, b1):
            g = torch.Generator(device=self.device).manual_seed(_block_seed(seed, index, stage, b))
            out.append(torch.randn((BLOCK, *shape), generator=g, device=self.device))
        noise = torch.cat(out)
        start = first - b0 * BLOCK
        return noise[start:start + count] * self.sigma

    @torch.no_grad()
    def sample_predictions(self, x: torch.Tensor, num: int, *, batch: int, seed: int, index: int, stage: int,
                           first: int = 0) -> torch.Tensor:
        """The base model's class for noisy samples ``first .. first+num`` of ``x`` (pixel units, C x H x W)."""
        was = self.base.training
        self.base.eval()
        x = x.to(self.device, torch.float32)
        batch = max(BLOCK, -(-batch // BLOCK) * BLOCK)
        preds = []
        try:
            done = 0
            while done < num:
                k = min(batch, num - done)
                noisy = x.unsqueeze(0) + self._noise(tuple(x.shape), seed, index, stage, first + done, k)
                preds.append(self.base((noisy - self.mean) / self.std).argmax(1))
                self.forward_passes += k
                done += k
        finally:
            self.base.train(was)
        return torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)

    def counts(self, preds: torch.Tensor) -> np.ndarray:
        return torch.bincount(preds, minlength=self.num_classes).numpy()

    def predict(self, x: torch.Tensor, n: int, alpha: float, *, batch: int = 1000, seed: int = 0, index: int = 0
                ) -> int:
        """Cohen et al.'s PREDICT: the top class of ``n`` samples, or ABSTAIN when a two-sided binomial test
        of its count against the runner-up's has p-value above ``alpha``."""
        from scipy.stats import binomtest

        counts = self.counts(self.sample_predictions(x, n, batch=batch, seed=seed, index=index, stage=2))
        top2 = np.argsort(counts)[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(self, x: torch.Tensor, label: int, config: SmoothConfig, *, index: int = 0, record: int = 0
                ) -> tuple[Certificate, torch.Tensor | None]:
        """Cohen et al.'s CERTIFY for one image; also returns the base's classes on the first ``record``
        estimation samples (what incremental smoothing compares a quantized model with), or None."""
        t = time.perf_counter()
        sel = self.sample_predictions(x, config.n0, batch=config.batch, seed=config.seed, index=index, stage=0)
        c_a = int(self.counts(sel).argmax())
        est = self.sample_predictions(x, config.n, batch=config.batch, seed=config.seed, index=index, stage=1)
        n_a = int((est == c_a).sum())
        p_lower = lower_confidence_bound(n_a, config.n, config.alpha)
        pred, radius = (c_a, radius_from(p_lower, config.sigma)) if p_lower > 0.5 else (ABSTAIN, 0.0)
        cert = Certificate(index=index, label=int(label), prediction=pred, radius=radius, p_lower=p_lower, count=n_a,
                           samples=config.n0 + config.n, seconds=time.perf_counter() - t)
        return cert, (est[:record].clone() if record else None)


def summarize(records: Sequence[dict[str, Any]], radii: Sequence[float] = RADII) -> dict[str, Any]:
    """ACR (mean over all images of the radius where correct, else 0), certified accuracy at ``radii``
    (correct with radius at least r; at r = 0, correct and not abstaining), abstention rate, samples, seconds."""
    n = len(records)
    if n == 0:
        return {"images": 0}
    correct = [r for r in records if r["prediction"] == r["label"]]
    return {"images": n,
            "acr": sum(r["radius"] for r in correct) / n,
            "certified_accuracy": {f"{rad:g}": 100.0 * sum(r["radius"] >= rad for r in correct) / n for rad in radii},
            "clean_accuracy": 100.0 * len(correct) / n,
            "abstain": 100.0 * sum(r["prediction"] == ABSTAIN for r in records) / n,
            "samples": int(sum(r["samples"] for r in records)),
            "seconds": float(sum(r["seconds"] for r in records))}


def encode_preds(preds: torch.Tensor) -> str:
    """Sample classes as compact text (uint8, base64) for the certificate file."""
    return base64.b64encode(preds.to(torch.uint8).numpy().tobytes()).decode("ascii")


def decode_preds(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).astype(np.int64))


def load_certify(path: str | Path) -> dict[str, Any]:
    """Read a certify result (``certify.json`` or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / CERTIFY_NAME
    return check_certify(read_json(path, what="certify result"), str(path))


def check_certify(obj: Any, source: str) -> dict[str, Any]:
    """``obj`` if it is a well-formed certify result (settings, and every certificate's fields), else a
    ConfigError naming ``source`` and the field."""
    path = source
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT or not isinstance(obj.get("records"), list):
        raise ConfigError(f"{path} is not a qpolicy certify result")
    try:
        settings = obj["settings"]
        SmoothConfig(**settings["config"])
        record = settings.get("record", 0)
        if isinstance(record, bool) or not isinstance(record, int) or record < 0:
            raise ValueError("settings.record must be a non-negative integer")
        for r in obj["records"]:
            _check_record(r, record)
    except ConfigError as e:
        raise ConfigError(f"{path}: malformed certify result ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: malformed certify result ({type(e).__name__}: {str(e)[:200]})") from None
    return obj


def _check_record(r: dict[str, Any], record: int) -> None:
    """One certificate of a stored result: integer index/label/prediction, finite radius >= 0, p_lower in [0, 1],
    and ``record`` sample classes when the run recorded them."""
    import math

    for k in ("index", "label", "prediction"):
        if isinstance(r[k], bool) or not isinstance(r[k], int) or r[k] < ABSTAIN:
            raise ValueError(f"records[].{k} must be an integer, got {str(r[k])[:40]!r}")
    for k, hi in (("radius", math.inf), ("p_lower", 1.0)):
        v = r[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
            raise ValueError(f"records[].{k} must be a number in [0, {hi}], got {str(v)[:40]!r}")
    if record and r["prediction"] != ABSTAIN and len(decode_preds(r["sample_preds"])) < record:
        raise ValueError("records[].sample_preds holds fewer samples than settings.record")


def _certify_image(shared: dict[str, Any], i: int) -> dict[str, Any]:
    """One image's certificate record (a ``run_many`` task)."""
    x, y, idx = shared["images"][i], int(shared["labels"][i]), int(shared["indices"][i])
    if shared["certify_one"] is not None:
        cert, preds = shared["certify_one"](x, y, idx)
    else:
        cert, preds = shared["smooth"].certify(x, y, shared["config"], index=idx, record=shared["record"])
    rec = cert.to_dict()
    if preds is not None:
        rec["sample_preds"] = encode_preds(preds)
    return rec


def certify_records(images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int], *,
                    certify_one=None, smooth: Smooth | None = None, config: SmoothConfig | None = None,
                    record: int = 0, positions: Sequence[int] | None = None, workers: int | None = None,
                    address: str | None = None, on_result=None, stats: Any = None) -> list[dict[str, Any]]:
    """The certificate records of ``images`` at ``positions`` (default all; in that order), without a file:
    ``certify_one(x, label, index)`` or ``smooth.certify`` under ``config``, serially or on Ray
    (:func:`qpolicy.runner.run_many`, which calls ``on_result(k, record)`` as the k-th position finishes)."""
    from ..runner import run_many

    if certify_one is None and (smooth is None or config is None):
        raise ConfigError("certify_records needs certify_one, or smooth and config")
    shared = {"smooth": smooth, "certify_one": certify_one, "images": images, "labels": labels,
              "indices": [int(i) for i in indices], "config": config, "record": int(record)}
    todo = list(range(len(shared["indices"]))) if positions is None else list(positions)
    return run_many(_certify_image, todo, shared=shared, workers=workers, address=address, desc="certify",
                    on_result=on_result, stats=stats)


def certify_dataset(smooth: Smooth, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int],
                    config: SmoothConfig, *, out_dir: str | Path, resume: bool = False, record: int = 0,
                    meta: dict[str, Any] | None = None, certify_one=None, workers: int | None = None,
                    address: str | None = None, stats: Any = None) -> dict[str, Any]:
    """Certify ``images`` (N x C x H x W, pixel units) into ``out_dir/certify.json``, rewritten atomically after
    every image; ``indices`` are the images' data set indices (they seed the noise). ``record`` > 0 keeps the base's
    classes on that many estimation samples per image (for incremental smoothing). ``certify_one(x, label, index)``
    replaces the standard certification (incremental smoothing passes its own). Returns the written object.

    Images are independent (each one's noise is seeded by its index), so they run through
    :func:`qpolicy.runner.run_many`: serially, or on Ray with ``workers`` > 1 or an ``address``, with the same
    records; a killed run resumes (``resume``) from the images already in ``certify.json``, in any order.
    ``stats`` (a :class:`qpolicy.runner.RunStats`) receives the backend, the counts and Ray's start-up time."""
    out = Path(out_dir) / CERTIFY_NAME
    meta = dict(meta or {})
    indices = [int(i) for i in indices]
    settings = {"config": config.to_dict(), "indices": indices, "record": int(record),
                "method": meta.get("method", "rs")}
    done: dict[int, dict[str, Any]] = {}  # data set index -> record
    if out.exists():
        if not resume:
            raise CheckpointError(f"{out} exists: resume it (--resume) or choose another output folder")
        prev = load_certify(out)
        diff = [k for k, v in settings.items() if prev.get("settings", {}).get(k) != v]
        if diff:
            raise CheckpointError(f"{out} was made with other settings ({', '.join(diff)} differ); resume with the "
                                  "same settings or choose another output folder")
        done = {int(r["index"]): r for r in prev["records"]}
        log.info("resuming: %d of %d images already certified", len(done), len(indices))

    def write() -> dict[str, Any]:
        records = [done[i] for i in indices if i in done]  # in the split's order, whatever order they finished in
        obj = {"format": _FORMAT, "version": 1, **meta, "settings": settings,
               "complete": len(records) == len(indices), "summary": summarize(records), "records": records}
        write_json(out, obj)
        return obj

    obj = write()
    todo = [k for k, i in enumerate(indices) if i not in done]
    if todo:
        def arrived(k: int, rec: dict[str, Any]) -> None:
            nonlocal obj
            done[indices[todo[k]]] = rec
            obj = write()

        certify_records(images, labels, indices, certify_one=certify_one, smooth=smooth, config=config,
                        record=record, positions=todo, workers=workers, address=address, on_result=arrived,
                        stats=stats)
    s = obj["summary"]
    if s.get("images"):
        log.info("certified %d images: ACR %.3f, certified accuracy %s", s["images"], s["acr"],
                 ", ".join(f"r={k}: {v:.1f}%" for k, v in s["certified_accuracy"].items()))
    return obj

