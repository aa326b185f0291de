import itertools

import numpy as np
import pytest

from qpolicy.search.nsga import NSGAConfig, nsga2_front, pareto_mask

pytest.importorskip("pymoo")


def test_pareto_mask_by_hand():
    pts = np.array([[1, 5], [2, 2], [3, 3], [5, 1], [2, 2]])
    assert pareto_mask(pts).tolist() == [True, True, False, True, True]


def test_nsga2_finds_the_known_front_of_a_toy_knapsack():
    """5 variables of 4 levels: value sum v_i x_i (maximize), cost sum c_i x_i (minimize); the exact front by
    enumerating all 1,024 encodings."""
    v, c = np.array([5.0, 3.0, 4.0, 1.0, 2.0]), np.array([2.0, 3.0, 1.0, 1.0, 4.0])
    score, cost = (lambda e: e @ v), (lambda e: e @ c)
    allx = np.array(list(itertools.product(range(4), repeat=5)))
    true = pareto_mask(np.column_stack([-score(allx), cost(allx)]))
    true_pts = {(float(s), float(k)) for s, k in zip(score(allx[true]), cost(allx[true]), strict=True)}
    enc, s, k = nsga2_front([4] * 5, score, cost, config=NSGAConfig(population=60, generations=80, seed=1))
    found = {(float(a), float(b)) for a, b in zip(s, k, strict=True)}
    assert found <= true_pts  # every point NSGA-II returns is truly Pareto-optimal
    assert len(found) >= 0.8 * len(true_pts)
    assert list(k) == sorted(k)
    enc, s, k = nsga2_front([4] * 5, score, cost, limit=10.0, config=NSGAConfig(population=40, generations=40))
    assert (k <= 10.0).all() and s.max() == max(p[0] for p in true_pts if p[1] <= 10.0)
