import numpy as np
import pytest

from qpolicy.errors import ConfigError
from qpolicy.supernet.predictor import AccuracyPredictor, PredictorConfig, kendall_tau


def test_predictor_ranks_held_out_encodings_of_an_additive_accuracy():
    rng = np.random.default_rng(0)
    sizes = [4, 4, 3, 3, 4]
    gain = [rng.normal(size=s) for s in sizes]
    enc = np.stack([rng.integers(0, s, size=80) for s in sizes], axis=1)
    acc = 70 + 3 * np.array([sum(g[k] for g, k in zip(gain, e, strict=True)) for e in enc])
    p = AccuracyPredictor(sizes, PredictorConfig(epochs=400)).fit(enc[:60], acc[:60])
    assert kendall_tau(p.predict(enc[60:]), acc[60:]) > 0.8
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None  # undefined for a constant ranking
    with pytest.raises(ConfigError):
        AccuracyPredictor(sizes).fit(enc[:1], acc[:1])
