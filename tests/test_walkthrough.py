"""README's walk-through, as a user runs it: their own model file, weights trained here and a folder of real images
(scikit-learn's handwritten digits), through `train`, `evaluate`, `search`, `export --verify` and `report`; then
each way the model and the data can disagree, as one line and exit 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from qpolicy.cli import main
from qpolicy.testing import write_digits

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mynet.py"


def run(capsys, *argv):
    code = main([*argv, "--quiet"] if argv[0] not in ("report",) else list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    shutil.copy(EXAMPLE, root / "mynet.py")
    write_digits(root / "digits")
    return root


def test_own_model_file_weights_and_image_folder(walk, capsys, monkeypatch):
    monkeypatch.chdir(walk)
    code, out, err = run(capsys, "train", "--model", "./mynet.py:factory", "--data", "imagefolder:digits",
                         "--out", "trained", "--epochs", "8", "--lr", "0.05", "--train-batch-size", "64")
    assert code == 0, err
    m = ["--model", "./mynet.py:factory", "--weights", "trained/weights.pt", "--data", "imagefolder:digits"]
    code, out, err = run(capsys, "evaluate", *m, "-o", "run/float.json")
    assert code == 0, err
    flt = json.loads((walk / "run" / "float.json").read_text())
    assert flt["total"] == 359 and flt["top1"] > 95 and flt["data"]["splits"].startswith("val: 0.1 of each class")
    macs = 16 * 64 * 9 * (1 + 16 + 16 + 1) + 32 * 64 * 16 + 32 * 10  # convs (stem, residual, depthwise), 1x1, head
    assert flt["cost"]["bitops"] == macs * 32 * 32  # float: priced at the data's real 1x8x8 input
    code, out, err = run(capsys, "evaluate", *m, "--uniform", "w4a8", "-o", "run/w4a8.json")
    assert code == 0 and json.loads((walk / "run" / "w4a8.json").read_text())["top1"] > flt["top1"] - 3
    # module:factory from the current folder, factory arguments, and the same weights
    code, out, err = run(capsys, "evaluate", "--model", "mynet:factory", "--model-arg", "width=16",
                         "--weights", "trained/weights.pt", "--data", "imagefolder:digits", "--json")
    assert code == 0 and json.loads(out)["top1"] == flt["top1"]
    code, out, err = run(capsys, "search", *m, "--budget", "bitops=0.1875", "--tables-dir", "run",
                         "-o", "run/policy.json")
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", *m, "--policy", "run/policy.json", "-o", "run/searched.json")
    searched = json.loads((walk / "run" / "searched.json").read_text())
    assert code == 0 and searched["cost"]["bitops"] <= 0.1875 * macs * 64 and searched["top1"] > flt["top1"] - 5
    code, out, err = run(capsys, "export", *m, "--policy", "run/policy.json", "-o", "run/policy.onnx", "--verify",
                         "--json")
    assert code == 0 and json.loads(out)["verify"]["agree"] >= 0.99
    code, out, err = run(capsys, "report", "run")
    assert code == 0 and "searched.json" in out and (walk / "run" / "report.html").is_file()


def test_mismatches_are_one_line_and_exit_2(walk, capsys, monkeypatch):
    monkeypatch.chdir(walk)
    digits = ["--data", "imagefolder:digits"]
    cases = [
        (["--model", "resnet20", "--random-init", *digits], "input shape is 3x32x32"),
        (["--model", "./mynet.py:factory", "--model-arg", "classes=4", *digits], "labels 0..9, the model outputs 4"),
        (["--model", "./mynet.py:factory", "--data", "imagefolder:digits", "--channels", "3"],
         "does not take the data's inputs"),
        (["--model", "./mynet.py:factory", "--weights", "nothere.pt", *digits], "no such file"),
        (["--model", "./mynet.py:factory", "--model-arg", "width", *digits], "KEY=VALUE"),
        (["--model", "./mynet.py:factory", "--model-arg", "depth=3", *digits], "does not take the arguments"),
        (["--model", "./nofile.py:factory", *digits], "not found"),
        (["--model", "./mynet.py:nope", *digits], "no callable 'nope'"),
        (["--model", "./mynet.py:factory", "--data", "imagefolder:nowhere"], "not found"),
        (["--model", "./mynet.py:factory", "--data", "cifar100"], "did you mean"),
        (["--model", "./mynet.py:factory", *digits, "--mean", "0.1,0.2"], "2 values; the images have 1"),
        (["--model", "./mynet.py:factory", *digits, "--std", "x"], "--std must be comma-separated numbers"),
    ]
    torch.save({"model_state_dict": {"stem.0.weight": torch.zeros(16, 1, 3, 3)}}, walk / "partial.pt")
    cases.append((["--model", "./mynet.py:factory", "--weights", "partial.pt", *digits], "keys"))
    (walk / "garbage.pt").write_bytes(b"not a checkpoint")
    cases.append((["--model", "./mynet.py:factory", "--weights", "garbage.pt", *digits], "cannot read weights"))
    for argv, words in cases:
        code, out, err = run(capsys, "evaluate", *argv, "--limit", "8")
        line = err.strip().splitlines()[-1]  # a warning may come first (no --weights given)
        assert code == 2 and words in line and "\n" not in line and "Traceback" not in line, (argv, err)
    # attacks and certificates still work in the default data set's pixel space: they refuse another one
    code, out, err = run(capsys, "attack", "--model", "./mynet.py:factory", *digits, "--attack", "fgsm", "-o", "a")
    assert code == 2 and "runs on the default data set (cifar10) only" in err and not (walk / "a").exists()
