import pytest

from qpolicy.budget import Budget
from qpolicy.errors import ConfigError, PolicyError
from qpolicy.layers import quantizable_layers
from qpolicy.testing import ThreeLayerNet


def test_parse_units_and_relative():
    assert Budget.parse("bitops=0.25") == Budget(bitops=0.25)
    assert Budget.parse("size=70KB") == Budget(size_bytes=70 * 1024)
    assert Budget.parse("bitops=1.2G") == Budget(bitops_abs=1.2e9)
    assert Budget.parse(["size=0.375", "abits=8"]) == Budget(size=0.375, abits=8)
    assert Budget.parse("size=0.5,wbits=3") == Budget(size=0.5, wbits=3)


@pytest.mark.parametrize("bad", ["bitops", "speed=1", "size=abc", "size=3parsecs", "abits=8KB", "size=0", ""])
def test_bad_budgets(bad):
    with pytest.raises(ConfigError):
        Budget.parse(bad)


def test_limits_by_hand():
    layers = quantizable_layers(ThreeLayerNet())  # 218 weights, 608 MACs, 112 input elements
    lim = Budget(size=0.5, bitops=0.25, wbits=4, abits=6).limits(layers)
    assert lim.size_bytes == 109 and lim.bitops == 608 * 64 * 0.25
    assert lim.weight_bit_sum == 4 * 218 and lim.act_bit_sum == 6 * 112
    assert Budget(size=0.5, size_bytes=100).limits(layers).size_bytes == 100  # the tighter one


def test_latency_budgets_need_a_table_and_resolve_against_its_float_latency():
    from tests.latency.test_table import _layers, table

    t = table(batches=(1, 64))
    assert Budget.parse("latency=0.7", latency_table=t, latency_batch=1) == Budget(latency=0.7, latency_table=t,
                                                                                  latency_batch=1)
    b = Budget.parse("latency=1500us,bitops=0.5", latency_table=t, latency_batch=64)
    assert b.latency_ms == 1.5 and b.latency_batch == 64
    assert str(b) == "bitops=0.5x,latency=1.5ms (ort-cpu, batch 64)"
    # relative: of the float model's measured latency at that batch size (3 ms x 64); the tighter limit holds
    assert Budget(latency=0.5, latency_table=t, latency_batch=64).limits(_layers()).latency_ms == 96.0
    assert Budget(latency=0.5, latency_ms=50, latency_table=t, latency_batch=64).limits(_layers()).latency_ms == 50
    assert b.to_dict()["latency_table"] == {"model": "toy", "target": "ort-cpu", "batch": 64,
                                            "created": "2026-12-06T00:00:00+00:00", "cpu": None}
    with pytest.raises(ConfigError, match="needs a latency table"):
        Budget.parse("latency=0.7")
    with pytest.raises(ConfigError, match="say which one"):
        Budget(latency=0.7, latency_table=t)
    with pytest.raises(ConfigError, match="unknown latency unit"):
        Budget.parse("latency=3min", latency_table=t)
    with pytest.raises(ConfigError, match="strategy arq prices size"):
        Budget(latency=0.7, latency_table=t, latency_batch=1).limits(_layers(), without_latency="arq")
    with pytest.raises(PolicyError, match="measured on toy"):
        Budget(latency=0.7, latency_table=t, latency_batch=1).limits(_layers(2))
