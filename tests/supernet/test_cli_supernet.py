import json

import pytest

from qpolicy import data, models
from qpolicy.evaluate import evaluate
from qpolicy.policy import LayerBits, Policy, uniform_policy
from qpolicy.supernet.shared import load_qfa, subnet_model
from qpolicy.testing import write_cifar_npz
from tests.test_cli import run

BASE = ["--model", "resnet8", "--random-init"]  # ResNet-8: the mechanism at a third of ResNet-20's MACs


@pytest.fixture
def home(tmp_path, monkeypatch):
    write_cifar_npz(tmp_path / "datasets", train=160, test=40)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    data._CACHE.clear()
    return tmp_path


def test_supernet_train_eval_and_bad_input(capsys, home, tmp_path):
    out = tmp_path / "qfa"
    code, text, err = run(capsys, "supernet", "train", *BASE, "-o", str(out), "--epochs", "1", "--train-limit", "32",
                          "--train-batch-size", "16", "--weight-bits", "2,4,8", "--act-bits", "4,8",
                          "--random-subnets", "1", "--quiet")
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file()
    assert json.loads((out / "result.json").read_text())["format"] == "qpolicy.qfa"
    ev = tmp_path / "ev.json"
    code, text, err = run(capsys, "supernet", "eval", str(out), *BASE, "--uniform", "w4a4", "--limit", "16",
                          "-o", str(ev), "--json", "--quiet")
    obj = json.loads(text)
    assert code == 0, err
    assert obj["total"] == 16 and obj["cost"]["bitops_rel_w8a8"] < 0.3 and json.loads(ev.read_text()) == obj
    # the figure is the subnet's, as Python builds it from the run folder (weights, BatchNorm and BatchQuant
    # statistics re-estimated on the same calibration batches)
    net, config = load_qfa(models.load("resnet8", pretrained=False), out)
    policy = uniform_policy(models.load("resnet8", pretrained=False), "w4a4", first_last=8)
    calib = data.calib_loader("cifar10", batches=max(config.calib_batches, config.bn_batches))
    res = evaluate(subnet_model(net, policy, calib, config), data.loader("cifar10", "test", batch_size=256, limit=16))
    assert (obj["correct"], obj["top1"]) == (res.correct, res.top1)
    # bits the supernet was not trained for, a policy of another model, a corrupt checkpoint: one line, exit 2
    ev.unlink()
    code, _, err = run(capsys, "supernet", "eval", str(out), *BASE, "--uniform", "w3a4", "-o", str(ev))
    assert code == 2 and "not trained for" in err and err.count("\n") == 1 and not ev.exists()
    other = tmp_path / "other.json"
    Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in ("a", "b")}).save(other)
    code, _, err = run(capsys, "supernet", "eval", str(out), *BASE, "--policy", str(other), "-o", str(ev))
    assert code == 2 and "does not match" in err and not ev.exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"\x00" * 10)
    code, _, err = run(capsys, "supernet", "eval", str(tmp_path / "bad"), *BASE, "--uniform", "w4a4")
    assert code == 2 and "corrupt" in err
    code, _, err = run(capsys, "supernet", "train", *BASE, "-o", str(tmp_path / "q2"), "--weight-bits", "1,8")
    assert code == 2 and "weight_bits must be an integer in 2..8" in err and not (tmp_path / "q2").exists()


def test_qfa_search_on_a_trained_supernet(capsys, home, tmp_path):
    pytest.importorskip("pymoo")
    out = tmp_path / "qfa"
    code, _, err = run(capsys, "supernet", "train", *BASE, "-o", str(out), "--train-limit", "16",
                       "--train-batch-size", "16", "--weight-bits", "2,4,8", "--act-bits", "4,8", "--quiet")
    assert code == 0, err
    pol = tmp_path / "policy.json"
    code, text, err = run(capsys, "search", *BASE, "--strategy", "qfa", "--supernet", str(out), "--budget",
                          "bitops=0.2", "--samples", "12", "--qfa-val-images", "8", "--generations", "5",
                          "--population", "8", "-o", str(pol), "--json", "--quiet")
    assert code == 0, err
    obj = json.loads(text)
    p = Policy.load(pol)
    assert p.provenance["strategy"] == "qfa" and obj["cost"]["bitops_rel_w8a8"] <= 0.2 * (1 + 1e-9)
    assert p.provenance["qfa"]["measured_subnets"] == 12 and p.provenance["qfa"]["held_out"] == 3
    front = json.loads((tmp_path / "policy_front.json").read_text())
    assert front["format"] == "qpolicy.pareto" and any("top1" in pt for pt in front["points"])
    code, _, err = run(capsys, "report", str(tmp_path), "-o", str(tmp_path / "r.html"), "--quiet")
    assert code == 0, err


def test_qfa_search_on_ray_gives_the_serial_policy(capsys, home, tmp_path, local_ray):
    pytest.importorskip("pymoo")
    out = tmp_path / "qfa"
    code, _, err = run(capsys, "supernet", "train", *BASE, "-o", str(out), "--train-limit", "16",
                       "--train-batch-size", "16", "--weight-bits", "2,4,8", "--act-bits", "4,8", "--quiet")
    assert code == 0, err
    pols = []
    for extra in ([], ["--workers", "2"]):
        pol = tmp_path / f"policy{len(pols)}.json"
        code, text, err = run(capsys, "search", *BASE, "--strategy", "qfa", "--supernet", str(out), "--budget",
                              "bitops=0.2", "--samples", "8", "--qfa-val-images", "8", "--generations", "3",
                              "--population", "8", *extra, "-o", str(pol), "--json", "--quiet")
        assert code == 0, err
        pols.append(json.loads(text))
    assert pols[0]["policy"]["layers"] == pols[1]["policy"]["layers"]
    assert pols[0]["front"] == pols[1]["front"]
