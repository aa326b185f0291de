"""benchmarks/measured_damage.py's model: one step each way per free layer side, clamped, only measured steps."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for m in ("measured_damage", "search_quality", "_common"):
        sys.modules.pop(m, None)


def test_the_measured_table_holds_clamped_one_step_changes_and_forbids_the_rest(bench):
    import measured_damage

    from qpolicy.layers import quantizable_layers
    from qpolicy.testing import TinyConvNet

    layers = quantizable_layers(TinyConvNet())
    base = {"conv1": (8, 8), "dw": (4, 4), "pw": (4, 4), "fc": (8, 8)}
    effect = {("dw", 0, 3): 0.3, ("dw", 0, 5): -0.1, ("pw", 1, 3): -0.05, ("pw", 1, 5): 0.02}
    asked = []

    def score(assign):
        asked.append(dict(assign))
        changed = [(n, s, assign[n][s]) for n in assign for s in (0, 1) if assign[n][s] != base[n][s]]
        return 1.0 + sum(effect.get(k, 0.0) for k in changed), 90.0

    table, rows = measured_damage.measured_table(score, layers, base, act_fixed=False)
    assert len(rows) == 8  # dw and pw (the free layers), two sides, one step down and one up
    assert table.weight["dw"][3] == pytest.approx(0.3) and table.weight["dw"][5] == pytest.approx(-0.1)
    assert table.act["pw"][3] == 0.0  # a step down that lowered the loss: no gain from fewer bits
    assert table.act["pw"][5] == 0.0  # a step up that raised it: no harm from more bits
    assert table.weight["dw"][4] == 0.0 and table.weight["dw"][2] == measured_damage.FORBIDDEN
    assert table.weight["dw"][6] == measured_damage.FORBIDDEN and table.act["conv1"][4] == measured_damage.FORBIDDEN
    _, rows_fixed = measured_damage.measured_table(score, layers, base, act_fixed=True)
    assert {r["side"] for r in rows_fixed} == {"w"} and len(rows_fixed) == 4  # a size budget: weights only
