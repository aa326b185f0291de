import pytest

from qpolicy.budget import Budget
from qpolicy.costs import policy_cost
from qpolicy.errors import ConfigError, InfeasibleBudgetError, UnknownNameError
from qpolicy.layers import quantizable_layers
from qpolicy.policy import uniform_policy
from qpolicy.search.base import build_problem, fits, ties_hold, total_cost
from qpolicy.search.ilp import solve_ilp
from qpolicy.select import SelectConfig, _moves, _scale_act, _uniform_candidates, search_validated
from qpolicy.sensitivity import SensitivityTable
from qpolicy.testing import TinyConvNet, random_loader


def _problem(model, budget, bits=(2, 4, 8)):
    layers = quantizable_layers(model)
    zeros = {li.name: dict.fromkeys(bits, 0.0) for li in layers}
    table = SensitivityTable(metric="x", bits=bits, layers=tuple(layers), weight=zeros, act=zeros)
    return build_problem(table, budget, first_last=None)


def test_moves_keep_budget_ties_and_differ_by_one_step():
    m = TinyConvNet()
    problem = _problem(m, Budget(bitops=0.3))
    (_, start), *_ = _uniform_candidates(problem, 1)
    moves = _moves(problem, start)
    assert moves
    for mv in moves:
        assert fits(problem, total_cost(problem, mv)) and ties_hold(problem, mv)
        changed = [(n, s) for n in mv for s in (0, 1) if mv[n][s] != start[n][s]]
        assert 1 <= len(changed) <= 2


def test_scaling_the_activation_damage_moves_the_ilp_policy_between_weight_and_activation_bits():
    # the two free layers (dw, pw) have to drop one side to 2 bits each (the budget is both at W4A2; one at 2/2 and
    # the other at 4/4 is over it); weights lose 1.0 there, activations 0.6
    m = TinyConvNet()
    layers = quantizable_layers(m)
    weight = {li.name: {2: 1.0, 4: 0.0, 8: 0.0} for li in layers}
    act = {li.name: {2: 0.6, 4: 0.0, 8: 0.0} for li in layers}
    table = SensitivityTable(metric="x", bits=(2, 4, 8), layers=tuple(layers), weight=weight, act=act)
    limit = policy_cost(layers, {"conv1": (8, 8), "dw": (4, 2), "pw": (4, 2), "fc": (8, 8)}).bitops_rel_w8a8
    budget = Budget(bitops=limit)
    as_is = solve_ilp(build_problem(table, budget, first_last=8))
    doubled = solve_ilp(build_problem(_scale_act(table, 2.0), budget, first_last=8))
    assert (as_is["dw"], as_is["pw"]) == ((4, 2), (4, 2))  # 0.6 < 1.0: the activations give
    assert (doubled["dw"], doubled["pw"]) == ((2, 4), (2, 4))  # 1.2 > 1.0: the weights give
    assert _scale_act(table, 2.0).weight == table.weight and _scale_act(table, 1.0) is table


class _ConfirmScores:
    """Per-image confirmation losses and correctness of named policies (what _confirm reads of the scorer)."""

    confirm_images = 400

    def __init__(self, outcomes):
        self.outcomes, self.asked = outcomes, []

    def confirm_(self, assign):
        self.asked.append(assign["p"])
        return self.outcomes[assign["p"]]


def test_confirmation_tries_the_next_best_candidate_at_a_bonferroni_level():
    import torch

    from qpolicy.select import Candidate, _confirm

    g = torch.Generator().manual_seed(0)
    noise = torch.rand(400, generator=g, dtype=torch.float64)
    jitter = 0.01 * torch.rand(400, generator=g, dtype=torch.float64)
    ok = torch.ones(400)
    outcomes = {"u": (1.0 + noise, ok), "a": (1.0 + noise.flip(0), ok),  # a: no better than uniform
                "b": (0.8 + noise + jitter, ok)}  # b: lower by about 0.2 on every image
    cand = {p: Candidate(source=p, assignment={"p": p}, val_loss=v, val_top1=90.0)
            for p, v in (("u", 0.5), ("a", 0.3), ("b", 0.4))}
    scores = _ConfirmScores(outcomes)
    chosen, info = _confirm(scores, [cand["a"], cand["b"]], [cand["u"]], 0.05)
    assert chosen is cand["b"] and info["level"] == 0.025 and scores.asked == ["u", "a", "b"]
    assert [t["kept"] for t in info["tried"]] == [False, True] and [t["passed"] for t in info["tried"]] == [False, True]
    # confirming only the best-scoring one gives uniform back
    chosen, info = _confirm(_ConfirmScores(outcomes), [cand["a"]], [cand["u"]], 0.05)
    assert chosen is cand["u"] and not info["kept"]
    # a candidate whose top-1 there is below uniform's is not kept, however low its loss
    worse = {**outcomes, "b": (0.8 + noise + jitter, torch.cat([torch.zeros(1), torch.ones(399)]))}
    chosen, _ = _confirm(_ConfirmScores(worse), [cand["a"], cand["b"]], [cand["u"]], 0.05)
    assert chosen is cand["u"]


def test_of_the_candidates_that_pass_the_lowest_confirmation_loss_is_kept():
    import torch

    from qpolicy.select import Candidate, _confirm

    g = torch.Generator().manual_seed(1)
    noise = torch.rand(400, generator=g, dtype=torch.float64)
    ok = torch.ones(400)
    outcomes = {"u": (1.0 + noise, ok),
                "b": (0.9 + noise + 0.01 * torch.rand(400, generator=g, dtype=torch.float64), ok),  # passes, -0.1
                "c": (0.7 + noise + 0.01 * torch.rand(400, generator=g, dtype=torch.float64), ok),  # passes, -0.3
                "d": (1.0 + noise.flip(0), ok)}  # no better than uniform
    # the scores (1,000 images) rank b before c: the confirmation images (4,000) decide between them
    cand = {p: Candidate(source=p, assignment={"p": p}, val_loss=v, val_top1=90.0)
            for p, v in (("u", 0.5), ("b", 0.3), ("c", 0.35), ("d", 0.4))}
    scores = _ConfirmScores(outcomes)
    chosen, info = _confirm(scores, [cand["b"], cand["c"], cand["d"]], [cand["u"]], 0.05)
    assert chosen is cand["c"] and scores.asked == ["u", "b", "c", "d"]  # every finalist is confirmed
    assert [t["passed"] for t in info["tried"]] == [True, True, False]
    assert [t["kept"] for t in info["tried"]] == [False, True, False] and info["level"] == pytest.approx(0.05 / 3)


def test_the_fitted_candidate_is_confirmed_whatever_it_scored():
    from qpolicy.select import Candidate, _finalists

    cands = [Candidate(source=f"c{i}", assignment={"p": i}, val_loss=0.1 * i, val_top1=90.0) for i in range(8)]
    shuffled = cands[::-1]
    assert _finalists(shuffled, None, 3) == cands[:3]
    assert _finalists(shuffled, cands[6], 3) == [*cands[:3], cands[6]]  # 7th by score: confirmed too
    assert _finalists(shuffled, cands[1], 3) == cands[:3]  # among the best: not twice
    uniform = Candidate(source="uniform w4a4", assignment={"p": 9}, val_loss=0.0, val_top1=90.0)
    assert _finalists(shuffled, uniform, 3) == cands[:3]  # a fitted policy that is uniform is no finalist


def test_uniform_candidates_are_widest_first_and_fit():
    m = TinyConvNet()
    problem = _problem(m, Budget(bitops=0.3))
    cands = _uniform_candidates(problem, 3)
    assert len(cands) == 3 and cands[0][0] == "uniform w4a4"
    assert all(fits(problem, total_cost(problem, a)) for _, a in cands)


def test_validated_search_keeps_uniform_unless_a_candidate_passes_the_confirmation():
    m = TinyConvNet()
    data = random_loader(64, batch_size=16)
    budget = Budget(bitops=0.3)
    res = search_validated(m, budget, calib=data, val=data, metric_data=data, first_last=None,
                           config=SelectConfig(metrics=("qerror",), bits=(2, 4, 8), val_images=32,
                                               refine_evaluations=3, proposals=2, bn_batches=2, act_batches=1,
                                               confirm_candidates=2))
    sel = res.extra["selection"]
    assert res.cost.bitops_rel_w8a8 <= 0.3 + 1e-9
    # the metric's ILP at 4 activation scales, 2 uniform candidates, refinement, the fitted candidate, confirmation
    # (2 uniform + 2 + the fitted one)
    assert sel["evaluations"] <= 4 + 2 + 3 + 1 + 2 + 3
    bits = [c["bits"] for c in sel["measured"]]
    assert len(set(bits)) == len(bits)  # a candidate found twice is measured once
    others = sorted((c for c in sel["measured"] if not c["source"].startswith("uniform")),
                    key=lambda c: c["val_loss"])
    conf = sel["confirmation"]
    assert others and conf is not None  # non-uniform candidates are always confirmed, whatever uniform scored
    fitted = sel["fitted"]
    assert fitted is not None and len(fitted["slopes"]) == 2  # qerror's weight and activation slopes
    # the fitted candidate was measured (or found among the measured), under the bits the fit chose
    assert any(c["source"] == fitted["source"] and c["bits"] == fitted["bits"] for c in sel["measured"])
    expected = [c["source"] for c in others[:2]]
    if not fitted["source"].startswith("uniform") and fitted["bits"] not in [c["bits"] for c in others[:2]]:
        expected.append(fitted["source"])  # here it scored 5th of 6
    assert [t["source"] for t in conf["tried"]] == expected  # the best-scoring two, and the fitted one
    assert conf["level"] == pytest.approx(0.05 / len(expected))
    passed = [t for t in conf["tried"] if t["passed"]]
    if passed:  # of those that passed, the lowest loss on the confirmation images
        kept = min(passed, key=lambda t: t["val_loss"])
        assert [t["kept"] for t in conf["tried"]] == [t is kept for t in conf["tried"]]
        assert res.policy.provenance["chosen"] == kept["source"]
    else:  # none passed: a uniform candidate
        assert not conf["kept"] and res.policy.provenance["chosen"].startswith("uniform")
    # the model is not changed by the search
    ref = TinyConvNet()
    assert all((a == b).all() for a, b in zip(m.state_dict().values(), ref.state_dict().values(), strict=True))
    uniform_policy(m, "w4a4").validate(m)


def test_select_config_checks():
    with pytest.raises(UnknownNameError, match="did you mean"):
        SelectConfig(metrics=("fishr",))
    with pytest.raises(ConfigError, match="val_images"):
        SelectConfig(val_images=0)
    with pytest.raises(ConfigError, match="at least one"):
        SelectConfig(metrics=(), uniform_candidates=0)
    for bad in ((), (1.0, 0.0), "2", (True,)):
        with pytest.raises(ConfigError, match="act_scales must be a non-empty list of positive numbers"):
            SelectConfig(act_scales=bad)
    assert SelectConfig(act_scales=[1, 2]).act_scales == (1.0, 2.0)
    with pytest.raises(ConfigError, match="confirm_candidates"):
        SelectConfig(confirm_candidates=0)


def test_a_search_on_a_model_that_memorized_the_validation_images_warns_once(caplog, monkeypatch):
    import logging

    from qpolicy import select
    from qpolicy.testing import TinyConvNet

    monkeypatch.setattr(select, "_WARNED", set())

    class Split(list):
        split = "val"

    model = TinyConvNet()
    assert not select.warn_if_memorized(model, Split())  # a model trained here: nothing to say
    model.sees_validation, model.zoo_name = True, "resnet20"
    with caplog.at_level(logging.WARNING, logger="qpolicy.select"):
        other = Split()
        other.split = "select"
        assert not select.warn_if_memorized(model, other)  # chosen on the test split's select half: fine
        assert select.warn_if_memorized(model, Split())
        assert not select.warn_if_memorized(model, Split())  # once
    assert sum("trained on the validation images" in r.getMessage() for r in caplog.records) == 1


def test_published_resnets_say_they_saw_the_validation_split():
    from qpolicy import models

    assert models.spec("resnet20").sees_validation and "50,000" in models.spec("resnet20").trained_on
    assert not models.spec("resnet8").sees_validation and "45,000" in models.spec("resnet8").trained_on
    assert models.load("resnet20", pretrained=False).sees_validation is False  # random weights saw nothing


def test_the_search_scores_the_ptq_that_is_deployed():
    """Min-max activation ranges grow with the data they see: the scorer calibrates on the deployed number of
    batches, so a policy's score is its deployed loss (old code: 2 batches, whatever was deployed)."""
    import torch

    from qpolicy.pipeline import evaluate_policy
    from qpolicy.quant import CalibConfig
    from qpolicy.select import _Scorer

    torch.manual_seed(0)
    m = TinyConvNet()
    calib = [torch.randn(16, 3, 16, 16) * (1 + 2 * (i == 5)) for i in range(6)]  # batch 5 widens the ranges
    val = random_loader(48, batch_size=16)
    deployed = CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False, batches=6)
    score = _Scorer(m, quantizable_layers(m), calib, val, deployed, SelectConfig(val_images=48, confirm_images=0),
                    "cpu")
    assert score.config.batches == 6 and len(score.calib) == 6
    policy = uniform_policy(m, "w4a3")
    loss, top1 = score({n: (b.weight_bits, b.act_bits) for n, b in policy.layers.items()})
    ev = evaluate_policy(m, policy, test=val, calib=calib, calib_config=deployed, device="cpu")
    assert loss == pytest.approx(ev.accuracy.loss, rel=1e-6) and top1 == pytest.approx(ev.accuracy.top1)
    # on fewer batches (what the search used to score) the ranges, and the loss, differ
    short = _Scorer(m, quantizable_layers(m), calib, val, deployed,
                    SelectConfig(val_images=48, confirm_images=0, act_batches=2), "cpu")
    assert short({n: (b.weight_bits, b.act_bits) for n, b in policy.layers.items()})[0] != pytest.approx(loss,
                                                                                                      rel=1e-3)


def test_the_confirmation_measures_the_model_the_policy_deploys():
    """Candidates are scored on fewer BatchNorm batches than deployment re-estimates on; the confirmation must test
    the deployed PTQ model itself (old code: the scoring one, whose BatchNorm statistics and ranges differ, so a
    candidate could pass on calibration luck it loses when deployed)."""
    import torch

    from qpolicy.pipeline import evaluate_policy
    from qpolicy.quant import CalibConfig
    from qpolicy.select import _Scorer

    torch.manual_seed(0)
    m = TinyConvNet()
    calib = [torch.randn(16, 3, 8, 8) * (1 + i / 2) for i in range(6)]  # later batches differ: 2 vs 6 matters
    val = list(random_loader(48, batch_size=16))
    deployed = CalibConfig(bn_batches=6, batches=2)  # MSE ranges, BatchNorm re-estimated on all 6 batches
    score = _Scorer(m, quantizable_layers(m), calib, val, deployed,
                    SelectConfig(val_images=16, confirm_images=32, bn_batches=2), "cpu")
    assert len(score.calib) == 2 and len(score.deployed_calib) == 6 and score.confirm_images == 32
    policy = uniform_policy(m, "w4a3")
    assign = {n: (b.weight_bits, b.act_bits) for n, b in policy.layers.items()}
    loss, ok = score.confirm_(assign)
    ev = evaluate_policy(m, policy, test=val[1:], calib=calib, calib_config=deployed, device="cpu")
    assert float(loss.mean()) == pytest.approx(ev.accuracy.loss, rel=1e-6)
    assert 100 * float(ok.double().mean()) == pytest.approx(ev.accuracy.top1)
    scored, _ = score._measure(assign, score.confirm)  # the scoring calibration: another model
    assert float(scored.mean()) != pytest.approx(ev.accuracy.loss, rel=1e-3)


def test_select_config_rejects_bad_batch_counts():
    with pytest.raises(ConfigError, match="act_batches"):
        SelectConfig(act_batches=0)
    with pytest.raises(ConfigError, match="act_samples"):
        SelectConfig(act_samples=0)


def _latency_budget(model, limit_ms):
    """A latency table of TinyConvNet priced by hand: all int8 1.0 ms, float model 0.5 ms; each layer -0.1 ms in
    float, +0.1 ms at W8A8 (a CPU where float kernels win, as on the digits CNN)."""
    from qpolicy.latency import LatencyTable, Stat, layer_signature

    def st(v):
        return Stat(median=v, q1=v, q3=v, n=1)

    layers = quantizable_layers(model)
    table = LatencyTable(model=None, target="ort-cpu", layers=layer_signature(layers), batches=(1,), base="int8",
                         base_ms={1: st(1.0)}, float_ms={1: st(0.5)},
                         delta_ms={li.name: {"float": {1: st(-0.1)}, "int8w8": {1: st(0.1)}} for li in layers})
    return Budget(latency_ms=limit_ms, latency_table=table, latency_batch=1)


def test_float_moves_switch_one_layer_to_float_and_back():
    from qpolicy.search.base import FLOAT_CHOICE
    from qpolicy.select import _float_step

    m = TinyConvNet()
    layers = quantizable_layers(m)
    zeros = {li.name: dict.fromkeys((2, 4, 8), 0.0) for li in layers}
    table = SensitivityTable(metric="x", bits=(2, 4, 8), layers=tuple(layers), weight=zeros, act=zeros)
    problem = build_problem(table, _latency_budget(m, 1.0), act_bits=8, first_last=None, float_layers=True)
    start = {n: (4, 8) for n in problem.choices} | {"conv1": FLOAT_CHOICE}  # 1.0 - 0.1 = 0.9 ms
    assert _float_step(problem, start, "conv1", True) is None  # already float
    assert _float_step(problem, start, "conv1", False) == {**start, "conv1": (8, 8)}  # back to the widest integer
    assert _float_step(problem, start, "dw", False) is None  # not float
    moves = _moves(problem, start)
    assert all(fits(problem, total_cost(problem, mv)) for mv in moves)
    assert {**start, "dw": FLOAT_CHOICE} in moves  # one more float layer: 0.8 ms
    assert {**start, "dw": (8, 8)} in moves  # one layer to W8A8: 0.9 + 0.1 = 1.0 ms, the limit
    # conv1 back to integer (W8A8: 1.1 ms) is over the limit, and no down step elsewhere makes it faster
    assert not any(mv["conv1"] != FLOAT_CHOICE for mv in moves)
    assert len(moves) == 3 * 2  # dw, pw, fc: each to float or to W8A8


def test_validated_search_with_float_as_a_choice_under_a_latency_budget():
    m = TinyConvNet()
    data = random_loader(64, batch_size=16)
    budget = _latency_budget(m, 0.9)  # all int8 runs 1.0 ms: only policies with a float layer fit
    cfg = SelectConfig(metrics=("qerror",), bits=(2, 4, 8), val_images=32, refine_evaluations=3, proposals=2,
                       bn_batches=2, act_batches=1)
    with pytest.raises(InfeasibleBudgetError, match="smallest achievable predicted latency 1 ms"):  # no float: 1.0
        search_validated(m, budget, calib=data, val=data, metric_data=data, first_last=None, act_bits=8, config=cfg)
    res = search_validated(m, budget, calib=data, val=data, metric_data=data, first_last=None, act_bits=8,
                           config=cfg, float_layers=True)
    sel = res.extra["selection"]
    sources = [c["source"] for c in sel["measured"]]
    assert "uniform wfaf" in sources  # the float model is a candidate (0.5 ms)
    assert all("wfaf" in c["bits"] and c["cost"]["latency_ms"] <= 0.9 + 1e-9 for c in sel["measured"])
    assert res.policy.provenance["predicted_latency_ms"] <= 0.9 + 1e-9
    assert any(lb.is_float for lb in res.policy.layers.values())
    assert all(lb.weight_bits is None and lb.act_bits is None for lb in res.policy.layers.values() if lb.is_float)
