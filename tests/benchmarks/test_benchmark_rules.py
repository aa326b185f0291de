"""Rules of the comparison benchmarks: what each compares, checked without running them."""

import sys
from dataclasses import fields
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for m in ("qfa_compare", "search_quality", "kure_compare", "arq_compare", "certify_sanity", "_common"):
        sys.modules.pop(m, None)


def test_qfa_compare_arms_differ_in_the_activation_quantizer_only(bench):
    import qfa_compare

    a, b = qfa_compare.arms().values()
    differ = [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    assert differ == ["act_quantizer"]


def _row(budget, quantizer, uniform_ok, default_ok, seconds=30.0):
    import numpy as np

    from qpolicy.select import SelectConfig
    from qpolicy.stats import pack_outcomes

    u, d = np.asarray(uniform_ok, dtype=float), np.asarray(default_ok, dtype=float)
    return {"model": "resnet20", "budget": budget, "quantizer": quantizer, "uniform": 100 * u.mean(),
            "default": 100 * d.mean(), "margin": 100 * (d.mean() - u.mean()), "fisher": 50.0,
            "per_sample": {"uniform": pack_outcomes(u), "default": pack_outcomes(d)}, "random": [],
            "random_median": None, "default_seconds": seconds, "default_evaluations": 12,
            "default_chosen": "refine round 1", "selection_best_other_minus_uniform_loss": -0.01,
            "mac_groups": {"2359296": 16, "1179648": 2}, "select_on": "select", "report_images": len(u),
            "policies": {"default": {"provenance": {"select": SelectConfig().to_dict()}}}}


def test_search_quality_margins_are_paired_and_judged_against_the_goal(bench):
    import numpy as np
    import search_quality

    base = (np.arange(2000) % 5 != 0).astype(float)  # 80% right
    better = base.copy()
    better[np.flatnonzero(base == 0)[:36]] = 1.0  # +1.8 points, only ever gaining: a tight paired interval
    lo, hi = search_quality.margin_ci(_row("BitOPs of W4A4", "minmax", base, better))
    se = 100 * np.sqrt(0.018 * 0.982 / 2000)  # 0.30 points, where unpaired it would be 1.3
    assert lo == pytest.approx(1.8 - 1.96 * se, abs=0.1) and hi == pytest.approx(1.8 + 1.96 * se, abs=0.1)
    # +1.8 [1.2, 2.4] against the +1.5 goal: undecided; against "never below": held
    assert search_quality.goal_verdict(_row("BitOPs of W4A4", "minmax", base, better)) == (1.5, "undecided")
    table, _ = search_quality.render([_row("BitOPs of W4A4", "minmax", base, better)], ["fisher"], 0)
    assert f">= +1.5: undecided (the estimate meets it; the interval reaches +{lo:.2f})" in table
    assert search_quality.goal_verdict(_row("BitOPs of W4A4", "ours", base, better)) == (0.0, "held")
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:60]] = 0.0  # -3 points
    assert search_quality.goal_verdict(_row("BitOPs of W3A4", "ours", base, worse)) == (0.5, "not held")
    rows = [_row("BitOPs of W3A4", "ours", base, worse), _row("BitOPs of W4A4", "ours", base, better, 75.0)]
    table, notes = search_quality.render(rows, ["fisher"], 0)
    assert ">= +0.5: not held (short by 3.50)" in table and "never below: held" in table
    assert "-3.00 [" in table and "+1.80 [" in table
    assert "took 30-75 s per row (goal <= 60 s: met in 1 of 2 rows)" in notes
    assert "16 of its 18 free layers have the same MACs (the other 2: 2 x 1.18M)" in notes


def test_search_quality_says_what_estimate_a_held_verdict_would_need(bench):
    import numpy as np
    import search_quality

    from qpolicy.stats import pack_outcomes

    base = (np.arange(2000) % 5 != 0).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:36]] = 1.0  # +1.8 points, interval about +-0.59 (the test above)
    row = _row("size of W4 (A8)", "minmax", base, base)  # the search returned uniform: a point interval
    row["float"] = row["uniform"] + 1.76
    row["finalists"] = [{"source": "refine round 1", "top1": 100 * better.mean(), "per_sample": pack_outcomes(better)}]
    lo, hi = search_quality.best_finalist(row)[1]
    est, half = search_quality.needed_for_held(row)
    assert half == pytest.approx((hi - lo) / 2) and half == pytest.approx(1.96 * 0.30, abs=0.1)
    assert est == pytest.approx(1.5 + half)  # the goal plus the finalist's half-width: about +2.09
    text = search_quality.why(row)
    assert f"an estimate near {est:+.2f}, {100 * est / 1.76:.0f}% of float - uniform" in text
    assert "only a policy better than float could show it" in text  # 2.09 > 1.76
    row["float"] = row["uniform"] + 4.0
    assert "better than float" not in search_quality.why(row)
    assert search_quality.needed_for_held(_row("size of W4 (A8)", "ours", base, better)) is None  # no goal


def test_search_quality_says_what_the_confirmation_saw_of_a_row_below_uniform(bench):
    import numpy as np
    import search_quality

    base = (np.arange(2000) % 5 != 0).astype(float)
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:60]] = 0.0  # -3 points: below uniform by its whole interval
    row = _row("size of W3 (A8)", "ours", base, worse)  # no gain asked: "never below"
    row["confirmation"] = {"images": 4000, "level": 0.05 / 3,
                           "uniform": [{"source": "uniform w3a8", "val_top1": 92.27}],
                           "tried": [{"source": "refine round 1", "p_values": [0.0038, 0.0], "val_top1": 92.47,
                                      "kept": True}]}
    text = search_quality.why(row)
    assert "passed refine round 1 on its 4,000 validation images (loss p = 0.0038 at a level of 0.0167" in text
    assert "top-1 92.47% against uniform w3a8 92.27%), and it is -3.00 on the report images" in text
    table, _ = search_quality.render([row], ["fisher"], 0)
    assert "Why the goals not held were missed and where a row fell below uniform:" in table
    assert search_quality.why(_row("size of W3 (A8)", "ours", base, base)) is None  # not below: nothing to explain
    row["confirmation"]["tried"][0]["kept"] = False
    assert search_quality.why(row) is None  # uniform returned: no kept candidate to explain


def test_search_quality_names_a_longer_search_and_judges_no_speed_goal_on_it(bench):
    import dataclasses

    import numpy as np
    import search_quality

    from qpolicy.select import SelectConfig

    base = (np.arange(1000) % 5 != 0).astype(float)
    row = _row("BitOPs of W3A4", "ours", base, base, 140.0)
    row["policies"]["default"]["provenance"]["select"] = dataclasses.replace(
        SelectConfig(), refine_evaluations=48).to_dict()
    _, notes = search_quality.render([row], ["fisher"], 0)
    assert f"the default search given 48 refinement evaluations instead of {SelectConfig().refine_evaluations}" in notes
    assert "goal <= 60 s" not in notes  # the speed goal is the default search's, not a longer one's
    _, default_notes = search_quality.render([_row("BitOPs of W3A4", "ours", base, base, 140.0)], ["fisher"], 0)
    assert "Default search: `qpolicy search" in default_notes and "met in 0 of 1 rows" in default_notes
    row["policies"]["default"]["provenance"]["select"] = dataclasses.replace(
        SelectConfig(), bn_batches=32, act_samples=2**20).to_dict()
    _, notes = search_quality.render([row], ["fisher"], 0)
    assert (f"the default search given 32 BatchNorm batches and 1,048,576 activation values per layer while scoring "
            f"instead of {SelectConfig().bn_batches}") in notes
    assert "refinement evaluations instead" not in notes and "goal <= 60 s" not in notes


def test_qfa_compare_claims_are_paired_per_policy_with_verdicts(bench):
    import numpy as np
    import qfa_compare

    from qpolicy.stats import pack_outcomes

    ptq = (np.arange(2000) % 4 != 0).astype(float)  # 75% right
    gain = ptq.copy()
    gain[np.flatnonzero(ptq == 0)[:100]] = 1.0  # +5 points, only gains: held
    same = ptq.copy()
    same[np.flatnonzero(ptq == 0)[:10]] = 1.0  # +1 gained,
    same[np.flatnonzero(ptq == 1)[:10]] = 0.0  # -1 lost: +0.0, undecided
    outcomes = {"a": {"supernet_batchquant": pack_outcomes(gain), "supernet_lsq": pack_outcomes(ptq),
                      "ptq": pack_outcomes(ptq), "qat_1epoch": pack_outcomes(gain)},
                "b": {"supernet_batchquant": pack_outcomes(same), "supernet_lsq": pack_outcomes(gain),
                      "ptq": pack_outcomes(ptq)}}
    claims = {c["comparison"]: c for c in qfa_compare.claim_rows(outcomes)}
    lsq = claims["supernet_batchquant - supernet_lsq > 0"]
    assert [r["verdict"] for r in lsq["rows"]] == ["held", "not held"]
    assert lsq["verdict"] == "mixed (1 held, 1 not held of 2)" and lsq["median"] == pytest.approx(0.0)
    ptq_claim = claims["supernet_batchquant - ptq > 0"]
    assert [r["verdict"] for r in ptq_claim["rows"]] == ["held", "undecided"]
    qat = claims["supernet_batchquant - qat_1epoch > -1"]  # only policy a was fine-tuned; +0.0 > -1 point: held
    assert qat["policies"] == 1 and qat["verdict"] == "held"


def test_kure_claims_from_stored_outcomes_by_hand(bench):
    import kure_compare
    import numpy as np

    from qpolicy.stats import pack_outcomes

    plain = (np.arange(2000) % 4 != 0).astype(float)  # 75% right
    kure = plain.copy()
    kure[np.flatnonzero(plain == 0)[:100]] = 1.0  # +5 points on every image it changes
    per = {}
    for calib in kure_compare.CALIBS:
        for spec in kure_compare.LOW_BITS:
            per[f"{spec}|{calib}|plain"], per[f"{spec}|{calib}|KURE"] = pack_outcomes(plain), pack_outcomes(kure)
        per[f"w4a4|{calib}|plain"], per[f"w4a4|{calib}|KURE"] = pack_outcomes(plain), pack_outcomes(kure)
        for d in kure_compare.PERTURB:  # plain loses 4 points under every step error, KURE none
            hurt = plain.copy()
            hurt[np.flatnonzero(plain == 1)[:80]] = 0.0
            per[f"w4a4{d:+.0%}|{calib}|plain"], per[f"w4a4{d:+.0%}|{calib}|KURE"] = pack_outcomes(hurt), \
                pack_outcomes(kure)
    spread = {"plain": [80.0, 60.0, 85.0, 70.0] * 5, "KURE": [84.0, 83.0, 85.0, 82.0] * 5}
    ptq, steps, rnd = kure_compare.kure_claims(per, spread)
    assert ptq["verdict"] == "held" and len(ptq["rows"]) == 2 * len(kure_compare.LOW_BITS)
    assert ptq["rows"][0]["value"] == pytest.approx(5.0)
    assert steps["verdict"] == "held" and steps["rows"][0]["value"] == pytest.approx(4.0)
    std_row, median_row = rnd["rows"]
    assert std_row["value"] == pytest.approx(np.std(spread["plain"]) - np.std(spread["KURE"]))
    assert median_row["value"] == pytest.approx(np.median(np.subtract(spread["KURE"], spread["plain"])))
    assert std_row["verdict"] == "held"
    # KURE worse everywhere: not held
    worse = {k: (pack_outcomes(plain) if k.endswith("KURE") else pack_outcomes(kure)) for k in per}
    assert kure_compare.kure_claims(worse, {})[0]["verdict"] == "not held"


def test_arq_claims_pair_the_same_images_by_hand(bench):
    import arq_compare

    from qpolicy.stats import pack_outcomes

    def row(label, spec, base, scratch, irs):
        recs = [{"index": i, "label": 1, "prediction": 1 if r >= 0 else -1, "radius": max(r, 0.0)}
                for i, r in enumerate(scratch)]
        recs.reverse()  # records in any order are read in image order
        radii = arq_compare.image_radii(recs)
        return {"label": label, "spec": spec, "per_sample": pack_outcomes(base),
                "smoothed": {"radii": {"scratch": radii, "irs": irs}}}

    results = [row("float (FP32)", "-", [1, 1, 1, 1], [0.5, 0.4, 0.3, 0.2], [0.5, 0.4, 0.3, 0.2]),
               row("uniform W4A4", "w4a4", [1, 0, 1, 1], [0.3, -1.0, 0.3, 0.1], [0.3, -1.0, 0.2, 0.1]),
               row("ARQ (DDPG)", "w4a4", [1, 1, 1, 0], [0.4, 0.2, -1.0, 0.2], [0.4, 0.1, -1.0, 0.2])]
    assert results[1]["smoothed"]["radii"]["scratch"] == [0.3, -1.0, 0.3, 0.1]
    claims = {(c["versus"], c["figure"]): c for c in arq_compare.claim_rows(results)}
    assert len(claims) == 2 * len(arq_compare.FIGURES)  # ARQ vs uniform and vs float, nothing vs itself
    base = claims["uniform W4A4", "base top-1 (clean, all report images)"]
    assert base["difference"] == pytest.approx(0.0) and base["items"] == 4
    # ACR: ARQ (0.4 + 0.2 + 0 + 0.2) / 4 = 0.2, uniform (0.3 + 0 + 0.3 + 0.1) / 4 = 0.175
    acr = claims["uniform W4A4", "ACR, from scratch"]
    assert acr["difference"] == pytest.approx(0.025)
    lo, hi = acr["interval"]
    assert lo < 0.025 < hi and acr["verdict"] == "undecided"
    # certified at r = 0.25: ARQ 1 of 4, uniform 2 of 4 -> -25 points
    assert claims["uniform W4A4", "certified acc. r=0.25 %, from scratch"]["difference"] == pytest.approx(-25.0)
    # IRS radii are their own: ARQ (0.4 + 0.1 + 0 + 0.2) / 4 - uniform (0.3 + 0 + 0.2 + 0.1) / 4 = 0.025
    assert claims["uniform W4A4", "ACR, IRS"]["difference"] == pytest.approx(0.025)
    # versus float every ACR term is lower or equal: the whole interval below 0
    drop = claims["float (FP32)", "ACR, from scratch"]
    assert drop["difference"] == pytest.approx(0.2 - 0.35) and drop["verdict"] == "not held"
