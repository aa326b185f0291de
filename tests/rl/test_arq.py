import json

import numpy as np
import pytest
import torch

from qpolicy import data, models
from qpolicy.budget import Budget
from qpolicy.datasets import source
from qpolicy.errors import CheckpointError, ConfigError
from qpolicy.quant import CalibConfig
from qpolicy.rl.arq import ARQConfig, arq_reward, search_arq
from qpolicy.rl.ddpg import DDPGConfig
from qpolicy.search import STRATEGIES
from qpolicy.search.base import ModelStrategy


@pytest.fixture
def home(tmp_path, monkeypatch):
    out = tmp_path / "datasets" / "cifar10"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("test", 20)):
        np.savez(out / f"{split}.npz", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 labels=np.zeros(n, dtype=np.int64), classes=np.array([f"c{i}" for i in range(10)]))
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    data._CACHE.clear()
    return tmp_path


def _model():
    torch.manual_seed(0)  # the same weights in every run
    m = models.load("resnet8", pretrained=False)  # the mechanism at a third of ResNet-20's MACs
    with torch.no_grad():
        m.linear.weight.mul_(0.01)
        m.linear.bias[0] = 1.0  # mostly class 0 under noise: the smoothed classifier certifies
    m.noise_sigma = 0.25
    return m


CFG = dict(val_images=3, reference_n=200, n_p=100, calib_batches=1, bn_batches=1, test_images=0,
           ddpg=DDPGConfig(hidden1=16, hidden2=16, warmup=1, batch_size=8))


def _run(out, episodes, resume=False, workers=None, **kw):
    calib = data.calib_loader("cifar10", batches=1, batch_size=16)
    return search_arq(_model(), Budget(bitops=0.3), calib=calib, out_dir=out, config=ARQConfig(episodes=episodes,
                      **{**CFG, **kw}), resume=resume, device="cpu", model_name="resnet8", workers=workers)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_arq_is_registered_as_a_model_strategy():
    assert isinstance(STRATEGIES.get("arq"), ModelStrategy) and STRATEGIES.get("arq").runner == "arq"


def test_arq_meets_the_budget_records_provenance_and_resumes_exactly(home, tmp_path):
    full = _run(tmp_path / "a", 4)
    assert full.cost.bitops_rel_w8a8 <= 0.3 * (1 + 1e-9)
    arq = full.policy.provenance["arq"]
    assert arq["sigma"] == 0.25 and "acc_q - acc_fp" in arq["reward"] and arq["episodes"] == 4
    assert json.loads((tmp_path / "a" / "policy.json").read_text())["provenance"]["strategy"] == "arq"
    _run(tmp_path / "b", 2)
    with pytest.raises(CheckpointError, match="exists"):
        _run(tmp_path / "b", 4)
    resumed = _run(tmp_path / "b", 4, resume=True)
    assert _strip(resumed.extra["history"]) == _strip(full.extra["history"])
    assert resumed.policy.layers == full.policy.layers


def test_arq_on_ray_equals_serial(home, tmp_path, local_ray):
    # the float reference, every episode's certificates and the test certificate go through run_many
    serial = _run(tmp_path / "a", 2, test_images=2)
    on_ray = _run(tmp_path / "b", 2, test_images=2, workers=2)
    assert _strip(on_ray.extra["history"]) == _strip(serial.extra["history"])
    assert on_ray.policy.layers == serial.policy.layers
    assert {k: v for k, v in on_ray.extra["test"].items() if k != "seconds"} == \
        {k: v for k, v in serial.extra["test"].items() if k != "seconds"}


def test_arq_reward_by_hand():
    # 80% vs 100% smoothed accuracy, ACR 0.5 vs 1.0: 0.5 * -0.2 + 0.5 * -0.5
    assert arq_reward(80.0, 0.5, 100.0, 1.0, 0.5) == pytest.approx(-0.35)
    assert arq_reward(80.0, 0.5, 100.0, 1.0, 1.0) == pytest.approx(-0.2)
    assert arq_reward(100.0, 1.0, 100.0, 1.0, 0.3) == 0.0


def test_arq_rewards_what_it_measured_and_tests_the_ptq_it_searched(home, tmp_path):
    res = _run(tmp_path / "a", 2, test_images=1, test_n=100)
    arq = res.policy.provenance["arq"]
    for h in res.extra["history"]:
        fp = arq["fp_val_clean_accuracy"], arq["fp_val_acr"]
        assert h["reward"] == pytest.approx(arq_reward(h["val_clean_accuracy"], h["val_acr"], *fp, 0.5))
    # the final policy is certified on test with the PTQ every policy was rewarded with
    test = json.loads((tmp_path / "a" / "test" / "certify.json").read_text())
    assert test["calib"] == arq["calib"] == CalibConfig(batches=1, bn_batches=1).to_dict()


def test_arq_rewards_on_the_select_half_and_certifies_on_the_report_half(home, tmp_path):
    res = _run(tmp_path / "a", 1, test_images=2, test_n=100, select_on="select")
    src = source("cifar10")
    select, report = ({int(i) for i in src.split(s)[1]} for s in ("select", "report"))
    ref = json.loads((tmp_path / "a" / "reference" / "certify.json").read_text())
    test = json.loads((tmp_path / "a" / "test" / "certify.json").read_text())
    assert ref["split"] == "select" and test["split"] == "report"
    assert {int(r["index"]) for r in ref["records"]} <= select and {int(r["index"]) for r in test["records"]} <= report
    assert res.policy.provenance["arq"]["select_on"] == "select"


def test_arq_refuses_an_unknown_selection_split():
    with pytest.raises(ConfigError, match="select_on must be one of val, select"):
        ARQConfig(select_on="test")
