import pytest

from qpolicy.budget import Budget
from qpolicy.errors import ConfigError
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
