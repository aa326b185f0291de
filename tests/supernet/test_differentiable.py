import json

import pytest
import torch

import qpolicy.supernet.differentiable as diff_search
from qpolicy.budget import Budget
from qpolicy.costs import policy_cost
from qpolicy.errors import CheckpointError, ConfigError, InfeasibleBudgetError, UnknownNameError
from qpolicy.policy import Policy
from qpolicy.supernet import DifferentiableConfig, search_differentiable
from qpolicy.testing import random_loader

from .test_shapley import trained_tiny

CFG = dict(weight_bits=(2, 4, 8), act_bits=(4, 8), epochs=1, batch_size=32, shapley_samples=2, shapley_images=32,
           checkpoint_every=1)


def _run(method, budget, tmp_path=None, workers=None, **kw):
    cfg = DifferentiableConfig(**{**CFG, **kw})
    return search_differentiable(trained_tiny(), budget, method=method,
                                 train=random_loader(384, batch_size=32, augment=True),
                                 calib=random_loader(64, batch_size=32), config=cfg, out_dir=tmp_path, device="cpu",
                                 model_name="tiny", workers=workers)


@pytest.mark.parametrize("method", ["dmpq", "smpq"])
def test_search_writes_a_policy_within_budget(method, tmp_path):
    budget = Budget(bitops=0.75)
    res = _run(method, budget, tmp_path)
    layers = res.supernet.layers
    cost = policy_cost(layers, res.policy)
    assert cost.bitops_rel_w8a8 <= 0.75 + 1e-9
    assert res.policy["conv1"].short() == "w8a8" and res.policy["fc"].short() == "w8a8"
    saved = Policy.load(tmp_path / "policy.json")
    assert saved.layers == res.policy.layers and saved.provenance["method"] == method
    info = json.loads((tmp_path / "search.json").read_text())
    assert set(info["alphas"]) == {"conv1", "dw", "pw", "fc"} and len(info["history"]) == 1
    assert (len(info["shapley"]) == 1) == (method == "smpq")
    if method == "smpq":
        rnd = info["shapley"][0]
        assert len(rnd["players"]) == 2 * (3 + 2) and rnd["samples"] == 2
    # a budget the argmax policy does not meet is still met exactly
    tight = Budget(bitops=max(0.6, policy_cost(layers, res.argmax_policy).bitops_rel_w8a8 * 0.8))
    res2 = _run(method, tight)
    assert policy_cost(layers, res2.policy).bitops_rel_w8a8 <= tight.bitops * (1 + 1e-9)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    full = _run("smpq", Budget(bitops=0.75), tmp_path / "full", shapley_rounds=2)
    calls = {"n": 0}
    real = diff_search._complexity

    def dying(net, limits):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed inside step 4, after the checkpoint of step 3
        return real(net, limits)

    monkeypatch.setattr(diff_search, "_complexity", dying)
    with pytest.raises(KeyboardInterrupt):
        _run("smpq", Budget(bitops=0.75), tmp_path / "killed", shapley_rounds=2)
    monkeypatch.setattr(diff_search, "_complexity", real)
    with pytest.raises(CheckpointError, match="exists"):
        _run("smpq", Budget(bitops=0.75), tmp_path / "killed", shapley_rounds=2)
    with pytest.raises(CheckpointError, match="other settings"):
        cfg = DifferentiableConfig(**{**CFG, "shapley_rounds": 2, "epochs": 2})
        search_differentiable(trained_tiny(), Budget(bitops=0.75), method="smpq",
                              train=random_loader(384, batch_size=32), calib=random_loader(64, batch_size=32),
                              config=cfg, out_dir=tmp_path / "killed", resume=True)
    resumed = search_differentiable(trained_tiny(), Budget(bitops=0.75), method="smpq",
                                    train=random_loader(384, batch_size=32, augment=True),
                                    calib=random_loader(64, batch_size=32),
                                    config=DifferentiableConfig(**{**CFG, "shapley_rounds": 2}),
                                    out_dir=tmp_path / "killed", resume=True, device="cpu", model_name="tiny")
    assert resumed.resumed_from == {"epoch": 0, "step": 3}
    for n, sides in full.alphas.items():
        for s, vals in sides.items():
            assert vals == pytest.approx(resumed.alphas[n][s], abs=1e-5), (n, s)
    assert resumed.policy.layers == full.policy.layers
    assert [r["mean"] for r in resumed.shapley] == [r["mean"] for r in full.shapley]


def test_bad_settings_are_clear():
    with pytest.raises(InfeasibleBudgetError, match="smallest achievable BitOPs"):
        _run("dmpq", Budget(bitops=0.3))
    with pytest.raises(UnknownNameError, match="did you mean 'smpq'"):
        _run("smpqq", Budget(bitops=0.75))
    with pytest.raises(ConfigError, match="truncation"):
        DifferentiableConfig(truncation=1.5)
    with pytest.raises(ConfigError, match="epochs"):
        DifferentiableConfig(epochs=0)
    with pytest.raises(ConfigError, match="ArrayLoader"):
        search_differentiable(trained_tiny(), Budget(bitops=0.75), train=[(torch.zeros(2, 3, 8, 8), torch.zeros(2))],
                   calib=random_loader(64, batch_size=32))


def test_temperature_anneals_from_start_to_end():
    cfg = DifferentiableConfig(temperature=2.0, final_temperature=0.1)
    assert diff_search._temperature(cfg, 0, 11) == pytest.approx(2.0)
    assert diff_search._temperature(cfg, 5, 11) == pytest.approx((2.0 * 0.1) ** 0.5)  # geometric mid-point
    assert diff_search._temperature(cfg, 10, 11) == pytest.approx(0.1)
    assert diff_search._temperature(DifferentiableConfig(temperature=1.0, final_temperature=1.0), 3, 11) == 1.0
    with pytest.raises(ConfigError, match="final_temperature"):
        DifferentiableConfig(final_temperature=0)


def test_each_step_updates_only_its_own_parameters(monkeypatch):
    """The weight step computes no alpha gradient and the alpha step no weight gradient; the search ends at the
    final temperature with every parameter trainable again."""
    nets, seen = [], []
    build = diff_search.build_supernet
    monkeypatch.setattr(diff_search, "build_supernet", lambda *a, **k: nets.append(build(*a, **k)) or nets[-1])
    real = torch.Tensor.backward

    def spy(self, *a, **k):
        if not nets:  # trained_tiny's own pre-training
            return real(self, *a, **k)
        net = nets[-1]
        seen.append((any(p.requires_grad for p in net.weight_parameters()),
                     any(p.requires_grad for p in net.arch_parameters())))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    res = _run("dmpq", Budget(bitops=0.75), final_temperature=0.25)
    steps = len(seen) // 2
    assert steps >= 5 and seen == [(True, False), (False, True)] * steps
    net = res.supernet
    assert net.temperature == 0.25 and all(p.requires_grad for p in net.parameters())


def test_smpq_on_ray_gives_the_serial_policy(local_ray, tmp_path):
    budget = Budget(bitops=0.75)
    serial = _run("smpq", budget)
    on_ray = _run("smpq", budget, workers=2)
    assert on_ray.policy.layers == serial.policy.layers
    assert [r["mean"] for r in on_ray.shapley] == [r["mean"] for r in serial.shapley]
