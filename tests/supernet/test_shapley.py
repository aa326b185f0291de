import itertools

import pytest
import torch

from qpolicy.errors import ConfigError
from qpolicy.quant import CalibConfig
from qpolicy.supernet import build_supernet, exact_shapley, monte_carlo_shapley
from qpolicy.supernet.differentiable import _SubnetGame
from qpolicy.testing import TinyConvNet, random_loader


class SetGame:
    """A game given by a value function of the set of present players."""

    def __init__(self, players, value):
        self.players, self.fn = list(players), value
        self.present = set(self.players)

    def reset(self):
        self.present = set(self.players)

    def remove(self, p):
        self.present.discard(p)

    def value(self):
        return self.fn(frozenset(self.present))


# A 4-player toy checkable by hand: a and b are substitutes worth 0.5 together or alone, c adds 0.2,
# d adds 0.1 only when c is present, and e would be harmful: here 4 players a, b, c, d.
def _toy(s):
    return 0.5 * bool({"a", "b"} & s) + 0.2 * ("c" in s) + 0.1 * ({"c", "d"} <= s)


def test_exact_shapley_by_hand_and_efficiency():
    players = ["a", "b", "c", "d"]
    phi = exact_shapley(players, _toy)
    assert phi == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.05})
    assert sum(phi.values()) == pytest.approx(_toy(frozenset(players)) - _toy(frozenset()))


def test_monte_carlo_over_every_permutation_is_exact_and_efficient():
    players = ["a", "b", "c", "d"]
    perms = list(itertools.permutations(range(4)))
    est = monte_carlo_shapley(players, SetGame(players, _toy), samples=len(perms), permutations=perms)
    exact = exact_shapley(players, _toy)
    assert dict(zip(players, est.mean, strict=True)) == pytest.approx(exact)
    for contributions in est.contributions:  # every sample telescopes to v(all) - v(none)
        assert sum(contributions) == pytest.approx(0.8)
    rnd = monte_carlo_shapley(players, SetGame(players, _toy), samples=7, seed=1)
    assert sum(rnd.mean) == pytest.approx(0.8) and rnd.evaluations == 1 + 7 * 4 and rnd.truncated == 0


def test_truncation_cuts_permutations_after_collapse():
    players = ["a", "b", "c", "d"]
    est = monte_carlo_shapley(players, SetGame(players, _toy), samples=20, seed=0, truncation=0.0)
    assert est.truncated > 0 and est.evaluations < 1 + 20 * 4
    for c in est.contributions:  # the cut happens at value 0, so efficiency still holds
        assert sum(c) == pytest.approx(0.8)
    with pytest.raises(ConfigError):
        monte_carlo_shapley(players, SetGame(players, _toy), samples=0)


def trained_tiny(seed=2):
    """TinyConvNet fitted for a few hundred steps on the random data set, so its predictions vary."""
    model = TinyConvNet(seed=seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = random_loader(512, batch_size=64, seed=9, shuffle=True)
    for epoch in range(25):
        for x, y in data.batches(epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def test_planted_useless_candidate_ranks_last():
    # On a tiny supernet scored by top-1, one candidate is broken on purpose: pw's 8-bit weight quantizer gets a
    # step so large that every weight rounds to 0. Its Shapley value must be the lowest.
    model = trained_tiny()
    data = random_loader(256, batch_size=128, seed=5)
    net = build_supernet(model, weight_bits=(2, 4, 8), act_bits=(4, 8), first_last=8,
                         calib=random_loader(64, batch_size=32), calib_config=CalibConfig(weight_method="minmax",
                                                                                          act_method="minmax"))
    net.eval()
    with torch.no_grad():
        net.mixed("pw").weight_quants[2].scale.fill_(1e6)
        images = list(data)
        assert 0.6 < _SubnetGame(net, images).value()  # the game starts well above chance (0.25)
    players = net.players()
    est = monte_carlo_shapley(players, _SubnetGame(net, images), samples=30, seed=0)
    ranked = sorted(zip(players, est.mean, strict=True), key=lambda t: t[1])
    assert ranked[0][0] == ("pw", "weight", 8), ranked
    assert all(m.keep[s] == [True] * len(m.bits[s]) for _, m in net.mixed_layers() for s in m.keep)  # reset


def test_permutations_on_ray_equal_serial_on_a_supernet(local_ray):
    # each Ray task plays a pickled copy of the supernet game; the permutations are drawn in the caller
    model = trained_tiny()
    net = build_supernet(model, weight_bits=(2, 4, 8), act_bits=(4, 8), first_last=8,
                         calib=random_loader(64, batch_size=32), calib_config=CalibConfig())
    net.eval()
    images = list(random_loader(128, batch_size=64, seed=5))
    players = net.players()
    serial = monte_carlo_shapley(players, _SubnetGame(net, images), samples=6, seed=3, truncation=0.3)
    on_ray = monte_carlo_shapley(players, _SubnetGame(net, images), samples=6, seed=3, truncation=0.3, workers=2)
    assert on_ray.contributions == serial.contributions and on_ray.mean == serial.mean
    assert (on_ray.evaluations, on_ray.truncated) == (serial.evaluations, serial.truncated)
    assert all(m.keep[s] == [True] * len(m.bits[s]) for _, m in net.mixed_layers() for s in m.keep)  # reset
