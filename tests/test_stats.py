import numpy as np
import pytest

from qpolicy.stats import bootstrap_interval, overall_verdict, verdict


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
