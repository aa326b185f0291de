"""Bit-width supernets and the searches on them: ``mixed`` (a softmax-mixed supernet of every candidate width),
``differentiable`` (DMPQ, the argmax of the architecture parameters, and SMPQ, Monte Carlo Shapley values of each
candidate, from ``shapley``). Every strategy in qpolicy searches a mixed-precision policy; these are the ones that
train a supernet to do it."""

from .differentiable import METHODS, DifferentiableConfig, DifferentiableResult, search_differentiable
from .mixed import MixedQuantLayer, Supernet, build_supernet
from .shapley import ShapleyEstimate, exact_shapley, monte_carlo_shapley

__all__ = ["METHODS", "DifferentiableConfig", "DifferentiableResult", "search_differentiable", "ShapleyEstimate",
           "exact_shapley", "monte_carlo_shapley", "MixedQuantLayer", "Supernet", "build_supernet"]
