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
