import pytest

from qpolicy.budget import Budget
from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.layers import quantizable_layers
from qpolicy.policy import uniform_policy
from qpolicy.search.base import build_problem, fits, ties_hold, total_cost
from qpolicy.select import SelectConfig, _moves, _uniform_candidates, search_validated
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


def test_uniform_candidates_are_widest_first_and_fit():
    m = TinyConvNet()
    problem = _problem(m, Budget(bitops=0.3))
    cands = _uniform_candidates(problem, 3)
    assert len(cands) == 3 and cands[0][0] == "uniform w4a4"
    assert all(fits(problem, total_cost(problem, a)) for _, a in cands)


def test_validated_search_never_scores_below_its_uniform_candidates():
    m = TinyConvNet()
    data = random_loader(64, batch_size=16)
    budget = Budget(bitops=0.3)
    res = search_validated(m, budget, calib=data, val=data, metric_data=data, first_last=None,
                           config=SelectConfig(metrics=("qerror",), bits=(2, 4, 8), val_images=32,
                                               refine_evaluations=3, proposals=2, bn_batches=2, act_batches=1))
    sel = res.extra["selection"]
    assert res.cost.bitops_rel_w8a8 <= 0.3 + 1e-9
    assert res.policy.provenance["val_loss"] <= sel["best_uniform"]["val_loss"]
    assert sel["evaluations"] <= 1 + 2 + 3 + 3  # metric, 2 uniform candidates, refinement, confirmation (1 + 2)
    conf = sel["confirmation"]
    if conf is None or conf["kept"]:  # the lowest validation score, confirmed on other images
        assert res.policy.provenance["val_loss"] == min(c["val_loss"] for c in sel["measured"])
    else:  # the confirmation images preferred the best uniform candidate
        assert res.policy.provenance["chosen"] == sel["best_uniform"]["source"]
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
