"""benchmarks/fitted_damage.py: leave-one-out error and the pairwise terms (golden cases checked by hand)."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for m in ("fitted_damage", "search_quality", "_common"):
        sys.modules.pop(m, None)


def test_leave_one_out_error_of_a_constant_and_of_an_exact_line(bench):
    import fitted_damage

    X = np.array([[0.0] * 6, [1.0] * 6, [3.0] * 6])
    y = np.array([0.0, 1.0, 2.0])
    # the constant: each left-out y against the mean of the other two: 0 - 1.5, 1 - 1, 2 - 0.5
    assert fitted_damage.loo_rmse(X, y, ()) == pytest.approx(np.sqrt((1.5**2 + 0 + 1.5**2) / 3))
    # y = 2 W_1 exactly (the first column), fitted on 2 points: each left-out point predicted exactly
    y_line = 2 * X[:, 0]
    assert fitted_damage.loo_rmse(X, y_line, (0,)) == pytest.approx(0.0, abs=1e-9)
    # the metrics' sum is the four side columns added: 4 x, a line through the origin, so also exact
    assert fitted_damage.design(X, "sum")[:, 1].tolist() == [0.0, 4.0, 12.0]


def test_pairwise_terms_multiply_consecutive_layers_normalized_damages(bench):
    import fitted_damage

    from qpolicy.layers import LayerInfo
    from qpolicy.sensitivity import SensitivityTable

    layers = tuple(LayerInfo(name=n, kind="conv", params=100, macs=1000, in_shape=(10,), out_shape=(1,), order=i)
                   for i, n in enumerate("abc"))
    # damages at 2 bits: weights 1, 2, 3 and activations 1, 1, 2 (total 10); none at 8 bits
    t = SensitivityTable(metric="m", bits=(2, 8), layers=layers,
                         weight={"a": {2: 1.0, 8: 0.0}, "b": {2: 2.0, 8: 0.0}, "c": {2: 3.0, 8: 0.0}},
                         act={"a": {2: 1.0, 8: 0.0}, "b": {2: 1.0, 8: 0.0}, "c": {2: 2.0, 8: 0.0}})
    # every layer at W2A2: per layer 0.2, 0.3, 0.5 -> 0.2 x 0.3 + 0.3 x 0.5 = 0.21
    assert fitted_damage.pair_terms([t], {"a": (2, 2), "b": (2, 2), "c": (2, 2)}) == pytest.approx([0.21])
    # b at W8A8 breaks both pairs
    assert fitted_damage.pair_terms([t], {"a": (2, 2), "b": (8, 8), "c": (2, 2)}) == pytest.approx([0.0])
    # the columns of FEATURES: W, A of the table, then its pair term
    assert fitted_damage.features([t], {"a": (2, 8), "b": (8, 2), "c": (8, 8)}) == pytest.approx([0.1, 0.1, 0.01])
