import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qpolicy import data
from qpolicy.cli import main
from qpolicy.datasets import cifar10
from qpolicy.policy import Policy
from qpolicy.testing import write_cifar_npz

TINY = ["--model", "resnet20", "--random-init", "--limit", "32", "--batch-size", "16", "--calib-batches", "1"]
TINY8 = ["--model", "resnet8", *TINY[2:]]  # 3x fewer MACs, where the test is about the mechanism


@pytest.fixture
def home(tmp_path, monkeypatch):
    write_cifar_npz(tmp_path / "datasets", train=128, test=64)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    data._CACHE.clear()
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_and_inspect(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "resnet20" in out and "mobilenetv2" in out
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and {m["name"] for m in json.loads(out)["models"]} >= {"resnet20", "resnet32"}
    code, out, _ = run(capsys, "inspect", "--model", "resnet20", "--random-init")
    assert code == 0 and "layer3.2.conv2" in out and "20 quantizable layers" in out and "40.55 M MACs" in out
    code, out, _ = run(capsys, "inspect", "--model", "qpolicy.testing:TinyConvNet", "--json")
    assert code == 0 and [li["name"] for li in json.loads(out)["layers"]] == ["conv1", "dw", "pw", "fc"]


def test_evaluate_float_uniform_json_and_saved_policy(capsys, home, tmp_path):
    code, out, _ = run(capsys, "evaluate", *TINY)
    assert code == 0 and "float" in out and "top-1" in out
    pol = tmp_path / "out" / "w4a8.json"
    code, out, _ = run(capsys, "evaluate", *TINY, "--uniform", "w4a8", "--json", "--save-policy", str(pol))
    obj = json.loads(out)
    assert code == 0 and obj["total"] == 32 and 0 <= obj["top1"] <= 100
    assert obj["cost"]["avg_act_bits"] == 8.0 and obj["cost"]["size_rel_w8a8"] == pytest.approx(0.502, abs=1e-3)
    p = Policy.load(pol)
    assert p.layers["layer1.0.conv1"].weight_bits == 4 and p.layers["conv1"].weight_bits == 8
    code, out2, _ = run(capsys, "evaluate", *TINY, "--policy", str(pol), "--json")
    assert code == 0 and json.loads(out2)["top1"] == obj["top1"]


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "resnet21"], "did you mean"),
    (["evaluate", *TINY, "--uniform", "w9a8"], "bad uniform spec"),
    (["evaluate", *TINY, "--uniform", "w4a4", "--calib", "best"], "weight_method must be one of"),
    (["evaluate", *TINY, "--uniform", "w4a4", "--first-last", "x"], "first_last"),
    (["evaluate", *TINY, "--policy", "/nonexistent.json"], "policy file not found"),
    (["inspect", "--model", "nomodule_xyz:factory"], "cannot import"),
    (["evaluate", *TINY, "--save-policy", "x.json"], "--save-policy needs a policy"),
    (["evaluate", *TINY, "--uniform", ""], "bad uniform spec ''"),  # was the float model, exit 0
    (["pareto", "t.json", "--bitops", "-1,0.2"], "goes as OPTION=VALUE"),  # was argparse's 13-line usage
    (["evaluate", *TINY, "--input-shape", "1,32,32"], "the model's input shape is 1x32x32"),
    (["evaluate", "--model", "resnet20", "--limit", "4"], "weights resnet20-12fca82f.th not found"),
])
def test_bad_input_one_line_exit_2(capsys, home, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and err.startswith("qpolicy: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_policy_for_another_model_and_corrupt_policy(capsys, home, tmp_path):
    pol = tmp_path / "p20.json"
    run(capsys, "evaluate", *TINY, "--uniform", "w4a4", "--save-policy", str(pol))
    code, _, err = run(capsys, "evaluate", "--model", "resnet32", "--random-init", "--limit", "8", "--policy", str(pol))
    assert code == 2 and "missing from the policy" in err and "made for 'resnet20'" in err
    pol.write_text(pol.read_text()[:200])
    code, _, err = run(capsys, "evaluate", *TINY, "--policy", str(pol))
    assert code == 2 and "not valid JSON" in err


def test_missing_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(cifar10, "URL", (tmp_path / "no.tar.gz").as_uri())
    data._CACHE.clear()
    code, _, err = run(capsys, "evaluate", *TINY)
    assert code == 2 and "CIFAR-10 test split not found" in err


def test_finetune_resume_and_refusal(capsys, home, tmp_path):
    out_dir = tmp_path / "run"
    args = ["finetune", *TINY, "--uniform", "w3a4", "--epochs", "1", "--train-limit", "64",
            "--train-batch-size", "16", "--out", str(out_dir), "--json"]
    code, out, _ = run(capsys, *args)
    res = json.loads(out)
    assert code == 0 and res["finetune"]["epochs"] == 1 and "top1" in res["before"] and "top1" in res["after"]
    assert {p.name for p in out_dir.iterdir()} == {"checkpoint.pt", "policy.json", "result.json"}
    code, _, err = run(capsys, *args)
    assert code == 2 and "--resume" in err
    code, out, _ = run(capsys, *args, "--resume")
    assert code == 0 and json.loads(out)["finetune"]["resumed_from"] == {"epoch": 1, "step": 0}


def test_real_subprocess(home):
    env = {**os.environ, "QPOLICY_HOME": str(home)}
    exe = Path(sys.executable).with_name("qpolicy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "qpolicy.cli"]
    ok = subprocess.run([*cmd, "evaluate", *TINY, "--uniform", "w4a4", "--json"], capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total"] == 32
    bad = subprocess.run([*cmd, "evaluate", "--model", "resnet20", "--uniform", "w1a8"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "bad uniform spec" in bad.stderr


def test_list(capsys):
    code, out, _ = run(capsys, "list", "metrics")
    assert code == 0 and {"qerror", "hessian"} <= set(out.split())
    code, out, _ = run(capsys, "list", "strategies", "--json")
    assert code == 0 and {"ilp", "uniform", "random"} <= set(json.loads(out)["strategies"])
    code, out, _ = run(capsys, "list", "targets", "--json")
    assert code == 0 and json.loads(out)["targets"]["ort-cpu"]["precisions"].keys() == {"float", "int8", "int8w8"}


def test_analyze_then_search_then_evaluate(capsys, home, tmp_path):
    table = tmp_path / "t.json"
    code, out, _ = run(capsys, "analyze", "--model", "resnet8", "--random-init", "--metric", "qerror",
                       "--bits", "2,4,8", "-o", str(table))
    assert code == 0 and "most sensitive" in out and table.exists()
    pol = tmp_path / "p.json"
    code, out, _ = run(capsys, "search", str(table), "--budget", "bitops=0.2", "-o", str(pol), "--json")
    res = json.loads(out)
    assert code == 0 and res["cost"]["bitops_rel_w8a8"] <= 0.2 + 1e-9
    p = Policy.load(pol)
    assert p.layers["conv1"].weight_bits == 8 and p.provenance["strategy"] == "ilp"
    assert p.provenance["metric"] == "qerror" and p.provenance["budget"] == {"bitops": 0.2}
    code, out, _ = run(capsys, "evaluate", *TINY8, "--policy", str(pol), "--json")
    assert code == 0 and json.loads(out)["cost"]["bitops_rel_w8a8"] == pytest.approx(res["cost"]["bitops_rel_w8a8"])
    code, out, _ = run(capsys, "search", "--model", "resnet8", "--random-init", "--bits", "2,4,8",
                       "--budget", "size=0.4", "--budget", "abits=8", "--strategy", "uniform", "--json")
    assert code == 0 and json.loads(out)["cost"]["avg_act_bits"] <= 8


@pytest.mark.parametrize("argv, message", [
    (["search", "--budget", "bitops=0.2"], "give a sensitivity table"),
    (["search", "missing.json", "--budget", "bitops=0.2"], "sensitivity table not found"),
    (["search", "x.json", "--budget", "speed=2"], "bad budget"),
    (["search", "x.json", "--budget", "bitops=0.2", "--strategy", "ipl"], "did you mean 'ilp'"),
    (["analyze", "--model", "resnet20", "--random-init", "--metric", "hesian", "-o", "t.json"], "did you mean"),
])
def test_search_bad_input(capsys, home, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_infeasible_budget_exit_2(capsys, home, tmp_path):
    table = tmp_path / "t.json"
    run(capsys, "analyze", "--model", "resnet8", "--random-init", "--bits", "2,8", "-o", str(table))
    code, _, err = run(capsys, "search", str(table), "--budget", "size=0.1")
    assert code == 2 and "smallest achievable size" in err


def test_pareto_cli(capsys, home, tmp_path):
    table = tmp_path / "t.json"
    run(capsys, "analyze", "--model", "resnet8", "--random-init", "--bits", "2,4,8", "-o", str(table))
    out_file = tmp_path / "front.json"
    code, out, _ = run(capsys, "pareto", str(table), "--bitops", "0.1:0.5:3", "-o", str(out_file), "--json")
    front = json.loads(out)
    assert code == 0 and front["key"] == "bitops" and len(front["points"]) + len(front["infeasible"]) == 3
    assert json.loads(out_file.read_text())["points"] == front["points"]
    code, out, _ = run(capsys, "pareto", str(table), "--bitops", "0.3", "--evaluate", "--random-init", "--limit",
                       "16", "--batch-size", "16", "--json")
    assert code == 0 and "top1" in json.loads(out)["points"][0]
    code, _, err = run(capsys, "pareto", str(table), "--bitops", "0.5:0.1:3")
    assert code == 2 and "bad sweep" in err


@pytest.mark.parametrize("strategy", ["dmpq", "smpq"])
def test_differentiable_search_cli(capsys, home, tmp_path, strategy):
    out = tmp_path / strategy
    argv = ["search", "--model", "resnet8", "--random-init", "--strategy", strategy, "--budget", "bitops=0.3",
            "--epochs", "1", "--train-limit", "64", "--train-batch-size", "16", "--shapley-samples", "1",
            "--shapley-images", "8", "--bits", "2,4,8", "-o", str(out), "--quiet"]
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "wrote" in text and (out / "policy.json").exists() and (out / "search.json").exists()
    pol = Policy.load(out / "policy.json")
    assert pol.provenance["method"] == strategy and pol.provenance["cost"]["bitops_rel_w8a8"] <= 0.3 + 1e-9
    code, _, err = run(capsys, *argv)  # the checkpoint is there: refuse to start over it
    assert code == 2 and "--resume" in err
    code, text, err = run(capsys, *argv, "--resume")
    assert code == 0 and "resumed from epoch 1 step 0" in text
    code, _, err = run(capsys, "search", "runs/t.json", "--strategy", strategy, "--budget", "bitops=0.3")
    assert code == 2 and "give --model" in err


def test_unknown_strategy_suggests_differentiable_ones(capsys, home):
    code, _, err = run(capsys, "search", "--model", "resnet20", "--strategy", "smqp", "--budget", "bitops=0.3")
    assert code == 2 and "did you mean 'smpq'" in err
    code, out, _ = run(capsys, "list", "strategies")
    assert "dmpq" in out.split() and "smpq" in out.split()


def test_export_cli_with_verification(capsys, home, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "r20.onnx"
    code, text, err = run(capsys, "export", *TINY, "--uniform", "w4a4", "-o", str(out), "--verify")
    assert code == 0, err
    assert out.exists() and "onnxruntime top-1" in text and "PyTorch top-1" in text
    code, text, _ = run(capsys, "export", *TINY, "--uniform", "w4a4", "-o", str(out), "--verify", "--json")
    obj = json.loads(text)
    assert obj["verify"]["total"] == 32 and obj["verify"]["top1_onnx"] == obj["verify"]["top1_torch"]
    code, _, err = run(capsys, "export", *TINY, "-o", str(out))  # a policy is required (argparse's check)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "one of the arguments --uniform --policy" in err


def test_export_cli_int8_kernels(capsys, home, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "r20_int8.onnx"
    code, text, err = run(capsys, "export", *TINY, "--uniform", "w8a8", "-o", str(out), "--int8-kernels", "--verify",
                          "--json")
    assert code == 0, err
    obj = json.loads(text)
    assert obj["export"]["ops"]["QLinearConv"] == 19 and obj["verify"]["total"] == 32
    code, _, err = run(capsys, "export", *TINY, "--uniform", "w4a4", "-o", str(out), "--int8-kernels")
    assert code == 2 and "neither:" in err and "Traceback" not in err
    # first and last layer in float, the rest on integer kernels
    code, text, err = run(capsys, "export", *TINY, "--uniform", "w8a8", "--first-last", "float", "-o", str(out),
                          "--int8-kernels", "--json")
    assert code == 0, err
    obj = json.loads(text)["export"]
    assert obj["ops"]["QLinearConv"] == 18 and obj["ops"]["Conv"] == 1 and obj["ops"]["Gemm"] == 1
    assert len(obj["float_layers"]) == 2


def test_validated_search_is_the_default_with_a_model(capsys, home, tmp_path):
    pol = tmp_path / "p.json"
    code, out, err = run(capsys, "search", "--model", "resnet8", "--random-init", "--bits", "2,4,8",
                         "--budget", "bitops=0.3", "--val-images", "8", "--refine-evaluations", "2",
                         "--metrics", "qerror", "-o", str(pol), "--json")
    assert code == 0, err
    res = json.loads(out)
    p = Policy.load(pol)
    assert res["strategy"] == "validated" and p.provenance["strategy"] == "validated"
    assert p.provenance["selection"]["split"] == "val" and p.provenance["selection"]["images"] == 8
    assert p.provenance["cost"]["bitops_rel_w8a8"] <= 0.3 + 1e-9
    code, _, err = run(capsys, "search", str(pol), "--strategy", "validated", "--budget", "bitops=0.3")
    assert code == 2 and "give --model" in err
    code, _, err = run(capsys, "search", "--model", "resnet8", "--random-init", "--budget", "bitops=0.3",
                       "--metrics", "fishr")
    assert code == 2 and "did you mean 'fisher'" in err


def test_profile_then_search_under_a_latency_budget(capsys, home, tmp_path):
    pytest.importorskip("onnxruntime")
    from qpolicy.latency import LatencyTable

    lat = tmp_path / "lat.json"
    args = ["profile", *TINY8[:3], "--batch", "1,2", "--repeats", "3", "--run-ms", "0.5", "--threads", "1", "-o",
            str(lat)]
    code, text, err = run(capsys, *args)
    assert code == 0, err
    assert "wrote" in text and "batch 2: all int8" in text
    table = json.loads(lat.read_text())
    assert table["format"] == "qpolicy.latency" and table["model"] == "resnet8" and table["batches"] == [1, 2]
    code, text, err = run(capsys, *args)  # the same request again: the file is the cache
    assert code == 0 and "reused" in text
    code, text, err = run(capsys, "search", *TINY8[:3], "--metric", "qerror", "--strategy", "ilp", "--bits", "4,8",
                          "--act-bits", "8", "--latency-table", str(lat), "--latency-batch", "2",
                          "--budget", "latency=10", "--json")
    assert code == 0, err
    prov = json.loads(text)["policy"]["provenance"]
    assert prov["budget"]["latency"] == 10 and prov["budget"]["latency_table"]["batch"] == 2
    assert prov["predicted_latency_ms"] > 0
    code, text, err = run(capsys, "search", *TINY8[:3], "--metric", "qerror", "--strategy", "ilp", "--bits", "4,8",
                          "--act-bits", "8", "--latency-table", str(lat), "--latency-batch", "1", "--float-layers",
                          "--budget", "latency=10")
    assert code == 0 and "predicted latency" in text, err
    # the default (validated) search under a latency budget: the budget holds on the table's prediction
    t = LatencyTable.load(lat)
    mid = (t.predict({n: (4, 8) for n in t.layers}, 1) + t.predict({n: (8, 8) for n in t.layers}, 1)) / 2
    code, text, err = run(capsys, "search", *TINY8[:3], "--bits", "4,8", "--act-bits", "8", "--val-images", "8",
                          "--refine-evaluations", "2", "--metrics", "qerror", "--latency-table", str(lat),
                          "--latency-batch", "1", "--budget", f"latency={mid:.6f}ms", "--json")
    assert code == 0, err
    prov = json.loads(text)["policy"]["provenance"]
    assert prov["strategy"] == "validated" and prov["predicted_latency_ms"] <= mid * (1 + 1e-6)
    assert all(c["cost"]["latency_ms"] <= mid * (1 + 1e-6) for c in prov["selection"]["measured"])
    code, text, err = run(capsys, "search", *TINY8[:3], "--bits", "4,8", "--act-bits", "8", "--val-images", "8",
                          "--refine-evaluations", "2", "--metrics", "qerror", "--latency-table", str(lat),
                          "--latency-batch", "1", "--budget", f"latency={mid:.6f}ms", "--float-layers", "--json")
    assert code == 0, err
    prov = json.loads(text)["policy"]["provenance"]
    assert prov["strategy"] == "validated" and prov["float_layers"] is True
    assert prov["predicted_latency_ms"] <= mid * (1 + 1e-6)
    # bad input: one line, exit 2, before any work
    for bad, match in ((["--budget", "latency=0.7"], "needs a latency table"),
                       (["--budget", "latency=0.0001ms", "--latency-table", str(lat), "--latency-batch", "1"],
                        "smallest achievable predicted latency"),
                       (["--budget", "latency=1", "--latency-table", str(lat)], "say which one"),
                       (["--budget", "latency=1", "--latency-table", str(tmp_path / "none.json")], "not found"),
                       (["--budget", "latency=1", "--latency-table", str(lat), "--latency-batch", "1",
                         "--strategy", "arq"], "strategy arq prices size"),
                       (["--budget", "latency=1", "--latency-table", str(lat), "--latency-batch", "1",
                         "--strategy", "te-lp", "--float-layers"], "solved by strategy ilp"),
                       (["--budget", "bitops=0.5", "--float-layers", "--strategy", "dmpq"],
                        "solved by strategy ilp")):
        code, _, err = run(capsys, "search", *TINY8[:3], "--metric", "qerror", "--act-bits", "8", *bad)
        assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # the policy's exported model timed end to end beside the table's prediction (qpolicy measure)
    m = tmp_path / "m.json"
    code, text, err = run(capsys, "measure", *TINY8[:3], "--uniform", "w8a8", "--first-last", "float",
                          "--latency-table", str(lat), "--batch", "2", "--repeats", "3", "--run-ms", "0.5",
                          "-o", str(m))
    assert code == 0, err
    assert "batch 2: measured" in text and "predicted" in text and "error" in text
    rec = json.loads(m.read_text())
    assert rec["format"] == "qpolicy.latency-measure" and list(rec["batches"]) == ["2"]
    assert rec["provenance"]["threads"] == 1  # the table's threads, unless told otherwise
    assert rec["batches"]["2"]["predicted_ms"] == t.predict(Policy.from_dict(rec["policy"]), 2)
    code, text, err = run(capsys, "measure", *TINY8[:3], "--uniform", "w8a8", "--repeats", "3", "--run-ms", "0.5",
                          "--threads", "1")  # no table: the measurement alone
    assert code == 0 and "batch 1: measured" in text and "predicted" not in text, err
    for bad, match in ((["--uniform", "w4a4"], "no kernel for"), (["--uniform", "w8a8", "--batch", "3"],
                                                                    "batch sizes [1, 2], not 3"),
                       (["--uniform", "w8a8", "--target", "ort-cuda"], "measured on ort-cpu, not on ort-cuda"),
                       (["--uniform", "w8a8", "--repeats", "2"], "repeats must be"),
                       (["--uniform", "w8a8", "--max-repeats", "5"], "max_repeats must be"),
                       (["--uniform", "w8a8", "--precision", "0"], "precision must be")):
        code, _, err = run(capsys, "measure", *TINY8[:3], "--latency-table", str(lat), *bad)
        assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_factory_models_initialization_follows_the_seed():
    """``--model module:factory`` without weights: its initialization is seeded by ``--seed`` like a zoo model's
    ``--random-init`` (the digits ViT's position embedding is drawn in its constructor)."""
    import argparse

    import torch

    from qpolicy.cli._common import _load_model

    def load(seed):
        args = argparse.Namespace(model="qpolicy.models.vit:tiny_vit", input_shape=None, model_arg=[], weights=None,
                                  random_init=True, seed=seed)
        return _load_model(args).state_dict()

    torch.manual_seed(123)  # the caller's generator state does not matter, and is left as it was
    before = torch.random.get_rng_state()
    a, b, c = load(0), load(0), load(1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pos"], c["pos"])
