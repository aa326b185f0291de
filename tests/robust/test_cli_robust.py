import json

import pytest

from qpolicy import data
from qpolicy.policy import LayerBits, Policy
from qpolicy.testing import write_cifar_npz
from tests.test_cli import run

BASE = ["--model", "resnet20", "--random-init"]
SMALL = ["--images", "2", "--n0", "10", "--n", "100", "--batch", "100"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    write_cifar_npz(tmp_path / "datasets", train=160, test=40)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    monkeypatch.setenv("QPOLICY_TRAINED", str(tmp_path / "trained"))
    data._CACHE.clear()
    return tmp_path


@pytest.mark.parametrize("args, msg", [
    (["--sigma", "0"], "sigma must be a positive number"),
    (["--sigma", "-0.5"], "sigma must be a positive number"),
    (["--n0", "0"], "n0 must be a positive integer"),
    (["--n", "0"], "must be a positive integer"),
    (["--n0", "200", "--n", "100"], "must not exceed n"),
    (["--alpha", "0"], "alpha must be a probability"),
    (["--alpha", "1.5"], "alpha must be a probability"),
])
def test_certify_bad_settings_one_line_exit_2_nothing_written(capsys, home, tmp_path, args, msg):
    out = tmp_path / "c"
    code, _, err = run(capsys, "certify", *BASE, "--allow-plain-base", "-o", str(out), *args)
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_certify_needs_a_noise_trained_base_and_a_policy_of_this_model(capsys, home, tmp_path):
    out = tmp_path / "c"
    code, _, err = run(capsys, "certify", *BASE, "-o", str(out), *SMALL)
    assert code == 2 and "no noise-trained resnet20 for sigma=0.25" in err and "train-noise" in err
    other = tmp_path / "other.json"
    Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in ("a", "b")}).save(other)
    code, _, err = run(capsys, "certify", *BASE, "--allow-plain-base", "--policy", str(other), "-o", str(out), *SMALL)
    assert code == 2 and "does not match" in err and not out.exists()


def test_train_noise_then_certify_float_quantized_and_incremental(capsys, home, tmp_path):
    code, out, err = run(capsys, "train-noise", *BASE, "--sigma", "0.5", "--epochs", "1", "--train-limit", "64",
                         "--train-batch-size", "32", "--quiet")
    weights = home / "trained" / "resnet20-noise0.5" / "weights.pt"
    assert code == 0 and weights.is_file(), err
    ref = tmp_path / "ref"
    code, out, err = run(capsys, "certify", *BASE, "--sigma", "0.5", "-o", str(ref), *SMALL, "--record", "50",
                         "--json", "--quiet")
    obj = json.loads(out)
    assert code == 0, err
    assert obj["base"]["noise_sigma"] == 0.5 and obj["summary"]["images"] == 2 and obj["complete"]
    assert obj["settings"]["indices"] == [0, 20]  # every 20th of 40 test images
    code, out, err = run(capsys, "certify", *BASE, "--sigma", "0.5", "-o", str(ref), *SMALL, "--record", "50",
                         "--quiet")
    assert code == 2 and "exists" in err
    code, out, err = run(capsys, "certify", *BASE, "--uniform", "w4a4", "--calib-batches", "1", "--bn-batches", "1",
                         "--incremental", str(ref), "--n-p", "50", "-o", str(tmp_path / "irs"), "--json", "--quiet")
    obj = json.loads(out)
    assert code == 0, err
    assert obj["method"] == "irs" and obj["summary"]["images"] == 2 and obj["cost"]["bitops_rel_w8a8"] < 0.3
    code, out, err = run(capsys, "certify", *BASE, "--uniform", "w4a4", "--incremental", str(ref), "--n-p", "80",
                         "-o", str(tmp_path / "irs2"), "--quiet")
    assert code == 2 and "--record 80" in err


def test_finetune_rejects_a_negative_kurtosis_lambda(capsys, home, tmp_path):
    out = tmp_path / "ft"
    code, _, err = run(capsys, "finetune", *BASE, "--uniform", "w4a4", "--out", str(out), "--kurtosis-lambda", "-1")
    assert code == 2 and "kurtosis_lambda must be a finite number >= 0" in err and not out.exists()
