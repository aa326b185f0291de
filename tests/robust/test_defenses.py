"""Defenses: squeezers and the detector threshold by hand, the Sinkhorn divergence's golden values, the PixelCNN's
causality, option errors, and a train-based defense on the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qpolicy.datasets.cifar10 import MEAN as CIFAR10_MEAN
from qpolicy.datasets.cifar10 import STD as CIFAR10_STD
from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.robust.defenses import DEFENSES, parse_options
from qpolicy.robust.defenses.adversarial import pgd_linf, sinkhorn_divergence
from qpolicy.robust.defenses.pixeldefend import PixelCNN, purify
from qpolicy.robust.defenses.squeeze import BitDepth, MedianFilter, calibrate_threshold


def test_the_six_defenses_are_registered():
    assert set(DEFENSES.names()) == {"pgd_at", "distillation", "ensemble_at", "sinkhorn_at", "squeeze", "pixeldefend"}
    for name in DEFENSES.names():
        spec = DEFENSES.get(name)
        assert spec.kind in ("train", "preprocess")
        assert (spec.train is not None) if spec.kind == "train" else (spec.build is not None)
        spec.make_config()  # defaults are valid


def test_bit_depth_and_median_by_hand():
    x = torch.tensor([0.0, 0.2, 0.26, 1.0]).view(1, 1, 1, 4)
    assert BitDepth(2)(x).flatten().tolist() == pytest.approx([0.0, 1 / 3, 1 / 3, 1.0])
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # 2x2 median, reflect padding on the bottom/right: the window at (0, 0) is {1, 2, 3, 4} -> torch's lower median 2
    out = MedianFilter(2)(img)
    assert out.shape == img.shape and out[0, 0, 0, 0].item() == 2.0
    assert MedianFilter(1)(img).equal(img)


def test_bit_depth_passes_gradients_straight_through():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    BitDepth(3)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_detector_threshold_flags_the_chosen_fraction_of_clean_images():
    scores = np.arange(100, dtype=float)
    thr = calibrate_threshold(scores, 0.05)
    assert thr == 94.0 and (scores > thr).sum() == 5
    rng = np.random.default_rng(0)
    s = rng.random(1000)
    assert (s > calibrate_threshold(s, 0.05)).mean() <= 0.05


def test_sinkhorn_divergence_golden_values():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0]])
    assert sinkhorn_divergence(a, b).item() == pytest.approx(25.0, rel=1e-5)  # one point each: squared distance
    x = torch.rand(6, 3)
    assert abs(sinkhorn_divergence(x, x).item()) < 1e-6
    assert sinkhorn_divergence(x, x + 0.3).item() > 0


def test_pgd_linf_stays_in_the_ball_and_the_image_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))

    mean = torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, -1, 1, 1)
    pix = torch.rand(5, 3, 4, 4)
    adv = pgd_linf(model, (pix - mean) / std, torch.zeros(5, dtype=torch.long), eps=0.03, steps=3, step_size=0.01)
    back = adv * std + mean
    assert (back - pix).abs().max() <= 0.03 + 1e-5 and back.min() >= -1e-6 and back.max() <= 1 + 1e-6


def test_pixelcnn_is_causal_and_purify_keeps_the_ball():
    torch.manual_seed(0)
    net = PixelCNN(channels=8, blocks=2)
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 256, 3, 6, 6)
    out[0, :, :, 2, 3].sum().backward()
    g = x.grad.abs().sum(1)[0]
    assert g[2, 3:].sum() == 0 and g[3:].sum() == 0  # nothing at or after (2, 3) in raster order
    assert g[:2].sum() > 0 or g[2, :3].sum() > 0
    img = torch.rand(2, 3, 4, 4)
    same = purify(net, img, 0.0)
    assert torch.allclose(same, (img * 255).round() / 255)
    moved = purify(net, img, 8 / 255)
    assert (moved - (img * 255).round() / 255).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("name, options, match", [
    ("pgd_at", {"epss": 0.1}, "did you mean 'eps'"),
    ("pgd_at", {"eps": "big"}, "must be float"),
    ("pgd_at", {"eps": -0.1}, ">= 0"),
    ("distillation", {"temperature": 0.5}, ">= 1"),
    ("squeeze", {"bits": 9}, "1..8"),
    ("pixeldefend", {"eps_defend": 2.0}, r"\[0, 1\]"),
])
def test_defense_options_bad_input(name, options, match):
    with pytest.raises(ConfigError, match=match):
        DEFENSES.get(name).make_config(options)


def test_unknown_defense_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'squeeze'"):
        DEFENSES.get("squeze")


def test_parse_options():
    assert parse_options(["eps=0.008", "steps=10", "static=resnet20,resnet32", "x=true"]) == {
        "eps": 0.008, "steps": 10, "static": "resnet20,resnet32", "x": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["eps"])


def _tiny_data(n=32, batch=16):
    from qpolicy.data import ArrayDataset, ArrayLoader

    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(n, 8, 8, 3, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    ds = ArrayDataset(images=imgs, labels=labels, classes=tuple(map(str, range(10))), source="tiny")
    return ArrayLoader(ds, batch_size=batch, shuffle=True, seed=0, mean=CIFAR10_MEAN, std=CIFAR10_STD)


class _Killed(Exception):
    pass


class _DiesInEpoch2:
    """The data of a run killed at the start of its second epoch."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        return iter(self.data)

    def batches(self, epoch, start):
        if epoch == 1:
            raise _Killed
        return self.data.batches(epoch, start)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)  # every instance starts from the same weights
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("name", ["pgd_at", "sinkhorn_at", "distillation"])
def test_train_based_defenses_run_on_the_engine_and_resume(tmp_path, name):
    from qpolicy.train import FloatTrainConfig, load_trained

    spec = DEFENSES.get(name)
    opts = spec.make_config({"steps": 2} if name != "distillation" else {})
    cfg = FloatTrainConfig(epochs=2, lr=0.01, checkpoint_every=0)
    full = Tiny()
    spec.train(full, _tiny_data(), opts, config=cfg, out_dir=tmp_path / "full", model_name="tiny")
    # a run killed in its second epoch, then resumed, ends with the same weights
    with pytest.raises(_Killed):
        spec.train(Tiny(), _DiesInEpoch2(_tiny_data()), opts, config=cfg, out_dir=tmp_path / "half",
                   model_name="tiny")
    again = Tiny()
    spec.train(again, _tiny_data(), opts, config=cfg, out_dir=tmp_path / "half", resume=True, model_name="tiny")
    loaded = load_trained(Tiny(), tmp_path / "full")
    assert loaded.trained_kind == name
    for a, b in zip(full.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_pixeldefend_trains_its_pixelcnn_on_the_engine_and_resumes(tmp_path):
    """The PixelCNN is trained as a task of its own (256-way logits per sub-pixel, not class logits): the loss
    falls from log(256) nats, a killed run resumes to the same weights, and the defense loads what was trained."""
    import math

    from qpolicy.robust.defenses.pixeldefend import PixelDefend, _pixels
    from qpolicy.train import FloatTrainConfig

    spec = DEFENSES.get("pixeldefend")
    opts = spec.make_config({"channels": 8, "blocks": 1, "eps_defend": 4 / 255})
    cfg = FloatTrainConfig(epochs=2, lr=0.01, optimizer="adam", checkpoint_every=0)
    res = spec.train(Tiny(), _tiny_data(), opts, config=cfg, out_dir=tmp_path / "pixelcnn", model_name="tiny")
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < first < math.log(256) + 0.05 and 0 <= res.history[-1]["sub-pixel accuracy"] <= 1
    with pytest.raises(_Killed):
        spec.train(Tiny(), _DiesInEpoch2(_tiny_data()), opts, config=cfg, out_dir=tmp_path / "half", model_name="tiny")
    spec.train(Tiny(), _tiny_data(), opts, config=cfg, out_dir=tmp_path / "half", resume=True, model_name="tiny")
    a = torch.load(tmp_path / "pixelcnn" / "weights.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "half" / "weights.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    x, _ = next(iter(_tiny_data()))
    pix, levels = _pixels(x)
    assert torch.equal((pix * 255).round().long(), levels) and 0 <= float(pix.min()) and float(pix.max()) <= 1
    defense = spec.build(Tiny(), opts, trained_dir=tmp_path, model_name="tiny", data_dir=None, device=None)
    assert isinstance(defense, PixelDefend)
    out = defense(pix[:2])
    assert out.shape == pix[:2].shape and float((out - pix[:2]).abs().max()) <= 4 / 255 + 1e-6


def test_pixelcnn_row_logits_equal_the_full_ones():
    torch.manual_seed(0)
    net = PixelCNN(channels=8, blocks=2).eval()
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        full = net(x)
        for row in (0, 3, 5):
            assert torch.allclose(net(x, row=row)[:, :, :, 0], full[:, :, :, row], atol=1e-5)
