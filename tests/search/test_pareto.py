import pytest

from qpolicy.budget import Budget
from qpolicy.errors import ConfigError
from qpolicy.search import pareto
from qpolicy.search.pareto import parse_sweep

from .test_search import GOLDEN, GOLDEN_W, _table


def test_parse_sweep():
    assert parse_sweep("0.1:0.5:5") == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert parse_sweep("0.3,0.2") == [0.3, 0.2]
    assert parse_sweep("0.2:0.2:1") == [0.2]
    for bad in ("0.5:0.1:3", "a:b:c", "0.1:0.5:0", "x"):
        with pytest.raises(ConfigError):
            parse_sweep(bad)


def test_front_is_monotone_and_records_infeasible_points(tmp_path):
    front = pareto(_table(GOLDEN, GOLDEN_W), "size", [0.1, 0.3, 0.5, 0.75, 1.0], act_bits=8)
    assert front.infeasible == (0.1,)
    damages = [p["predicted_damage"] for p in front.points]
    assert damages == sorted(damages, reverse=True)  # more budget never predicts more damage
    assert all(p["cost"]["size_rel_w8a8"] <= p["value"] + 1e-9 for p in front.points)
    front.save(tmp_path / "f.json")
    assert (tmp_path / "f.json").read_text().startswith("{")


def test_fixed_limits_hold_at_every_point():
    front = pareto(_table(GOLDEN, GOLDEN_W), "size", [0.5, 1.0], fixed=Budget(abits=4))
    assert all(p["cost"]["avg_act_bits"] <= 4 + 1e-9 for p in front.points)
    with pytest.raises(ConfigError):
        pareto(_table(GOLDEN, GOLDEN_W), "speed", [1.0])
