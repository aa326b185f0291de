"""Per-layer sensitivity metrics and the SensitivityTable they produce.

The built-in metrics (fisher, hessian, kl, qerror, te) register themselves when a metric is first looked up in
``METRICS``; this package itself does not import torch.
"""

from .base import DEFAULT_BITS, METRICS, Metric, SensitivityTable, analyze, monotone

__all__ = ["DEFAULT_BITS", "METRICS", "Metric", "SensitivityTable", "analyze", "monotone"]
