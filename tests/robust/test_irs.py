import pytest
import torch
from scipy.stats import norm
from torch import nn

from qpolicy.errors import ConfigError
from qpolicy.robust.irs import IncrementalCertifier, IRSConfig
from qpolicy.robust.smoothing import ABSTAIN, Smooth, SmoothConfig, certify_dataset

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
SIGMA = 0.5


class Halfspace(nn.Module):
    def __init__(self, t: float, flip_t: float | None = None):
        super().__init__()
        self.t, self.flip_t = t, flip_t
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = x.flatten(1)
        s = z[:, 0] - self.t
        if self.flip_t is not None:  # planted disagreement: class 0 turns to 1 where an independent pixel is high
            s = torch.where(z[:, 1] > self.flip_t, -s.abs() - 1, s)
        return torch.stack([s, -s], 1)


def _reference(tmp_path, p_a, n=4000, record=1000, images=4):
    f = Halfspace(-SIGMA * norm.ppf(p_a))
    smooth = Smooth(f, 2, SIGMA, mean=ZERO, std=ONE, device="cpu")
    cfg = SmoothConfig(sigma=SIGMA, n0=100, n=n, alpha=0.001)
    imgs = torch.zeros(images, 1, 2, 2)
    return f, certify_dataset(smooth, imgs, torch.zeros(images, dtype=torch.long), list(range(images)), cfg,
                              out_dir=tmp_path / "ref", record=record)


def test_irs_equals_reference_for_an_identical_model(tmp_path):
    f, ref = _reference(tmp_path, 0.9)
    irs = IncrementalCertifier(Smooth(f, 2, SIGMA, mean=ZERO, std=ONE, device="cpu"), ref, IRSConfig(n_p=500))
    for r in ref["records"]:
        cert, _ = irs.certify(torch.zeros(1, 2, 2), 0, r["index"])
        assert cert.method == "irs" and cert.count == 0 and cert.samples == 500
        assert cert.prediction == r["prediction"] and cert.radius < r["radius"]  # zeta_up > 0 costs a little
        assert cert.radius > r["radius"] - 0.1


@pytest.mark.parametrize("zeta0", [0.02, 0.1])
def test_irs_never_exceeds_the_bound_of_a_planted_disagreement(tmp_path, zeta0):
    p_a = 0.95
    _, ref = _reference(tmp_path, p_a, images=6)
    # f_p agrees with f except on the event pixel1 > flip_t (probability zeta0, independent of pixel 0)
    fp = Halfspace(-SIGMA * norm.ppf(p_a), flip_t=SIGMA * norm.ppf(1 - zeta0))
    irs = IncrementalCertifier(Smooth(fp, 2, SIGMA, mean=ZERO, std=ONE, device="cpu"), ref,
                               IRSConfig(n_p=1000, fallback=False))
    bound = SIGMA * norm.ppf(p_a - p_a * zeta0)  # the exact p_A of f_p is p_A(f) - zeta, zeta = p_A(f) zeta0
    for r in ref["records"]:
        cert, _ = irs.certify(torch.zeros(1, 2, 2), 0, r["index"])
        assert cert.prediction in (0, ABSTAIN)
        assert cert.radius <= bound
        assert cert.count > 0  # it saw the disagreement


def test_fallback_certifies_from_scratch_when_irs_cannot(tmp_path):
    _, ref = _reference(tmp_path, 0.9, images=2)
    other = Halfspace(-SIGMA * norm.ppf(0.9), flip_t=-10.0)  # always disagrees: class 1
    smooth = Smooth(other, 2, SIGMA, mean=ZERO, std=ONE, device="cpu")
    cert, _ = IncrementalCertifier(smooth, ref, IRSConfig(n_p=200)).certify(torch.zeros(1, 2, 2), 0, 0)
    assert cert.method == "irs-fallback" and cert.prediction == 1 and cert.samples == 200 + 4100
    cert, _ = IncrementalCertifier(smooth, ref, IRSConfig(n_p=200, fallback=False)).certify(torch.zeros(1, 2, 2), 0, 0)
    assert cert.method == "irs-abstain" and cert.prediction == ABSTAIN and cert.samples == 200


def test_reference_must_record_enough_samples(tmp_path):
    f, ref = _reference(tmp_path, 0.9, record=100, images=1)
    with pytest.raises(ConfigError, match="--record 500"):
        IncrementalCertifier(Smooth(f, 2, SIGMA, mean=ZERO, std=ONE, device="cpu"), ref, IRSConfig(n_p=500))
    with pytest.raises(ConfigError, match="same noise"):
        IncrementalCertifier(Smooth(f, 2, 0.3, mean=ZERO, std=ONE, device="cpu"), ref, IRSConfig(n_p=50))


def test_a_certificate_records_its_failure_probability_by_the_union_bound(tmp_path):
    # alpha_f (the stored certificate) + alpha (the zeta bound), + alpha_f again when the fallback may certify
    assert IRSConfig(alpha=0.002, fallback=False).failure_probability(0.001) == pytest.approx(0.003)
    assert IRSConfig(alpha=0.002, fallback=True).failure_probability(0.001) == pytest.approx(0.004)
