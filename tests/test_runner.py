import json
import os
import time

import pytest

from qpolicy.cli import main
from qpolicy.errors import ConfigError
from qpolicy.runner import RunManyError, RunStats, check_address, run_many


def square(shared, item):
    if item == 3:
        raise ValueError("three is not allowed")
    return shared["k"] * item * item


def test_serial_results_errors_and_resume(tmp_path):
    assert run_many(square, [1, 2, 4], shared={"k": 2}) == [2, 8, 32]
    res = tmp_path / "r.json"
    with pytest.raises(RunManyError, match=r"1 of 4 items failed: item 3: ValueError: three is not allowed") as e:
        run_many(square, [1, 2, 3, 4], shared={"k": 1}, results=res)
    assert e.value.results == [1, 4, None, 16]
    stats = RunStats()
    assert run_many(square, [1, 2, 4, 5], shared={"k": 1}, results=res, stats=stats) == [1, 4, 16, 25]
    assert (stats.resumed, stats.computed) == (3, 1)  # only 5 was computed
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        run_many(square, [1], workers=0)


def test_unreachable_address_fails_fast_and_clearly():
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        check_address("127.0.0.1:1")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_address("nowhere")
    assert time.perf_counter() - t < 5


def test_cli_rejects_bad_workers_and_addresses(tmp_path, capsys):
    from tests.test_fuzz import _table

    t = tmp_path / "t.json"
    t.write_text(json.dumps(_table()))
    for extra, msg in ((["--workers", "0"], "workers must be a positive integer"),
                       (["--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1")):
        code = main(["pareto", str(t), "--bitops", "0.2,0.4", "--evaluate", *extra, "-o", str(tmp_path / "f.json")])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and err.count("\n") == 1 and not (tmp_path / "f.json").exists()


def test_ray_gives_the_serial_results_and_resumes(local_ray, tmp_path):
    assert local_ray.cluster_resources().get("CPU") == 2
    items = [1, 2, 3, 4, 5]
    with pytest.raises(RunManyError) as serial:
        run_many(square, items, shared={"k": 3})
    stats = RunStats()
    res = tmp_path / "r.json"
    with pytest.raises(RunManyError, match="item 3: ValueError: three is not allowed") as on_ray:
        run_many(square, items, shared={"k": 3}, workers=2, results=res, stats=stats)
    assert on_ray.value.results == serial.value.results and stats.backend == "ray" and stats.computed == 4
    stats = RunStats()
    assert run_many(square, [1, 2, 4, 5, 6], shared={"k": 3}, workers=2, results=res, stats=stats) == \
        [3, 12, 48, 75, 108]
    assert (stats.resumed, stats.computed) == (4, 1)


def test_pareto_front_on_ray_equals_serial(local_ray, tmp_path):
    from qpolicy.pipeline import evaluate_front
    from qpolicy.quant import CalibConfig
    from qpolicy.search import pareto
    from qpolicy.sensitivity import analyze
    from qpolicy.testing import TinyConvNet, random_loader

    model = TinyConvNet()
    calib = random_loader(32, batch_size=16)
    test = random_loader(48, batch_size=16, seed=1)
    table = analyze(model, calib, metric="qerror", bits=(2, 4, 8))
    front = pareto(table, "bitops", [0.2, 0.35, 0.5, 0.8])
    cfg = CalibConfig(batches=1, bn_batches=1)
    serial = evaluate_front(model, front, test=test, calib=calib, calib_config=cfg, device="cpu")
    stats = RunStats()
    on_ray = evaluate_front(model, front, test=test, calib=calib, calib_config=cfg, device="cpu", workers=2,
                            results=tmp_path / "points.json", stats=stats)
    assert stats.backend == "ray"
    assert [p["policy"] for p in serial.points] == [p["policy"] for p in on_ray.points]
    assert [p["top1"] for p in serial.points] == [p["top1"] for p in on_ray.points]


def test_validated_search_on_ray_equals_serial(local_ray):
    from qpolicy.budget import Budget
    from qpolicy.select import SelectConfig, search_validated
    from qpolicy.testing import TinyConvNet, random_loader

    data = random_loader(64, batch_size=16)
    cfg = SelectConfig(metrics=("qerror",), bits=(2, 4, 8), val_images=32, refine_evaluations=4, proposals=2,
                       bn_batches=2, act_batches=1)
    kw = dict(calib=data, val=data, metric_data=data, first_last=None, config=cfg, device="cpu")
    serial = search_validated(TinyConvNet(), Budget(bitops=0.3), **kw)
    on_ray = search_validated(TinyConvNet(), Budget(bitops=0.3), workers=2, **kw)
    assert serial.policy.layers == on_ray.policy.layers
    a, b = serial.extra["selection"], on_ray.extra["selection"]
    assert [(c["source"], c["val_loss"]) for c in a["measured"]] == [(c["source"], c["val_loss"]) for c in
                                                                       b["measured"]]
    assert a["evaluations"] == b["evaluations"]


def test_evaluate_policies_evaluates_each_distinct_policy_once(tmp_path):
    from qpolicy import uniform_policy
    from qpolicy.pipeline import evaluate_policies
    from qpolicy.quant import CalibConfig
    from qpolicy.testing import TinyConvNet, random_loader

    model = TinyConvNet()
    data = random_loader(32, batch_size=16)
    a, b = uniform_policy(model, "w4a8"), uniform_policy(model, "w2a4")
    stats = RunStats()
    out = evaluate_policies(model, [a, b, a], test=data, calib=data, calib_config=CalibConfig(batches=1,
                            bn_batches=1), device="cpu", results=tmp_path / "r.json", stats=stats)
    assert stats.computed == 2 and out[0] == out[2] and [set(r) for r in out] == [{"top1", "eval_seconds"}] * 3
    # per-sample outcomes: a separate result (the cached ones have none), agreeing with the top-1
    from qpolicy.stats import unpack_outcomes

    each = evaluate_policies(model, [a, b], test=data, calib=data, calib_config=CalibConfig(batches=1, bn_batches=1),
                             device="cpu", results=tmp_path / "r.json", per_sample=True)
    for r, plain in zip(each, out, strict=False):
        v = unpack_outcomes(r["per_sample"])
        assert len(v) == 32 and set(v) <= {0.0, 1.0} and 100 * v.mean() == pytest.approx(r["top1"]) and \
            r["top1"] == plain["top1"]


def test_cli_workers_only_where_something_is_distributed(tmp_path, capsys):
    from tests.test_fuzz import _table

    t = tmp_path / "t.json"
    t.write_text(json.dumps(_table()))
    code = main(["search", str(t), "--budget", "bitops=0.4", "--workers", "2", "-o", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--workers and --ray-address apply to the strategies that measure" in err
    assert err.count("\n") == 1 and not (tmp_path / "p.json").exists()
    for cmd in (["search", str(t), "--budget", "bitops=0.4", "--workers", "0"],
                ["certify", "--model", "resnet20", "-o", str(tmp_path / "c"), "--workers", "0"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "workers must be a positive integer" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_gpu_share_per_task():
    from qpolicy.runner import _gpus_per_task

    class FakeRay:
        def __init__(self, res):
            self.res = res

        def cluster_resources(self):
            return self.res

    assert _gpus_per_task(FakeRay({"CPU": 2.0})) == 0.0  # no GPU: ask for none
    assert _gpus_per_task(FakeRay({"CPU": 16.0, "GPU": 1.0})) == 1 / 16  # 16 tasks share the one GPU
    assert _gpus_per_task(FakeRay({"CPU": 2.0, "GPU": 4.0})) == 1.0  # never more than one per task


def dies_once(marker, item):
    """Kills its own worker process the first time it sees item 2 (the marker file remembers)."""
    from pathlib import Path

    if item == 2 and not Path(marker).exists():
        Path(marker).write_text("died")
        os._exit(1)
    return item * 10


def test_a_dead_worker_is_retried_and_reported_when_it_keeps_dying(local_ray, tmp_path):
    assert run_many(dies_once, [1, 2, 3], shared=str(tmp_path / "m"), workers=2) == [10, 20, 30]
    assert (tmp_path / "m").exists()  # it did die once
    with pytest.raises(RunManyError, match=r"1 of 3 items failed: item 2: its worker died") as e:
        run_many(dies_once, [1, 2, 3], shared=str(tmp_path / "n"), workers=2, retries=0)
    assert e.value.results == [10, None, 30]
