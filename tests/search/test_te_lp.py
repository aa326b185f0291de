"""te-lp: the staircase DP equals the ordered MILP, and both equal brute force under the ordering constraint."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qpolicy.budget import Budget
from qpolicy.layers import LayerInfo
from qpolicy.search import search
from qpolicy.search.base import Problem, choice_cost, fits, total_cost
from qpolicy.search.ilp import solve_milp
from qpolicy.search.te_lp import _dp_order, order_rows, solve_dp, solve_te_lp
from qpolicy.sensitivity import SensitivityTable

BITS = (2, 4, 8)


def _te_table(tes, params, macs, act_tes=None):
    layers = tuple(LayerInfo(name=f"l{i}", kind="conv", params=p, macs=m, in_shape=(p,), out_shape=(1,), order=i)
                   for i, (p, m) in enumerate(zip(params, macs, strict=True)))
    act_tes = act_tes or tes
    weight = {f"l{i}": {b: t * (8 - b) for b in BITS} for i, t in enumerate(tes)}
    act = {f"l{i}": {b: t * (8 - b) for b in BITS} for i, t in enumerate(act_tes)}
    return SensitivityTable(metric="te", bits=BITS, layers=layers, weight=weight, act=act)


def _brute_ordered(problem: Problem):
    """The least damage over all assignments that fit and respect the ordering rows."""
    names = [li.name for li in problem.layers]
    rows = order_rows(problem)
    best = None
    for combo in itertools.product(*(problem.choices[n] for n in names)):
        a = dict(zip(names, combo, strict=True))
        if all(a[x][s] >= a[y][s] for x, y, s in rows) and fits(problem, total_cost(problem, a)):
            d = sum(problem.damage(n, c) for n, c in a.items())
            best = d if best is None else min(best, d)
    return best


captured = {}


def _capture(problem, seed=0):
    captured["problem"] = problem
    return solve_te_lp(problem, seed)


@settings(max_examples=40, deadline=None)
@given(tes=st.lists(st.integers(1, 100), min_size=2, max_size=4, unique=True).map(lambda v: [t / 10 for t in v]),
       sizes=st.lists(st.integers(1, 50), min_size=4, max_size=4),
       rel=st.floats(0.2, 1.0), key=st.sampled_from(["size", "bitops"]))
def test_dp_equals_milp_and_brute_force(tes, sizes, rel, key):
    n = len(tes)
    table = _te_table(tes, sizes[:n], [s * 7 for s in reversed(sizes[:n])])
    pairs = tuple((w, a) for w in BITS for a in BITS)
    problem = Problem(table=table, choices={li.name: pairs for li in table.layers},
                      limits=Budget(**{key: rel}).limits(table.layers))
    ranked = _dp_order(problem)
    assert ranked is not None  # distinct TEs (0.1 apart at least, so their damage slopes differ), one budget
    best = _brute_ordered(problem)
    if best is None:  # the cheapest policy does not fit
        return
    dp = solve_dp(problem, ranked)
    milp = solve_milp(problem, order=order_rows(problem))
    for a in (dp, milp):
        assert fits(problem, total_cost(problem, a))
        assert all(a[x][s] >= a[y][s] for x, y, s in order_rows(problem))
        assert sum(problem.damage(k, c) for k, c in a.items()) == pytest.approx(best, rel=1e-6, abs=1e-9)


def _bits(policy, name, side):
    return (policy[name].weight_bits, policy[name].act_bits)[side]


def test_dp_is_used_and_falls_back_when_it_cannot_apply():
    table = _te_table([4.0, 3.0, 2.0, 1.0], [100, 100, 100, 100], [1000, 2000, 3000, 4000])
    r = search(table, Budget(bitops=0.6), strategy=_capture, first_last=8)
    assert _dp_order(captured["problem"]) == ["l1", "l2"]  # the fixed first and last layer are left out
    r2 = search(table, Budget(bitops=0.6), strategy=lambda p, s: solve_milp(p, order=order_rows(p)), first_last=8)
    assert r.predicted_damage == pytest.approx(r2.predicted_damage)
    # two budgets at once, equal TEs, or a different order on the activation side: the MILP answers
    for table2, budget in ((table, Budget(bitops=0.3, size=0.6)),
                           (_te_table([2.0, 2.0, 1.0], [10, 10, 10], [10, 10, 10]), Budget(size=0.6)),
                           (_te_table([3.0, 2.0, 1.0], [10, 10, 10], [10, 10, 10], [1.0, 2.0, 3.0]),
                            Budget(bitops=0.4)),
                           # TEs that differ in the last bit have equal damage slopes after rounding: groups
                           (_te_table([0.1, 0.10000000000000002], [1, 1], [1, 1]), Budget(size=1.0))):
        r = search(table2, budget, strategy=_capture)
        problem = captured["problem"]
        assert _dp_order(problem) is None
        assert all(_bits(r.policy, x, s) >= _bits(r.policy, y, s) for x, y, s in order_rows(problem))
        assert r.predicted_damage == pytest.approx(_brute_ordered(problem))


def test_equal_importance_groups_are_ordered_against_each_other():
    # l0 > l1 == l2 > l3: rows pair every member of a group with every member of the next group
    table = _te_table([3.0, 2.0, 2.0, 1.0], [10] * 4, [10] * 4)
    pairs = tuple((w, a) for w in BITS for a in BITS)
    problem = Problem(table=table, choices={li.name: pairs for li in table.layers},
                      limits=Budget(size=0.5).limits(table.layers))
    rows = {(a, b) for a, b, s in order_rows(problem) if s == 0}
    assert rows == {("l0", "l1"), ("l0", "l2"), ("l1", "l3"), ("l2", "l3")}
    assert choice_cost(table.layers[0], (8, 8))["size_bytes"] == 10


def test_the_time_limit_holds_for_the_whole_solve(monkeypatch):
    """400 layers in two equal-importance groups with another order on the activation side: the MILP fallback with
    its 40,000 ordering pairs per side. With the limit at 0.5 s the answer (a policy or a one-line error) comes
    within a few seconds, rows included: it used to retry without a limit (22 s here at a 10 s limit)."""
    import random
    import time

    from qpolicy.errors import SolverTimeoutError
    from qpolicy.search import te_lp

    rng = random.Random(1)
    n = 400
    tes = [rng.choice([0.5, 1.0]) for _ in range(n)]
    table = _te_table(tes, [rng.randint(100, 100_000) for _ in range(n)], [rng.randint(1_000, 10**7) for _ in range(n)],
                      act_tes=[rng.choice([0.5, 1.0]) for _ in range(n)])
    monkeypatch.setattr(te_lp, "MILP_TIME_LIMIT", 0.5)
    start = time.perf_counter()
    try:
        search(table, Budget(size=0.4), strategy="te-lp")
    except SolverTimeoutError as e:
        assert "time limit" in str(e)
    assert time.perf_counter() - start < 5.0
