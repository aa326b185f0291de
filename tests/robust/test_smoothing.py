import json

import pytest
import torch
from scipy.stats import norm
from torch import nn

from qpolicy.errors import CheckpointError, ConfigError
from qpolicy.robust.smoothing import (
    ABSTAIN,
    Smooth,
    SmoothConfig,
    certify_dataset,
    lower_confidence_bound,
    summarize,
    upper_confidence_bound,
)

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


class Halfspace(nn.Module):
    """Class 0 where the first pixel exceeds ``t``, else class 1: under N(0, sigma^2) noise around an image whose
    first pixel is 0, P(class 0) = 1 - Phi(t / sigma), and the smoothed classifier's exact radius is
    sigma * Phi^-1(p_A) (a linear classifier)."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        s = x.flatten(1)[:, 0] - self.t
        return torch.stack([s, -s], 1)


def test_clopper_pearson_closed_forms():
    n, alpha = 50, 0.01
    assert lower_confidence_bound(0, n, alpha) == 0.0
    assert upper_confidence_bound(n, n, alpha) == 1.0
    # one-sided bounds at the extremes: (alpha)^(1/n) and 1 - alpha^(1/n)
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)
    assert upper_confidence_bound(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-9)
    assert lower_confidence_bound(30, n, alpha) < 30 / n < upper_confidence_bound(30, n, alpha)


def _smooth(p_a: float, sigma: float = 0.5) -> Smooth:
    t = -sigma * norm.ppf(p_a)  # P(sigma g > t) = p_a
    return Smooth(Halfspace(t), 2, sigma, mean=ZERO, std=ONE, device="cpu")


def test_certify_radius_matches_theory_on_a_halfspace():
    sigma, p_a = 0.5, 0.9
    x = torch.zeros(1, 2, 2)
    cert, preds = _smooth(p_a, sigma).certify(x, 0, SmoothConfig(sigma=sigma, n0=100, n=20000, alpha=0.001),
                                              record=50)
    true_radius = sigma * norm.ppf(p_a)
    assert cert.prediction == 0 and cert.correct
    assert cert.radius <= true_radius  # holds with probability 1 - alpha
    assert cert.radius >= sigma * norm.ppf(0.88)  # and is tight with n = 20,000
    assert preds.shape == (50,) and cert.samples == 20100


def test_abstains_at_a_coin_flip_and_predict_tests():
    sigma = 0.5
    s = _smooth(0.5, sigma)
    x = torch.zeros(1, 2, 2)
    cert, _ = s.certify(x, 0, SmoothConfig(sigma=sigma, n0=100, n=2000, alpha=0.001))
    assert cert.prediction == ABSTAIN and cert.radius == 0.0
    assert s.predict(x, 2000, 0.001) == ABSTAIN
    assert _smooth(0.95, sigma).predict(x, 2000, 0.001) == 0


def test_failure_rate_within_alpha():
    """Over many independent certifications the certified radius exceeds the true one at most ~alpha of the
    time (a radius above it is exactly a failed certificate)."""
    sigma, p_a, alpha = 0.5, 0.8, 0.1
    s, x = _smooth(p_a, sigma), torch.zeros(1, 2, 2)
    true_radius = sigma * norm.ppf(p_a)
    over = sum(s.certify(x, 0, SmoothConfig(sigma=sigma, n0=100, n=300, alpha=alpha, seed=k))[0].radius > true_radius
               for k in range(60))
    assert over <= 14  # expected <= 6; binomial(60, 0.1) exceeds 14 with probability < 0.1%


def test_noise_does_not_depend_on_batch_size():
    s = _smooth(0.7)
    x = torch.zeros(1, 2, 2)
    a = s.sample_predictions(x, 450, batch=100, seed=3, index=7, stage=1)
    b = s.sample_predictions(x, 450, batch=1000, seed=3, index=7, stage=1)
    tail = s.sample_predictions(x, 250, batch=300, seed=3, index=7, stage=1, first=200)
    assert torch.equal(a, b) and torch.equal(a[200:], tail)
    assert not torch.equal(a, s.sample_predictions(x, 450, batch=100, seed=3, index=8, stage=1))


@pytest.mark.parametrize("kw, msg", [({"sigma": 0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"n0": 0}, "n0"),
                                     ({"n": 0, "n0": 0}, "n0"), ({"n0": 200, "n": 100}, "must not exceed"),
                                     ({"alpha": 0}, "alpha"), ({"alpha": 1.0}, "alpha"), ({"batch": 0}, "batch")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        SmoothConfig(**kw)


def test_summary_acr_and_certified_accuracy():
    recs = [{"prediction": 1, "label": 1, "radius": 0.6, "samples": 10, "seconds": 1.0},
            {"prediction": 2, "label": 1, "radius": 0.9, "samples": 10, "seconds": 1.0},  # wrong: counts 0
            {"prediction": ABSTAIN, "label": 0, "radius": 0.0, "samples": 10, "seconds": 1.0},
            {"prediction": 0, "label": 0, "radius": 0.2, "samples": 10, "seconds": 1.0}]
    s = summarize(recs)
    assert s["acr"] == pytest.approx(0.2)
    assert s["certified_accuracy"] == {"0": 50.0, "0.25": 25.0, "0.5": 25.0, "0.75": 0.0, "1": 0.0}
    assert s["abstain"] == 25.0 and s["samples"] == 40


def test_certify_dataset_resumes_to_the_uninterrupted_result(tmp_path):
    s = _smooth(0.85)
    imgs, labels, idx = torch.zeros(3, 1, 2, 2), torch.tensor([0, 0, 1]), [5, 6, 7]
    cfg = SmoothConfig(sigma=0.5, n0=50, n=300, alpha=0.01)
    full = certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "a", record=20)
    calls = {"n": 0}

    def dies(x, y, i):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return s.certify(x, y, cfg, index=i, record=20)

    with pytest.raises(KeyboardInterrupt):
        certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "b", record=20, certify_one=dies)
    part = json.loads((tmp_path / "b" / "certify.json").read_text())
    assert len(part["records"]) == 2 and not part["complete"]
    with pytest.raises(CheckpointError, match="exists"):
        certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "b")
    with pytest.raises(CheckpointError, match="other settings"):
        certify_dataset(s, imgs, labels, idx, SmoothConfig(sigma=0.5, n0=50, n=400, alpha=0.01),
                        out_dir=tmp_path / "b", resume=True, record=20)
    done = certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "b", resume=True, record=20)

    def strip(o):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in o["records"]]

    assert done["complete"] and strip(done) == strip(full)


def test_certify_on_ray_equals_serial_and_resumes_out_of_order(local_ray, tmp_path):
    s = _smooth(0.8)
    imgs, labels, idx = torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 1, 0, 1]), [3, 9, 4, 7, 8]
    cfg = SmoothConfig(sigma=0.5, n0=50, n=300, alpha=0.01)
    full = certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "a", record=20)
    on_ray = certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "b", record=20, workers=2)

    def strip(o):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in o["records"]]

    assert strip(on_ray) == strip(full) and on_ray["complete"]
    # a Ray run killed after images 9 and 7 finished (out of order): the rerun keeps them and computes the rest
    part = json.loads((tmp_path / "b" / "certify.json").read_text())
    part["records"] = [{**r, "seconds": 123.0} for r in part["records"] if r["index"] in (9, 7)]
    part["complete"] = False
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "certify.json").write_text(json.dumps(part))
    done = certify_dataset(s, imgs, labels, idx, cfg, out_dir=tmp_path / "c", resume=True, record=20, workers=2)
    assert strip(done) == strip(full) and [r["index"] for r in done["records"]] == idx
    assert [r["seconds"] == 123.0 for r in done["records"]] == [False, True, False, True, False]
