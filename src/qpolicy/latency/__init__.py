"""Latency as a budget: per-layer latency tables measured on the runtime that ships the model.

:mod:`.targets` names the deployment targets and their precisions, :mod:`.table` is the table (a versioned JSON
artefact) and its additive prediction, :mod:`.profile` measures it, :mod:`.measure` times a policy's
exported model end to end beside the table's prediction.
"""

from .measure import LatencyMeasurement, measure_latency
from .profile import ProfileConfig, load_or_profile, profile_latency
from .table import LatencyTable, Stat, layer_signature
from .targets import PRECISIONS, TARGETS, Target, precision_of, target

__all__ = ["LatencyMeasurement", "measure_latency", "ProfileConfig", "load_or_profile", "profile_latency",
           "LatencyTable", "Stat", "layer_signature", "PRECISIONS", "TARGETS", "Target", "precision_of", "target"]
