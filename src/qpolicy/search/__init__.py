"""Policy search strategies (torch-free): pure functions of sensitivity scores, layer costs and a budget."""

from . import baselines, ilp, te_lp  # noqa: F401  (register the strategies)
from .base import STRATEGIES, Problem, SearchResult, search
from .pareto import ParetoFront, pareto

__all__ = ["STRATEGIES", "Problem", "SearchResult", "search", "ParetoFront", "pareto"]
