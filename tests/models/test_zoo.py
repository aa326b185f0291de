import hashlib
import shutil

import pytest
import torch

from qpolicy import models
from qpolicy.errors import ConfigError, UnknownNameError, WeightsError
from qpolicy.layers import quantizable_layers


def test_registry_lists_the_zoo():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "mobilenetv2_cifar", "mobilenetv2"} <= set(models.names())
    with pytest.raises(UnknownNameError, match="did you mean 'resnet20'"):
        models.spec("resnet2O")


# Published totals (all parameters, BN included): ResNet-20 0.27 M, ResNet-32 0.46 M, ResNet-56 0.85 M.
@pytest.mark.parametrize("name, total_params, macs_m, n_layers", [
    ("resnet20", 269_722, 40.55, 20),
    ("resnet32", 464_154, 68.86, 32),
    ("resnet56", 853_018, 125.49, 56),
])
def test_resnet_sizes(name, total_params, macs_m, n_layers):
    m = models.load(name, pretrained=False)
    layers = quantizable_layers(m)
    assert len(layers) == n_layers
    assert sum(p.numel() for p in m.parameters()) == total_params
    assert sum(li.macs for li in layers) / 1e6 == pytest.approx(macs_m, abs=0.01)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenets():
    small = models.load("mobilenetv2_cifar")
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    big = models.load("mobilenetv2")
    layers = quantizable_layers(big)
    assert len(layers) == 53 and sum(p.numel() for p in big.parameters()) == 3_504_872  # as torchvision's
    assert sum(li.macs for li in layers) / 1e6 == pytest.approx(300.8, abs=0.5)  # the paper's 300 M MACs
    assert sum(li.kind == "depthwise" for li in layers) == 17


def test_option_a_shortcut_zero_pads_channels():
    block = models.load("resnet20", pretrained=False).layer2[0]
    x = torch.randn(1, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_pretrained_weights_resolve_verify_and_load(shared_home):
    m = models.load("resnet20")
    assert m.zoo_name == "resnet20" and m.input_shape == (3, 32, 32) and not m.training
    path = shared_home / "models" / "resnet20-12fca82f.th"
    ref = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(m.conv1.weight, ref["module.conv1.weight"])


def test_weights_dir_flag_wins_and_hash_is_checked(shared_home, tmp_path):
    good = shared_home / "models" / "resnet20-12fca82f.th"
    bad_dir = tmp_path / "w"
    bad_dir.mkdir()
    data = bytearray(good.read_bytes())
    data[-10] ^= 0xFF
    (bad_dir / good.name).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt: sha256"):
        models.load("resnet20", weights_dir=bad_dir)


def test_missing_weights_download_from_url_and_failures(tmp_path, monkeypatch, shared_home):
    src = shared_home / "models" / "resnet20-12fca82f.th"
    spec = models.spec("resnet20")
    local = models.ModelSpec(name="r20", factory=spec.factory, input_shape=spec.input_shape, dataset="cifar10",
                             weights=spec.weights, url=src.resolve().as_uri())
    dest = tmp_path / "cache"
    path = models.resolve_weights(local, dest)
    assert path == dest / spec.weights
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("12fca82f")
    nowhere = models.ModelSpec(name="r20", factory=spec.factory, input_shape=spec.input_shape, dataset="cifar10",
                               weights=spec.weights, url=(tmp_path / "missing.th").as_uri())
    with pytest.raises(WeightsError, match="not found in .*cannot download"):
        models.resolve_weights(nowhere, tmp_path / "other")
    assert not any((tmp_path / "other").glob("*"))  # nothing half-written left behind


def test_truncated_weights_file(tmp_path, shared_home):
    src = shared_home / "models" / "resnet20-12fca82f.th"
    bad = tmp_path / "x.th"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        models.load_weights(models.load("resnet20", pretrained=False), bad)
    shutil.copy(src, tmp_path / "r32.th")
    with pytest.raises(WeightsError, match="does not fit"):
        models.load_weights(models.load("resnet32", pretrained=False), tmp_path / "r32.th")


def test_no_weights_for_random_models():
    with pytest.raises(WeightsError, match="no pretrained weights"):
        models.resolve_weights(models.spec("mobilenetv2"))


def test_from_reference():
    m = models.from_reference("qpolicy.testing:TinyConvNet", seed=1)
    assert isinstance(m, torch.nn.Module)
    for ref, match in (("nocolon", "package.module:factory"), ("no_such_mod_xyz:f", "cannot import"),
                       ("qpolicy.testing:nothing", "no callable"), ("qpolicy.testing:random_dataset", "not a torch")):
        with pytest.raises(ConfigError, match=match):
            models.from_reference(ref)
