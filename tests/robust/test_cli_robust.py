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
    # the stored certificates' alpha, the disagreement bound's and the fallback's: 1 - (alpha_f + 2 alpha)
    alpha = obj["settings"]["config"]["alpha"]
    assert obj["irs"]["fallback"] and obj["failure_probability"] == pytest.approx(2 * alpha + obj["irs"]["alpha"])
    code, out, err = run(capsys, "certify", *BASE, "--uniform", "w4a4", "--incremental", str(ref), "--n-p", "80",
                         "-o", str(tmp_path / "irs2"), "--quiet")
    assert code == 2 and "--record 80" in err


def test_finetune_rejects_a_negative_kurtosis_lambda(capsys, home, tmp_path):
    out = tmp_path / "ft"
    code, _, err = run(capsys, "finetune", *BASE, "--uniform", "w4a4", "--out", str(out), "--kurtosis-lambda", "-1")
    assert code == 2 and "kurtosis_lambda must be a finite number >= 0" in err and not out.exists()


# ---- attacks, defenses and the robustness suite ----------------------------------------------------------------
FAST_PGD = ["--param", "restarts=1", "--param", "max_iter=2"]


@pytest.mark.parametrize("args, msg", [
    (["--attack", "pgdd", "--eps", "0.1"], "did you mean 'pgd'"),
    (["--attack", "pgd", "--eps", "-0.1"], "eps must be >= 0"),
    (["--attack", "pgd", "--eps", "abc"], "--eps must be comma-separated numbers"),
    (["--attack", "pgd", "--eps", "0.1", "--param", "max_iter=2.5"], "must be int"),
    (["--attack", "pgd", "--eps", "0.1", "--param", "maxiter=2"], "did you mean 'max_iter'"),
    (["--attack", "pgd", "--eps", "0.1", "--defense", "squeez"], "did you mean 'squeeze'"),
    (["--attack", "pgd", "--eps", "0.1", "--defense", "pgd_at"], "train-based"),
    (["--attack", "pgd", "--eps", "0.1", "--transfer"], "give a policy"),
])
def test_attack_bad_input_one_line_exit_2_nothing_written(capsys, home, tmp_path, args, msg):
    out = tmp_path / "a"
    code, _, err = run(capsys, "attack", *BASE, "-o", str(out), *args)
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_train_resnet8_then_attack_it_and_resume(capsys, home, tmp_path):
    code, _, err = run(capsys, "attack", "--model", "resnet8", "--attack", "deepfool", "-o", str(tmp_path / "x"))
    assert code == 2 and "qpolicy train --model resnet8" in err
    code, out, err = run(capsys, "train", "--model", "resnet8", "--epochs", "1", "--train-batch-size", "32",
                         "--quiet")
    assert code == 0, err
    assert (home / "trained" / "resnet8" / "weights.pt").is_file()
    args = ["attack", "--model", "resnet8", "--uniform", "w8a16", "--first-last", "same", "--attack", "pgd",
            "--eps", "0.01,0.03", *FAST_PGD, "--images", "4", "--chunk", "2", "--calib-batches", "1",
            "--bn-batches", "1", "-o", str(tmp_path / "a"), "--quiet"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "eps 0.01:" in out and "eps 0.03:" in out
    res = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert len(res["runs"]["0.03"]["records"]) == 4
    assert {lb["act_bits"] for lb in res["settings"]["policy"]["layers"].values()} == {16}
    code, _, err = run(capsys, *args)
    assert code == 2 and "--resume" in err
    code, out, err = run(capsys, *args, "--resume")
    assert code == 0, err
    code, _, err = run(capsys, "report", str(tmp_path / "a"), "-o", str(tmp_path / "rep.html"))
    assert code == 0, err
    assert "0.01: " in (tmp_path / "rep.md").read_text()


def test_robustness_suite_serial(capsys, home, tmp_path):
    code, _, err = run(capsys, "train", "--model", "resnet8", "--epochs", "1", "--train-batch-size", "32", "--quiet")
    assert code == 0, err
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"models": ["resnet8"], "qnns": ["float", "int8"], "images": 4, "clean_images": 40,
                               "attacks": {"pgd": [0.002, 0.03], "deepfool": [None]},
                               "params": {"pgd": {"restarts": 1, "max_iter": 2}, "deepfool": {"max_iter": 5}},
                               "defenses": ["squeeze"], "defense_attacks": ["pgd"]}))
    out = tmp_path / "r"
    code, text, err = run(capsys, "robustness", str(cfg), "-o", str(out), "--quiet")
    assert code == 0, err
    doc = json.loads((out / "robustness.json").read_text())
    kinds = {(r["kind"], r["defense"], r["qnn"], r.get("attack"), r.get("mode")) for r in doc["results"]}
    assert ("attack", "none", "int8", "pgd", "transfer") in kinds and ("gradcos", "none", "int8", None, None) in kinds
    sq = [r for r in doc["results"] if r["defense"] == "squeeze" and r["kind"] == "attack"]
    assert sq and all("detection" in r["result"] for r in sq)
    assert [f["verdict"] for f in doc["findings"]][3] == "not measured"  # no train-based defense in this config
    code, _, err = run(capsys, "report", str(out), "-o", str(tmp_path / "rep.html"))
    assert code == 0, err
    md = (tmp_path / "rep.md").read_text()
    assert "robust accuracy against eps" in md and "Findings of the attack suite" in md and "resnet8 int8" in md
    code, text, _ = run(capsys, "robustness", str(cfg), "-o", str(out), "--quiet")
    assert code == 0 and f"({len(doc['results'])} resumed)" in text
    cfg.write_text(json.dumps({"models": ["resnet8"], "qnns": ["int9"]}))
    code, _, err = run(capsys, "robustness", str(cfg), "-o", str(tmp_path / "bad"))
    assert code == 2 and "did you mean 'int8'" in err and not (tmp_path / "bad").exists()
    code, _, err = run(capsys, "robustness", str(cfg), "-o", str(tmp_path / "bad"), "--workers", "0")
    assert code == 2 and "workers" in err


def test_certify_cli_on_ray_equals_serial(capsys, home, tmp_path, local_ray):
    recs = []
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"c{len(recs)}"
        code, text, err = run(capsys, "certify", *BASE, "--allow-plain-base", "--uniform", "w4a4",
                              "--calib-batches", "1", "--bn-batches", "1", "-o", str(out), *SMALL, *extra,
                              "--quiet")
        assert code == 0, err
        obj = json.loads((out / "certify.json").read_text())
        recs.append([{k: v for k, v in r.items() if k != "seconds"} for r in obj["records"]])
    assert recs[0] == recs[1] and len(recs[0]) == 2
