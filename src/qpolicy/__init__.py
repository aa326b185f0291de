"""qpolicy: find, apply and check mixed-precision quantization policies for PyTorch models.

The public names below are imported on first use (PEP 562), so ``import qpolicy`` and the torch-free parts
(``qpolicy.search``, ``qpolicy.costs``, ``qpolicy.budget``, ``qpolicy.policy``) do not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "data": (".data", None),
    "models": (".models", None),
    "Budget": (".budget", "Budget"),
    "CostReport": (".costs", "CostReport"),
    "policy_cost": (".costs", "policy_cost"),
    "QPolicyError": (".errors", "QPolicyError"),
    "EvalResult": (".evaluate", "EvalResult"),
    "evaluate": (".evaluate", "evaluate"),
    "LatencyTable": (".latency", "LatencyTable"),
    "ProfileConfig": (".latency", "ProfileConfig"),
    "profile_latency": (".latency", "profile_latency"),
    "LayerInfo": (".layers", "LayerInfo"),
    "quantizable_layers": (".layers", "quantizable_layers"),
    "LayerBits": (".policy", "LayerBits"),
    "Policy": (".policy", "Policy"),
    "uniform_policy": (".policy", "uniform_policy"),
    "FinetuneConfig": (".qat", "FinetuneConfig"),
    "FinetuneResult": (".qat", "FinetuneResult"),
    "finetune": (".qat", "finetune"),
    "CalibConfig": (".quant", "CalibConfig"),
    "apply_policy": (".quant", "apply_policy"),
    "SearchResult": (".search", "SearchResult"),
    "search": (".search", "search"),
    "SensitivityTable": (".sensitivity", "SensitivityTable"),
    "analyze": (".sensitivity", "analyze"),
    "SelectConfig": (".select", "SelectConfig"),
    "search_validated": (".select", "search_validated"),
    "preflight": (".preflight", "preflight"),
    "datasets": (".datasets", None),
    "Data": (".task", "Data"),
    "Task": (".task", "Task"),
    "evaluate_policy": (".pipeline", "evaluate_policy"),
    "write_evaluation": (".pipeline", "write_evaluation"),
    "render_report": (".report", "render_report"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'qpolicy' has no attribute {name!r}") from None
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# Names that are both a submodule and a public function (``qpolicy.search``, ``qpolicy.evaluate``): importing the
# submodule binds it on the package, which would hide the function. The function keeps the name, as it did when
# this package imported everything eagerly; the submodule is still in sys.modules for ``from qpolicy.search import``.
_SHADOWED = {"search", "evaluate", "preflight"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
