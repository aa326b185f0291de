"""Attack wrappers on tiny seeded models whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qpolicy.datasets.cifar10 import MEAN as CIFAR10_MEAN
from qpolicy.datasets.cifar10 import STD as CIFAR10_STD
from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.robust.attacks import (
    ATTACKS,
    AttackConfig,
    PixelModel,
    check_images,
    distortions,
    gradient_cosine,
    run_attack,
    summarize,
)

pytest.importorskip("art")

SHAPE = (3, 8, 8)
N = 192  # entries per image
B = -(0.5 * N - 0.48)  # at x = 0.5 everywhere the margin w . x + b (w = 1) is 0.48


class PixelLinear(nn.Module):
    """Two classes; logit margin ``w . pixel + b`` (it undoes the normalization PixelModel applies), optionally on
    pixels rounded to quarters (a zero input gradient)."""

    def __init__(self, w: torch.Tensor, b: float, rounded: bool = False):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = b
        self.rounded = rounded
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * self.std + self.mean
        if self.rounded:
            x = torch.round(x * 4) / 4  # torch.round has a zero gradient
        m = (x.flatten(1) * self.w.flatten()).sum(1) + self.b
        return torch.stack([m, -m], 1)


def _images(n: int = 4, value: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, *SHAPE), value), torch.zeros(n, dtype=torch.long)


def test_registry_has_the_ten_attacks():
    assert set(ATTACKS.names()) == {"apgd_square", "boundary", "cw_l2", "cw_linf", "deepfool", "ead", "geoda", "jsma",
                                    "pgd", "square_l2", "square_linf", "zoo"}


def test_pgd_fools_a_linear_model_exactly_above_its_linf_margin():
    # The smallest Linf perturbation that flips it is margin / ||w||_1 = 0.48 / 192 = 0.0025.
    w = torch.ones(SHAPE)
    model = PixelLinear(w, B)
    x, y = _images()
    params = {"restarts": 1, "max_iter": 20}
    below = summarize(run_attack(model, x, y, AttackConfig(attack="pgd", eps=0.0024, params=params)))
    above = summarize(run_attack(model, x, y, AttackConfig(attack="pgd", eps=0.0026, params=params)))
    assert below["clean_accuracy"] == 100.0 and below["robust_accuracy"] == 100.0
    assert above["robust_accuracy"] == 0.0
    assert above["median_distortion"]["linf"] == pytest.approx(0.0026, abs=1e-6)


def test_deepfool_finds_the_l2_distance_to_a_linear_boundary():
    w = torch.ones(SHAPE)
    model = PixelLinear(w, B)  # margin 0.48, ||w||_2 = sqrt(192): distance 0.0346
    x, y = _images(2)
    s = summarize(run_attack(model, x, y, AttackConfig(attack="deepfool")))
    assert s["robust_accuracy"] == 0.0
    exact = 0.48 / np.sqrt(N)
    assert exact <= s["median_distortion"]["l2"] <= exact * 1.02  # overshoot 0.008


def test_zero_gradient_defeats_white_box_but_not_black_box():
    model = PixelLinear(torch.ones(SHAPE), B, rounded=True)
    x, y = _images()
    pgd = summarize(run_attack(model, x, y, AttackConfig(attack="pgd", eps=0.3, params={"restarts": 0})))
    assert pgd["robust_accuracy"] == 100.0  # sign(0) = 0: PGD never moves
    square = summarize(run_attack(model, x, y, AttackConfig(attack="square_linf", eps=0.3,
                                                            params={"max_iter": 200})))
    assert square["robust_accuracy"] == 0.0


def test_distortions_by_hand():
    x = np.zeros((2, 1, 2, 2))
    adv = x.copy()
    adv[0, 0, 0, 0], adv[0, 0, 1, 1] = 0.3, -0.4
    d = distortions(x, adv)
    assert d["l0"].tolist() == [2, 0]
    assert d["l1"][0] == pytest.approx(0.7) and d["l2"][0] == pytest.approx(0.5) and d["linf"][0] == pytest.approx(0.4)
    assert d["l2"][1] == 0


def test_summary_counts_only_successes_on_correct_images():
    recs = [{"label": 0, "clean": 0, "adv": 1, "l0": 1, "l1": 1, "l2": 1, "linf": 1},
            {"label": 0, "clean": 0, "adv": 0, "l0": 9, "l1": 9, "l2": 9, "linf": 9},
            {"label": 0, "clean": 1, "adv": 1, "l0": 5, "l1": 5, "l2": 5, "linf": 5}]
    s = summarize(recs)
    assert s["clean_accuracy"] == pytest.approx(200 / 3) and s["robust_accuracy"] == pytest.approx(100 / 3)
    assert s["success_rate"] == 50.0 and s["median_distortion"]["l2"] == 1


def test_gradient_cosine():
    w = torch.randn(SHAPE)
    a, b = PixelLinear(w, 0.0), PixelLinear(-w, 0.0)
    x = torch.rand(3, *SHAPE)
    y = torch.zeros(3, dtype=torch.long)
    assert np.allclose(gradient_cosine(a, a, x, y), 1.0)
    # the loss gradient of the negated model on the same label points the other way
    assert np.allclose(gradient_cosine(a, b, x, y), -1.0)
    assert np.allclose(gradient_cosine(a, PixelLinear(w, 0.0, rounded=True), x, y), 0.0)


def test_pixel_model_casts_float64_and_normalizes():
    seen = {}

    class Spy(nn.Module):
        def forward(self, z):
            seen["z"] = z
            return z.flatten(1)[:, :2]

    PixelModel(Spy())(torch.ones(1, 3, 2, 2, dtype=torch.float64))
    assert seen["z"].dtype == torch.float32
    assert seen["z"][0, 0, 0, 0].item() == pytest.approx((1 - CIFAR10_MEAN[0]) / CIFAR10_STD[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"attack": "pgdd", "eps": 0.1}, "did you mean 'pgd'"),
    ({"attack": "pgd", "eps": -0.1}, "eps must be >= 0"),
    ({"attack": "pgd"}, "needs eps"),
    ({"attack": "pgd", "eps": 0.1, "params": {"max_iter": 2.5}}, "must be int"),
    ({"attack": "pgd", "eps": 0.1, "params": {"maxiter": 2}}, "did you mean 'max_iter'"),
    ({"attack": "deepfool", "params": {"max_iter": True}}, "must be int"),
    ({"attack": "pgd", "eps": "0.1"}, "eps must be a number"),
    ({"attack": "geoda", "params": {"max_iter": 200}}, None),  # checked when built
])
def test_attack_config_bad_input(kwargs, match):
    if match is None:
        AttackConfig(**kwargs)
        return
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        AttackConfig(**kwargs)


def test_geoda_too_few_queries_is_a_clear_error():
    model = PixelLinear(torch.ones(SHAPE), B)
    x, y = _images(1)
    with pytest.raises(ConfigError, match="max_iter > 250"):
        run_attack(model, x, y, AttackConfig(attack="geoda", params={"max_iter": 200}))


def test_images_outside_unit_range_are_refused():
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        check_images(torch.full((1, 3, 2, 2), 1.5))
    with pytest.raises(ConfigError, match="N x C x H x W"):
        check_images(torch.zeros(3, 2, 2))
