"""Differentiable mixed-precision search: a supernet of every candidate width, DMPQ (argmax of the architecture
parameters) and SMPQ (Monte Carlo Shapley values of each candidate)."""

from .search import METHODS, MPQConfig, MPQResult, search_mpq
from .shapley import ShapleyEstimate, exact_shapley, monte_carlo_shapley
from .supernet import MixedQuantLayer, Supernet, build_supernet

__all__ = ["METHODS", "MPQConfig", "MPQResult", "search_mpq", "ShapleyEstimate", "exact_shapley",
           "monte_carlo_shapley", "MixedQuantLayer", "Supernet", "build_supernet"]
