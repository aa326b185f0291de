"""Incremental randomized smoothing (IRS; Ugare, Wang, Misailovic and Singh, ICLR 2024): certify an approximation
``f_p`` of a model ``f`` (here: a quantized copy) from ``f``'s certificate and a few samples.

For the same noise ``e``, ``P(f_p(x+e) = c_A) >= P(f(x+e) = c_A) - zeta`` with ``zeta = P(f(x+e) != f_p(x+e))``.
So with ``p_A`` the lower bound stored by ``f``'s certificate and ``zeta_up`` a one-sided ``1 - alpha`` Clopper-Pearson
upper bound on ``zeta`` from ``n_p`` shared-noise samples, ``f_p``'s smoothed classifier returns ``c_A`` within radius
``sigma * Phi^-1(p_A - zeta_up)`` whenever ``p_A - zeta_up > 1/2``. Because ``f_p`` rarely disagrees with ``f``,
``zeta`` is small and ``n_p`` can be far below ``n``: the bound ``zeta_up`` from ``k`` disagreements in ``n_p``
samples is tight when ``k`` is near 0, whereas estimating ``p_A`` directly needs ``n`` samples to be tight near 1.

When IRS cannot certify (``f`` abstained, or ``p_A - zeta_up <= 1/2``) it falls back to certifying ``f_p`` from
scratch (:meth:`Smooth.certify`, at the reference's ``alpha``), unless ``fallback`` is off, when the image counts as
abstained (what the ARQ reward uses, to bound its cost). By the union bound over the bounds an image's certificate
may rest on, a certificate is wrong with probability at most ``alpha_f + alpha`` without fallback (the stored
certificate's and the ``zeta`` bound's) and ``alpha_f + alpha + alpha_f`` with it (the fallback's own bound, at the
reference's ``alpha_f``); :meth:`IRSConfig.failure_probability` gives it and every IRS result records it.

The stored certificate must carry ``f``'s classes on its first ``n_p`` estimation samples (``certify_dataset(...,
record=n_p)``); ``f_p`` is evaluated on exactly those noise samples (same seed, image index and blocks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from .._validate import require_ints, require_probability
from ..errors import ConfigError
from .smoothing import (
    ABSTAIN,
    Certificate,
    Smooth,
    SmoothConfig,
    decode_preds,
    radius_from,
    upper_confidence_bound,
)

__all__ = ["IRSConfig", "IncrementalCertifier", "check_reference"]


@dataclass(frozen=True, kw_only=True)
class IRSConfig:
    """Incremental smoothing settings.

    Args:
        n_p: Shared-noise samples estimating the disagreement ``zeta``.
        alpha: Failure probability of the ``zeta`` bound (the certificate's total is this plus the stored one's).
        fallback: Certify from scratch (with the reference run's n0, n) where IRS cannot; off: abstain there.
    """

    n_p: int = 1000
    alpha: float = 0.001
    fallback: bool = True

    def __post_init__(self) -> None:
        require_ints(self, ("n_p",), minimum=1)
        require_probability(self, ("alpha",))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def failure_probability(self, reference_alpha: float) -> float:
        """The probability that an IRS certificate is wrong, by the union bound: the stored certificate's
        ``reference_alpha`` (``alpha_f``), the ``zeta`` bound's ``alpha``, and with fallback the from-scratch
        certification's (made at ``reference_alpha``)."""
        return reference_alpha + self.alpha + (reference_alpha if self.fallback else 0.0)


def check_reference(reference: dict[str, Any], n_p: int) -> SmoothConfig:
    """The smoothing config of a stored full-precision certify result, checked to hold ``n_p`` recorded samples."""
    settings = reference.get("settings", {})
    config = SmoothConfig(**settings.get("config", {}))
    recorded = int(settings.get("record", 0))
    if recorded < n_p:
        raise ConfigError(f"the reference certificates record the base's classes on {recorded} samples per image; "
                          f"incremental smoothing with n_p={n_p} needs at least that many (certify the reference "
                          f"with --record {n_p})")
    if n_p > config.n:
        raise ConfigError(f"n_p ({n_p}) must not exceed the reference's n ({config.n})")
    return config


class IncrementalCertifier:
    """Certify a model's smoothed classifier from a reference model's stored certificates.

    Args:
        smooth: The smoothed classifier of the approximate model ``f_p`` (same sigma and normalization).
        reference: A certify result of the reference model ``f`` (``load_certify``) made with ``record >= n_p``.
        config: IRS settings.
    """

    def __init__(self, smooth: Smooth, reference: dict[str, Any], config: IRSConfig):
        self.smooth, self.config = smooth, config
        self.ref_config = check_reference(reference, config.n_p)
        if abs(self.ref_config.sigma - smooth.sigma) > 1e-12:
            raise ConfigError(f"the reference was certified at sigma={self.ref_config.sigma:g}, this model at "
                              f"sigma={smooth.sigma:g}: incremental smoothing needs the same noise")
        self.by_index = {int(r["index"]): r for r in reference["records"]}

    def certify(self, x: torch.Tensor, label: int, index: int) -> tuple[Certificate, None]:
        ref = self.by_index.get(int(index))
        if ref is None:
            raise ConfigError(f"image {index} has no reference certificate")
        t = time.perf_counter()
        cfg, rc = self.config, self.ref_config
        if ref["prediction"] != ABSTAIN:
            f_preds = decode_preds(ref["sample_preds"])[:cfg.n_p]
            q_preds = self.smooth.sample_predictions(x, cfg.n_p, batch=rc.batch, seed=rc.seed, index=index, stage=1)
            k = int((q_preds != f_preds).sum())
            zeta_up = upper_confidence_bound(k, cfg.n_p, cfg.alpha)
            p = float(ref["p_lower"]) - zeta_up
            if p > 0.5:
                return Certificate(index=int(index), label=int(label), prediction=int(ref["prediction"]),
                                   radius=radius_from(p, rc.sigma), p_lower=p, count=k, samples=cfg.n_p,
                                   seconds=time.perf_counter() - t, method="irs"), None
        spent = time.perf_counter() - t
        used = cfg.n_p if ref["prediction"] != ABSTAIN else 0
        if not cfg.fallback:
            return Certificate(index=int(index), label=int(label), prediction=ABSTAIN, radius=0.0, p_lower=0.0,
                               count=0, samples=used, seconds=spent, method="irs-abstain"), None
        cert, _ = self.smooth.certify(x, label, rc, index=index)
        return Certificate(**{**{f.name: getattr(cert, f.name) for f in fields(cert)},
                              "samples": cert.samples + used, "seconds": cert.seconds + spent,
                              "method": "irs-fallback"}), None
