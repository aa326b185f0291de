"""qpolicy: find, apply and check mixed-precision quantization policies for PyTorch models."""

__version__ = "0.1.0"

from . import data, models  # noqa: E402
from .budget import Budget  # noqa: E402
from .costs import CostReport, policy_cost  # noqa: E402
from .errors import QPolicyError  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .layers import LayerInfo, quantizable_layers  # noqa: E402
from .policy import LayerBits, Policy, uniform_policy  # noqa: E402
from .qat import FinetuneConfig, FinetuneResult, finetune  # noqa: E402
from .quant import CalibConfig, apply_policy  # noqa: E402
from .search import SearchResult, search  # noqa: E402
from .sensitivity import SensitivityTable, analyze  # noqa: E402

__all__ = [
    "__version__",
    "data",
    "models",
    "CostReport",
    "policy_cost",
    "QPolicyError",
    "EvalResult",
    "evaluate",
    "LayerInfo",
    "quantizable_layers",
    "LayerBits",
    "Policy",
    "uniform_policy",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "CalibConfig",
    "apply_policy",
    "Budget",
    "SearchResult",
    "search",
    "SensitivityTable",
    "analyze",
]
