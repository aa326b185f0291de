"""An accuracy predictor for supernet subnets: a small MLP on the policy encoding (QFA and OFA use one so that the
evolutionary search queries a model, not the supernet).

A policy is encoded as one candidate index per searched variable (a layer side with a choice); the MLP reads the
one-hot expansion of those indices and regresses standardized validation accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._validate import require_ints, require_numbers
from ..errors import ConfigError

__all__ = ["PredictorConfig", "AccuracyPredictor", "kendall_tau"]


@dataclass(frozen=True, kw_only=True)
class PredictorConfig:
    """MLP width, training epochs (full batch, Adam), learning rate, weight decay, seed."""

    hidden: int = 64
    epochs: int = 500
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("hidden", "epochs"), minimum=1)
        require_ints(self, ("seed",), minimum=0)
        require_numbers(self, ("lr",), positive=True)
        require_numbers(self, ("weight_decay",), positive=False)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings (1: the same order); None where it is undefined (a constant one)."""
    import math

    from scipy.stats import kendalltau

    tau = float(kendalltau(a, b).statistic)
    return tau if math.isfinite(tau) else None


class AccuracyPredictor:
    """Predicts accuracy from integer encodings (N, V) with ``sizes[v]`` candidates per variable."""

    def __init__(self, sizes: Sequence[int], config: PredictorConfig | None = None):
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise ConfigError("the predictor needs at least one variable")
        self.config = c = config or PredictorConfig()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.net = nn.Sequential(nn.Linear(sum(self.sizes), c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.hidden),
                                     nn.ReLU(), nn.Linear(c.hidden, 1))
        self.mean, self.std = 0.0, 1.0

    def features(self, enc: np.ndarray) -> torch.Tensor:
        enc = np.atleast_2d(np.asarray(enc, dtype=int))
        x = np.zeros((len(enc), sum(self.sizes)), dtype=np.float32)
        x[np.arange(len(enc))[:, None], enc + self.offsets] = 1.0
        return torch.from_numpy(x)

    def fit(self, enc: np.ndarray, acc: Sequence[float]) -> AccuracyPredictor:
        y = np.asarray(acc, dtype=np.float64)
        if len(y) < 2:
            raise ConfigError("the predictor needs at least two measured subnets")
        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        x, t = self.features(enc), torch.tensor((y - self.mean) / self.std, dtype=torch.float32)[:, None]
        opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for _ in range(self.config.epochs):
                loss = nn.functional.mse_loss(self.net(x), t)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    def predict(self, enc: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(self.features(enc))[:, 0].double().numpy() * self.std + self.mean
