import itertools

import pytest
import torch

from qpolicy.costs import policy_cost
from qpolicy.errors import ConfigError
from qpolicy.policy import LayerBits, Policy
from qpolicy.quant import CalibConfig
from qpolicy.supernet import build_supernet
from qpolicy.testing import TinyConvNet, random_loader

WB, AB = (2, 4, 8), (3, 8)
FAST = CalibConfig(weight_method="minmax", act_method="minmax")


def _net(first_last=None):
    return build_supernet(TinyConvNet(), weight_bits=WB, act_bits=AB, first_last=first_last,
                          calib=random_loader(64, batch_size=32, augment=True), calib_config=FAST)


def _policies(net, n=6):
    names = net.names
    combos = list(itertools.product(WB, AB))
    for k in range(n):
        yield Policy(layers={name: LayerBits(weight_bits=combos[(k + i) % len(combos)][0],
                                             act_bits=combos[(k * 3 + i) % len(combos)][1])
                             for i, name in enumerate(names)})


def test_build_leaves_model_untouched_and_finds_candidates():
    model = TinyConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = build_supernet(model, weight_bits=WB, act_bits=AB, first_last=8, calib=random_loader(64, batch_size=32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert net.names == ["conv1", "dw", "pw", "fc"]
    assert net.mixed("conv1").bits == {"weight": (8,), "act": (8,)} and net.mixed("dw").bits["weight"] == WB
    assert len(net.arch_parameters()) == 4  # dw and pw, both sides; the fixed first/last layer has no choice
    assert {p[0] for p in net.players()} == {"dw", "pw"} and len(net.players()) == 2 * (len(WB) + len(AB))
    with pytest.raises(ConfigError):
        build_supernet(model, weight_bits=(), act_bits=AB)


def test_one_hot_supernet_equals_the_plain_quantized_model():
    net = _net()
    x = next(iter(random_loader(32, batch_size=32, seed=3)))[0]
    with torch.no_grad():
        net.eval()
        for policy in _policies(net):
            net.set_policy_masks(policy)
            assert torch.equal(net(x), net.subnet(policy)(x))
        net.reset_masks()
        mixed = net(x)
    assert not any(torch.equal(mixed, net.subnet(p)(x)) for p in _policies(net, 2))


def test_expected_cost_equals_the_cost_model_on_one_hot_weights():
    net = _net()
    for policy in _policies(net):
        net.set_policy_masks(policy)
        exp = {k: float(v.detach()) for k, v in net.expected_cost().items()}
        rep = policy_cost(net.layers, policy)
        assert exp["size_bytes"] == pytest.approx(rep.size_bytes)
        assert exp["bitops"] == pytest.approx(rep.bitops)
        params = sum(li.params for li in net.layers)
        assert exp["weight_bit_sum"] / params == pytest.approx(rep.avg_weight_bits)
    net.reset_masks()
    cost = net.expected_cost()["bitops"]  # differentiable in alpha
    cost.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())


def test_masking_every_candidate_zeroes_that_side():
    net = _net()
    for b in AB:
        net.remove(("pw", "act", b))
    assert float(net.mixed("pw").probs("act").sum()) == 0.0
    x = next(iter(random_loader(8, batch_size=8)))[0]
    with torch.no_grad():
        out = net.eval()(x)
    assert torch.allclose(out, net.model.fc(net.model.pw.layer.bias.expand(8, -1)), atol=1e-6)


def test_temperature_sharpens_the_mixing_weights():
    net = _net()
    name, m = net.mixed_layers()[1]
    with torch.no_grad():
        m.alpha_weight.copy_(torch.linspace(0, 1, len(m.bits["weight"])))
    soft = net.probabilities()[name]["weight"]
    net.set_temperature(0.1)
    sharp = net.probabilities()[name]["weight"]
    assert max(sharp.values()) > max(soft.values()) > 1 / len(soft)
    assert torch.allclose(m.probs("weight"), torch.softmax(m.alpha_weight.detach() / 0.1, 0))
    with pytest.raises(ConfigError, match="temperature"):
        net.set_temperature(0)
