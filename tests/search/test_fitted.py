"""qpolicy.search.fitted: a damage table fitted on measured policies (golden cases checked by hand)."""

import pytest

from qpolicy.layers import LayerInfo
from qpolicy.search.fitted import fit_table, side_features
from qpolicy.sensitivity import SensitivityTable

LAYERS = tuple(LayerInfo(name=n, kind="conv", params=100, macs=1000, in_shape=(10,), out_shape=(1,), order=i)
               for i, n in enumerate("ab"))
# total damage at the lowest bits (2): 1.0 + 3.0 + 0.5 + 0.5 = 5
T1 = SensitivityTable(metric="m1", bits=(2, 4), layers=LAYERS, weight={"a": {2: 1.0, 4: 0.0}, "b": {2: 3.0, 4: 0.0}},
                      act={"a": {2: 0.5, 4: 0.0}, "b": {2: 0.5, 4: 0.0}})
# total 1.0: only layer a's activations are damaged
T2 = SensitivityTable(metric="m2", bits=(2, 4), layers=LAYERS, weight={"a": {2: 0.0, 4: 0.0}, "b": {2: 0.0, 4: 0.0}},
                      act={"a": {2: 1.0, 4: 0.0}, "b": {2: 0.0, 4: 0.0}})
POLICIES = [{"a": (2, 4), "b": (4, 4)}, {"a": (4, 4), "b": (2, 4)}, {"a": (4, 2), "b": (4, 4)},
            {"a": (2, 2), "b": (4, 2)}, {"a": (4, 4), "b": (4, 4)}, {"a": (2, 2), "b": (2, 2)},
            {"a": (4, 4), "b": (4, 2)}]


def test_side_features_are_each_tables_normalized_weight_and_activation_damage():
    # a at W2A2: weight 1/5, act 0.5/5; b at W4A2: act 0.5/5; m2 sees a's activations only
    assert side_features([T1, T2], {"a": (2, 2), "b": (4, 2)}) == pytest.approx([0.2, 0.2, 0.0, 1.0])
    assert side_features([T1], {"a": (32, 32), "b": (4, 4)}) == [0.0, 0.0]  # float adds nothing


def test_the_fit_recovers_the_slopes_that_made_the_losses_and_scales_the_tables_by_them():
    # loss = 0.1 + 2 W_1 + 3 A_2: the weights of m1 and the activations of m2 matter, nothing else
    losses = [0.1 + 2 * f[0] + 3 * f[3] for f in (side_features([T1, T2], p) for p in POLICIES)]
    table, slopes = fit_table([T1, T2], POLICIES, losses)
    assert slopes == pytest.approx([2.0, 0.0, 0.0, 3.0], abs=1e-9)
    assert table.weight["a"][2] == pytest.approx(2 * 1.0 / 5) and table.weight["b"][2] == pytest.approx(2 * 3.0 / 5)
    assert table.act["a"][2] == pytest.approx(3 * 1.0 / 1) and table.act["b"][2] == pytest.approx(0.0, abs=1e-9)
    assert table.weight["a"][4] == 0.0 and table.metric == "fitted"


def test_no_table_from_too_few_measurements_or_from_losses_no_metric_explains():
    assert fit_table([T1, T2], POLICIES[:5], [1.0] * 5) is None  # 4 slopes need at least 6 measurements
    assert fit_table([T1], POLICIES, [1.0] * len(POLICIES)) is None  # every slope zero
    # a loss that falls as the damage grows: only negative slopes would fit, and they are not allowed
    assert fit_table([T1], POLICIES, [1.0 - side_features([T1], p)[0] for p in POLICIES]) is None
    assert fit_table([], POLICIES, [1.0] * len(POLICIES)) is None
    with pytest.raises(ValueError, match="7 assignments but 6 losses"):
        fit_table([T1], POLICIES, [1.0] * 6)
