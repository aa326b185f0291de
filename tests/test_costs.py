import pytest

from qpolicy.costs import policy_cost
from qpolicy.errors import PolicyMismatchError
from qpolicy.layers import quantizable_layers
from qpolicy.policy import LayerBits, Policy
from qpolicy.testing import ThreeLayerNet


def _policy(a, b, c):
    return Policy(layers={n: LayerBits(weight_bits=w, act_bits=x) for n, (w, x) in zip("abc", (a, b, c), strict=True)})


def test_three_layer_costs_by_hand():
    layers = quantizable_layers(ThreeLayerNet())
    # a: 18 weights, 288 MACs, input 1x4x4 = 16; b: 8 weights, 128 MACs, input 2x4x4 = 32; c: 192, 192, 64
    assert [(li.params, li.macs, li.act_elems) for li in layers] == [(18, 288, 16), (8, 128, 32), (192, 192, 64)]
    r = policy_cost(layers, _policy((8, 8), (4, 2), (2, None)))
    assert r.size_bytes == (18 * 8 + 8 * 4 + 192 * 2) / 8 == 70.0
    assert r.bitops == 288 * 64 + 128 * 4 * 2 + 192 * 2 * 32 == 31744
    assert r.avg_weight_bits == pytest.approx((18 * 8 + 8 * 4 + 192 * 2) / 218)
    assert r.avg_act_bits == pytest.approx((16 * 8 + 32 * 2 + 64 * 32) / 112)
    assert r.size_rel_w8a8 == pytest.approx(70.0 / 218)
    assert r.bitops_rel_w8a8 == pytest.approx(31744 / ((288 + 128 + 192) * 64))
    assert [lc.bitops for lc in r.layers] == [18432, 1024, 12288]


def test_w8a8_is_one_and_float_is_32_bits():
    layers = quantizable_layers(ThreeLayerNet())
    r8 = policy_cost(layers, _policy((8, 8), (8, 8), (8, 8)))
    assert r8.size_rel_w8a8 == 1.0 and r8.bitops_rel_w8a8 == 1.0
    rf = policy_cost(layers, _policy((None, None), (None, None), (None, None)))
    assert rf.size_rel_w8a8 == 4.0 and rf.bitops_rel_w8a8 == 16.0 and rf.avg_weight_bits == 32.0


def test_mismatched_policy():
    layers = quantizable_layers(ThreeLayerNet())
    with pytest.raises(PolicyMismatchError):
        policy_cost(layers, Policy(layers={"a": LayerBits(weight_bits=8, act_bits=8)}))


def test_to_dict_round_numbers():
    r = policy_cost(quantizable_layers(ThreeLayerNet()), _policy((8, 8), (8, 8), (8, 8)))
    d = r.to_dict()
    assert d["size_bytes"] == 218 and len(d["layers"]) == 3 and "layers" not in r.to_dict(per_layer=False)


def test_one_cost_formula_everywhere():
    # the policy cost, the search's choice cost, the budget's W8A8 reference and the supernet's expected cost are
    # the same arithmetic (qpolicy.costs.layer_cost)
    import torch

    from qpolicy.budget import Budget
    from qpolicy.costs import layer_cost, w8a8_cost
    from qpolicy.layers import LayerInfo
    from qpolicy.search.base import choice_cost

    li = LayerInfo(name="a", kind="conv", params=10, macs=100, in_shape=(3, 2), out_shape=(4,), order=0)
    assert layer_cost(li, 4, 2) == {"size_bytes": 5.0, "bitops": 800, "weight_bit_sum": 40, "act_bit_sum": 12}
    assert choice_cost(li, (4, 2)) == layer_cost(li, 4, 2)
    assert w8a8_cost([li]) == {"size_bytes": 10.0, "bitops": 6400.0, "weight_bit_sum": 80.0, "act_bit_sum": 48.0}
    lim = Budget(size=0.5, bitops=0.25).limits([li])
    assert lim.size_bytes == 5.0 and lim.bitops == 1600.0
    t = layer_cost(li, torch.tensor(4.0), torch.tensor(2.0))
    assert float(t["bitops"]) == 800.0
