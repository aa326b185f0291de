import json
import math
import re

import pytest
import torch

from qpolicy import data, models
from qpolicy.cli import main
from qpolicy.errors import ConfigError
from qpolicy.models import shipped
from qpolicy.testing import TinyConvNet, write_cifar_npz
from qpolicy.train.distill import DistillConfig, kd_loss, kd_term
from tests.conftest import SHARED


def test_kd_loss_by_hand():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    T = 2.0
    p = torch.softmax(t / T, 1)[0]  # the teacher's soft labels
    q = torch.softmax(s / T, 1)[0]
    by_hand = T * T * float((p * (p.log() - q.log())).sum())
    assert float(kd_loss(s, t, T)) == pytest.approx(by_hand, rel=1e-6) and by_hand > 0.5
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-7)
    # batchmean: two copies of the row average to the same value
    assert float(kd_loss(s.repeat(2, 1), t.repeat(2, 1), T)) == pytest.approx(by_hand, rel=1e-6)


def test_kd_term_trains_the_student_only():
    teacher, student = TinyConvNet(), TinyConvNet()
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    term = kd_term(teacher, DistillConfig(temperature=3.0, weight=0.5))
    x = torch.randn(4, 3, 16, 16)
    logits = student(x)
    loss = term(student, x, torch.zeros(4, dtype=torch.long), logits)
    assert float(loss.detach()) == pytest.approx(0.5 * float(kd_loss(logits.detach(), teacher(x), 3.0)), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert float(student.fc.weight.grad.abs().sum()) > 0  # the soft term reaches the student's last layer
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("kw, msg", [({"weight": 1.5}, "in [0, 1]"), ({"temperature": 0}, "positive"),
                                     ({"weight": True}, "in [0, 1]")])
def test_distill_config_rejects(kw, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        DistillConfig(**kw)


def test_heldout_zoo_entries_say_how_they_are_made():
    for d in (20, 32):
        s = models.spec(f"resnet{d}-heldout")
        assert s.trained_here and not s.sees_validation and "outside the validation split" in s.trained_on
        assert f"--teacher resnet{d}" in s.recipe


@pytest.fixture
def small_home(tmp_path, monkeypatch):
    if SHARED is None:
        pytest.skip("the published ResNet-20 weights (the teacher) are not here")
    write_cifar_npz(tmp_path / "datasets", train=96, test=32)
    (tmp_path / "models").symlink_to(SHARED / "models")
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    monkeypatch.setenv("QPOLICY_TRAINED", str(tmp_path / "trained"))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")  # as before any held-out model shipped
    data._CACHE.clear()
    yield tmp_path
    data._CACHE.clear()


def test_cli_trains_the_heldout_resnet20_by_distillation(capsys, small_home):
    code = main(["search", "--model", "resnet20-heldout", "--budget", "bitops=0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "qpolicy train --model resnet20-heldout --teacher resnet20" in err
    for bad, msg in ((["--teacher", "resnet2O"], "did you mean"), (["--teacher", "resnet20", "--kd-weight", "2"],
                                                                     "in [0, 1]"),
                     (["--teacher", "mobilenetv2_cifar"], "has no weights to distill from")):
        code = main(["train", "--model", "resnet20-heldout", "--epochs", "1", *bad, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and err.count("\n") == 1, err
    args = ["train", "--model", "resnet20-heldout", "--teacher", "resnet20", "--epochs", "1", "--train-batch-size",
            "32", "--checkpoint-every", "0", "--json"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    w = torch.load(small_home / "trained" / "resnet20-heldout" / "weights.pt", weights_only=False)
    assert w["kind"] == "distilled" and w["recipe"]["teacher"] == "resnet20" and w["recipe"]["weight"] == 0.9
    assert math.isfinite(res["train"]["history"][-1]["loss"])
    m = models.load("resnet20-heldout")
    assert not m.sees_validation and m.trained_kind == "distilled"
