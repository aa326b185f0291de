"""measure_latency on a tiny network: what is exported and timed, the record beside the table's prediction, its
file, and bad input refused before any work."""

import json

import onnx
import pytest

from qpolicy.errors import ConfigError, PolicyError
from qpolicy.latency import LatencyMeasurement, LatencyTable, ProfileConfig, Stat, measure_latency, profile_latency
from qpolicy.policy import LayerBits, Policy, uniform_policy
from qpolicy.testing import TinyConvNet, random_loader

pytest.importorskip("onnxruntime")
FAST = ProfileConfig(batches=(1, 3), repeats=3, run_ms=0.5, threads=1, max_repeats=None)


@pytest.fixture(scope="module")
def table():
    return profile_latency(TinyConvNet(), calib=random_loader(16, batch_size=8), config=FAST, model_name="tiny")


def _ops(path):
    return {n.op_type for n in onnx.load(path).graph.node}


def test_each_policy_is_exported_as_it_ships_and_timed_beside_the_prediction(table, tmp_path):
    model = TinyConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w8 = uniform_policy(model, "w8a8", first_last="same")
    mixed = w8.replace_layers({"conv1": LayerBits(weight_bits=None, act_bits=None)})
    flt = Policy(layers={n: LayerBits(weight_bits=None, act_bits=None) for n in w8.layers})
    recs = measure_latency(model, [w8, mixed, flt], calib=random_loader(16, batch_size=8), config=FAST, table=table,
                           model_name="tiny", onnx_dir=tmp_path / "onnx")
    assert all(v.equal(model.state_dict()[k]) for k, v in before.items())  # the model is not changed
    assert [r.policy for r in recs] == [w8, mixed, flt]
    for r in recs:
        assert r.batches == (1, 3) and r.target == "ort-cpu" and r.model == "tiny"
        assert all(r.measured_ms[b].n == 3 and r.base_ms[b].n == 3 and r.measured_ms[b].median > 0 for b in (1, 3))
        assert r.predicted_ms == {b: table.predict(r.policy, b) for b in (1, 3)}
        assert r.table_base_ms == {b: table.base_ms[b].median for b in (1, 3)}
        assert r.provenance["threads"] == 1 and r.provenance["repeats"] == 3 and r.provenance["calib"]
    # what was timed: int8 kernels only; int8 kernels with a float first layer; the float model itself
    ops = [_ops(r.onnx) for r in recs]
    assert "QLinearConv" in ops[0] and "Conv" not in ops[0]
    assert "QLinearConv" in ops[1] and "Conv" in ops[1]
    assert not any(o.startswith("QLinear") for o in ops[2]) and "QuantizeLinear" not in ops[2]
    # the file round-trips, and records the error and the drift for a reader
    recs[0].save(tmp_path / "m.json")
    assert LatencyMeasurement.load(tmp_path / "m.json") == recs[0]
    d = json.loads((tmp_path / "m.json").read_text())
    assert d["format"] == "qpolicy.latency-measure" and d["batches"]["3"]["error"] == recs[0].error(3)


def test_error_and_drift_by_hand():
    def st(v):
        return Stat(median=v, q1=v, q3=v, n=1)

    pol = Policy(layers={"a": LayerBits(weight_bits=8, act_bits=8)})
    r = LatencyMeasurement(model=None, target="ort-cpu", policy=pol, measured_ms={1: st(2.0), 8: st(10.0)},
                           base_ms={1: st(1.1), 8: st(6.0)}, predicted_ms={1: 1.8}, table_base_ms={1: 1.0})
    assert r.error(1) == pytest.approx(0.1) and r.drift(1) == pytest.approx(0.1)  # |1.8 - 2| / 2; 1.1 / 1 - 1
    assert r.error(8) is None and r.drift(8) is None  # no table entry at batch 8
    with pytest.raises(PolicyError, match="same batch sizes"):
        LatencyMeasurement(model=None, target="ort-cpu", policy=pol, measured_ms={1: st(2.0)}, base_ms={})
    with pytest.raises(PolicyError, match="not measured"):
        LatencyMeasurement(model=None, target="ort-cpu", policy=pol, measured_ms={1: st(2.0)}, base_ms={1: st(1.0)},
                           predicted_ms={4: 1.0})
    with pytest.raises(PolicyError, match="positive milliseconds"):
        LatencyMeasurement(model=None, target="ort-cpu", policy=pol, measured_ms={1: st(2.0)}, base_ms={1: st(1.0)},
                           predicted_ms={1: -1.0})


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(format="qpolicy.latency"), "not a qpolicy latency measurement"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.pop("policy"), "missing field 'policy'"),
    (lambda d: d["batches"]["1"].pop("base_ms"), "missing field 'base_ms'"),
    (lambda d: d["batches"]["1"]["measured_ms"].update(median="fast"), "finite number"),
    (lambda d: d.update(batches={"one": d["batches"]["1"]}), "not an integer"),
    (lambda d: d.update(batches=[]), "map batch sizes"),
])
def test_corrupt_measurement_files(edit, match):
    st = Stat(median=1.0, q1=0.9, q3=1.1, n=3)
    d = LatencyMeasurement(model="m", target="ort-cpu", policy=Policy(layers={"a": LayerBits(weight_bits=8,
                                                                                               act_bits=8)}),
                           measured_ms={1: st}, base_ms={1: st}).to_dict()
    edit(d)
    with pytest.raises(PolicyError, match=match):
        LatencyMeasurement.from_dict(d, source="m.json")


def test_bad_input_is_refused_before_any_work(table, monkeypatch):
    from qpolicy.latency import profile as profile_mod

    def fail(*a, **k):
        raise AssertionError("timed")

    monkeypatch.setattr(profile_mod, "_paired", fail)
    model, cal = TinyConvNet(), random_loader(16, batch_size=8)
    w4a4 = uniform_policy(model, "w4a4", first_last="same")
    with pytest.raises(ConfigError, match=r"policy 1: target ort-cpu has no kernel for conv1 \(w4a4\)"):
        measure_latency(model, [w4a4], calib=cal, config=FAST)
    with pytest.raises(ConfigError, match="at least one policy"):
        measure_latency(model, [], calib=cal, config=FAST)
    other = Policy(layers={"x": LayerBits(weight_bits=8, act_bits=8)})
    with pytest.raises(PolicyError, match="policy 1: policy does not match the model"):
        measure_latency(model, [other], calib=cal, config=FAST)
    w8 = uniform_policy(model, "w8a8", first_last="same")
    with pytest.raises(PolicyError, match="latency table was measured on"):  # another model's table
        measure_latency(TinyConvNet(num_classes=5), [uniform_policy(TinyConvNet(num_classes=5), "w8a8")],
                        calib=cal, config=FAST, table=table, model_name="other")
    with pytest.raises(ConfigError, match="batch"):  # a batch size the table has no entry for
        measure_latency(model, [w8], calib=cal, config=ProfileConfig(batches=(2,), threads=1), table=table)
    assert isinstance(table, LatencyTable)
