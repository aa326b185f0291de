import numpy as np
import pytest

from qpolicy.stats import (
    bootstrap_interval,
    overall_verdict,
    pack_outcomes,
    paired_difference_interval,
    unpack_outcomes,
    verdict,
)


def test_verdict_only_when_the_whole_interval_is_on_one_side():
    assert verdict((0.1, 0.3), 0.0) == "held"
    assert verdict((-0.3, -0.1), 0.0) == "not held"
    assert verdict((-0.1, 0.3), 0.0) == "undecided"
    assert verdict(None, 0.0) == "undecided"
    assert verdict((0.0, 0.3), 0.0) == "undecided" and verdict((0.0, 0.3), 0.0, inclusive=True) == "held"
    # held below: a mean cosine < 0.9
    assert verdict((0.5, 0.8), 0.9, held_above=False) == "held"
    assert verdict((0.9, 0.95), 0.9, held_above=False) == "not held"
    assert verdict((0.85, 0.95), 0.9, held_above=False) == "undecided"


def test_overall_verdict_sums_up_rows():
    assert overall_verdict([]) == "not measured"
    assert overall_verdict(["held", "held"]) == "held"
    assert overall_verdict(["undecided"]) == "undecided"
    assert overall_verdict(["held", "not held", "undecided", "held"]) == "mixed (2 held, 1 not held, 1 undecided of 4)"


def test_bootstrap_interval_of_a_mean():
    x = np.r_[np.zeros(50), np.ones(50)]  # a proportion of 0.5 on 100 items: +-1.96 * 0.05
    lo, hi = bootstrap_interval(lambda i: float(x[i].mean()), len(x))
    assert 0.38 < lo < 0.42 and 0.58 < hi < 0.62
    assert bootstrap_interval(lambda i: float(x[i].mean()), len(x)) == (lo, hi)  # seeded
    assert bootstrap_interval(lambda i: 1.0, 0) is None
    # undefined on too many resamples: no interval
    assert bootstrap_interval(lambda i: float("nan") if i[0] % 2 else 1.0, 10) is None
    assert bootstrap_interval(lambda i: 2.0, 10) == pytest.approx((2.0, 2.0))


def test_paired_difference_interval_ignores_what_both_get_right():
    # 1,000 images; b is a with 30 wrong answers made right: +3 points, and the 970 shared outcomes add no noise
    rng = np.random.default_rng(1)
    a = (rng.random(1000) < 0.8).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:30]] = 1.0
    lo, hi = paired_difference_interval(b, a, scale=100)
    assert lo == pytest.approx(3.0 - 1.96 * 100 * np.sqrt(0.03 * 0.97 / 1000), abs=0.3) and lo > 1.5 and hi < 4.5
    assert paired_difference_interval(a, a, scale=100) == (0.0, 0.0)
    # the unpaired interval of the same two top-1s is about 3.5 points wide each side: not decidable
    assert 1.96 * 100 * np.sqrt(2 * 0.8 * 0.2 / 1000) > 3.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference_interval(np.zeros((2, 2)), np.zeros((2, 2)))


def test_outcomes_round_trip_through_json():
    import json

    bits = np.array([1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1], dtype=float)
    packed = json.loads(json.dumps(pack_outcomes(bits)))
    assert "bits" in packed and packed["n"] == 11 and unpack_outcomes(packed).tolist() == bits.tolist()
    vals = [0.25, 1.0, 0.0]
    packed = pack_outcomes(np.array(vals))
    assert "values" in packed and unpack_outcomes(packed).tolist() == vals
    assert len(pack_outcomes(np.ones(5000))["bits"]) == 836
