"""The attack run and the robustness suite: resume, configs, QNN policies, the findings rules."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.robust import adversarial
from qpolicy.robust.adversarial import (
    RobustnessConfig,
    attack_model,
    findings,
    load_attack,
    load_robustness_config,
    qnn_policy,
)

pytest.importorskip("art")


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_attack_run_resumes_to_the_uninterrupted_result(shared_home, tmp_path, monkeypatch):
    model = SmallNet().eval()
    kw = dict(attack="pgd", eps=[0.004, 0.008], params={"restarts": 1, "max_iter": 3}, images=6, chunk=2, seed=1)
    full = attack_model(model, out_dir=tmp_path / "full", **kw)
    real = adversarial.run_attack
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # killed in the second eps, after one of its chunks
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(adversarial, "run_attack", dying)
    with pytest.raises(KeyboardInterrupt):
        attack_model(model, out_dir=tmp_path / "half", **kw)
    partial = load_attack(tmp_path / "half")
    assert len(partial["runs"]["0.004"]["records"]) == 6 and len(partial["runs"]["0.008"]["records"]) == 2
    monkeypatch.setattr(adversarial, "run_attack", real)
    with pytest.raises(ConfigError, match="exists"):
        attack_model(model, out_dir=tmp_path / "half", **kw)
    resumed = attack_model(model, out_dir=tmp_path / "half", resume=True, **kw)
    for key in ("0.004", "0.008"):
        assert resumed["runs"][key]["records"] == full["runs"][key]["records"]
    with pytest.raises(ConfigError, match="other settings"):
        attack_model(model, out_dir=tmp_path / "half", resume=True, **{**kw, "seed": 2})


def test_transfer_needs_a_policy(shared_home, tmp_path):
    with pytest.raises(ConfigError, match="transfer"):
        attack_model(SmallNet(), attack="pgd", eps=[0.01], transfer=True, out_dir=tmp_path / "t", images=2)


def test_qnn_policies():
    from qpolicy.models import load

    m = load("resnet20", pretrained=False)
    int16 = qnn_policy(m, "int16x8")
    assert {lb.act_bits for lb in int16.layers.values()} == {16}
    assert {lb.weight_bits for lb in int16.layers.values()} == {8}
    assert {lb.act_bits for lb in qnn_policy(m, "int8").layers.values()} == {8}
    assert qnn_policy(m, "float") is None
    with pytest.raises(ConfigError, match="did you mean 'int8'"):
        qnn_policy(m, "int9")
    with pytest.raises(ConfigError, match="sensitivity table"):
        qnn_policy(m, "mixed")


def test_sixteen_bit_activations_quantize():
    from qpolicy.models import load
    from qpolicy.policy import uniform_policy
    from qpolicy.quant import apply_policy

    m = load("resnet20", pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    calib = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    from qpolicy.quant.fake_quant import CalibConfig

    cfg = CalibConfig(bn_reestimate=False, weight_method="minmax", act_method="minmax")
    err16 = (apply_policy(m, uniform_policy(m, "w8a16", first_last="same"), calib=calib, config=cfg)(x) - m(x)).abs()
    err8 = (apply_policy(m, uniform_policy(m, "w8a8", first_last="same"), calib=calib, config=cfg)(x) - m(x)).abs()
    assert err16.mean() < err8.mean()  # 16-bit activations add less error than 8-bit ones


def _write(tmp_path, obj):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(obj))
    return p


@pytest.mark.parametrize("obj, match", [
    ({"attackz": {}}, "did you mean 'attacks'"),
    ({"attacks": {"pgdd": [0.1]}}, "did you mean 'pgd'"),
    ({"attacks": {"pgd": [-0.1]}}, "eps must be >= 0"),
    ({"attacks": {"pgd": []}}, "non-empty list"),
    ({"attacks": {"pgd": [0.1]}, "params": {"pgd": {"max_iter": "ten"}}}, "must be int"),
    ({"models": ["resnet7"]}, "did you mean"),
    ({"qnns": ["int9"]}, "did you mean 'int8'"),
    ({"defenses": ["squeez"]}, "did you mean 'squeeze'"),
    ({"images": 0}, "positive integer"),
    ({"attacks": {"pgd": [0.1]}, "defense_attacks": ["deepfool"]}, "not in attacks"),
])
def test_robustness_config_bad_input(tmp_path, obj, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        load_robustness_config(_write(tmp_path, obj))


def _res(**kw):
    return {"kind": "attack", "defense": "none", "mode": "direct", "model": "m", **kw}


def _summary(robust=0.0, success=100.0, l2=None, clean=90.0):
    return {"summary": {"robust_accuracy": robust, "success_rate": success, "clean_accuracy": clean,
                        "median_distortion": {"l0": None, "l1": None, "l2": l2, "linf": None}}}


def test_findings_rules_by_hand():
    cfg = RobustnessConfig(models=("resnet20",), qnns=("float", "int8"), attacks={"pgd": (0.0005, 0.002, 0.008),
                                                                                  "deepfool": (None,)},
                           defenses=("squeeze", "pgd_at"))
    m = "resnet20"
    results = [
        _res(model=m, qnn="float", attack="deepfool", eps=None, result=_summary(l2=0.1)),
        _res(model=m, qnn="int8", attack="deepfool", eps=None, result=_summary(l2=0.2)),
        {"kind": "gradcos", "model": m, "defense": "none", "qnn": "int8", "result": {"mean": 0.95, "median": 0.96}},
        # PGD takes 60 points at 0.002 and 85 at 0.008; squeezing recovers 30/60 = 0.5 and 1/85 of them
        *[_res(model=m, qnn=q, attack="pgd", eps=e, result=_summary(robust=r))
          for q in ("float", "int8") for e, r in ((0.0005, 85.0), (0.002, 30.0), (0.008, 5.0))],
        *[_res(model=m, defense="squeeze", qnn=q, attack="pgd", eps=e, result=_summary(robust=r))
          for q in ("float", "int8") for e, r in ((0.0005, 85.0), (0.002, 60.0), (0.008, 6.0))],
        _res(model=m, defense="pgd_at", qnn="int8", attack="pgd", eps=0.008, result=_summary(success=40.0)),
        _res(model=m, defense="pgd_at", qnn="int8", attack="pgd", eps=0.008, mode="transfer",
             result=_summary(success=30.0)),
    ]
    f = {x["finding"].split(" (")[0]: x for x in findings(results, cfg)}
    verdicts = [x["verdict"] for x in f.values()]
    assert verdicts == ["held", "not held", "held", "held"]
