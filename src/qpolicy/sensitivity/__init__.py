"""Per-layer sensitivity metrics and the SensitivityTable they produce."""

from . import fisher, hessian, kl, qerror, te  # noqa: F401  (register the metrics)
from .base import DEFAULT_BITS, METRICS, Metric, SensitivityTable, analyze, monotone

__all__ = ["DEFAULT_BITS", "METRICS", "Metric", "SensitivityTable", "analyze", "monotone"]
