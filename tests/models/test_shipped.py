import json

import pytest
import torch

from qpolicy import models
from qpolicy._io import atomic_torch_save
from qpolicy.cli import main
from qpolicy.errors import WeightsError
from qpolicy.models import shipped
from qpolicy.testing import TinyConvNet


def _trained_file(path, seed):
    torch.manual_seed(seed)
    atomic_torch_save({"format": "qpolicy.trained_model", "version": 1, "model": "m", "kind": "distilled",
                       "recipe": {}, "config": {}, "history": [], "state_dict": TinyConvNet().state_dict()}, path)
    return path


def test_ship_writes_hashed_weights_and_a_manifest_that_verifies(tmp_path):
    folder = tmp_path / "shipped"
    assert shipped.manifest("m", folder) is None and shipped.weights_path("m", folder) is None
    first = _trained_file(tmp_path / "a.pt", 0)
    shipped.ship("m", first, test_top1=91.2, val_top1=91.5, command="qpolicy train ...", commit="abc", folder=folder)
    m = shipped.manifest("m", folder)
    digest = shipped.sha256_file(first)
    assert m["weights"] == f"m-{digest[:8]}.pt" and m["sha256"] == digest and m["test_top1"] == 91.2
    assert shipped.weights_path("m", folder).read_bytes() == first.read_bytes()
    # shipping new weights replaces the old file
    second = _trained_file(tmp_path / "b.pt", 1)
    shipped.ship("m", second, test_top1=90.0, val_top1=90.0, command="c", commit="d", folder=folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["m.json", shipped.manifest("m", folder)["weights"]])


def test_damaged_shipped_weights_are_refused_with_one_line(tmp_path):
    folder = tmp_path / "shipped"
    shipped.ship("m", _trained_file(tmp_path / "a.pt", 0), test_top1=1.0, val_top1=1.0, command="c", commit="d",
                 folder=folder)
    weights = folder / shipped.manifest("m", folder)["weights"]
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt: sha256"):
        shipped.weights_path("m", folder)
    weights.unlink()
    with pytest.raises(WeightsError, match="missing"):
        shipped.weights_path("m", folder)
    man = json.loads((folder / "m.json").read_text())
    for change, msg in (({"format": "x"}, "is not a qpolicy.shipped-weights v1"), ({"test_top1": "high"}, "test_top1"),
                        ({"model": "other"}, "names model 'other'")):
        (folder / "m.json").write_text(json.dumps({**man, **change}))
        with pytest.raises(WeightsError, match=msg):
            shipped.manifest("m", folder)
    (folder / "m.json").write_text("{")
    with pytest.raises(WeightsError, match="not valid JSON"):
        shipped.manifest("m", folder)


SHIPPED = sorted(p.stem for p in shipped.SHIPPED_DIR.glob("*.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_loads_its_verified_weights(name):
    s = models.spec(name)
    assert s.trained_here and not s.sees_validation
    m = shipped.manifest(name)
    assert m["commit"] and m["command"].startswith(f"qpolicy train --model {name}")
    model = models.load(name)
    state = torch.load(shipped.weights_path(name), weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.sees_validation and model.trained_weights.endswith(m["weights"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_scores_its_manifest_top1_on_the_test_split(name, shared_home):
    from qpolicy import data
    from qpolicy.evaluate import evaluate

    m = shipped.manifest(name)
    r = evaluate(models.load(name), data.loader("cifar10", "test", batch_size=1000))
    # other CPUs' float kernels may flip a near-tie image or two: 0.05 points is 5 of the 10,000 images
    assert r.total == 10_000 and abs(r.top1 - m["test_top1"]) <= 0.05


def test_models_lists_what_ships_with_its_test_top1_and_provenance(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        m = shipped.manifest(name)
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert m["weights"] in line and f"{m['test_top1']:.2f}" in line
        assert f"trained by `{m['command']}` at commit {m['commit'][:10]}" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["resnet20"]["shipped"] is None and rows["resnet20"]["reference_top1"] == 91.73
    for name in SHIPPED:
        assert rows[name]["pretrained"] and rows[name]["reference_top1"] == shipped.manifest(name)["test_top1"]
