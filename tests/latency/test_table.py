"""The latency table by hand: its additive prediction, its checks, its file."""

import json

import pytest

from qpolicy.errors import ConfigError, PolicyError
from qpolicy.latency import LatencyTable, Stat, layer_signature
from qpolicy.layers import LayerInfo
from qpolicy.policy import LayerBits, Policy


def _layers(n=3):
    return [LayerInfo(name=f"l{i}", kind="conv", params=100, macs=1000, in_shape=(4, 8, 8), out_shape=(4, 8, 8),
                      order=i) for i in range(n)]


def _s(v):
    return Stat(median=v, q1=v - 0.01, q3=v + 0.01, n=5)


def table(batches=(1,)):
    """Base (all int8) 2.0 ms, float 3.0 ms; per layer: float +0.5/+0.25/+1.0, int8w8 +0.1/+0.2/+0.3 (batch 1)."""
    deltas = {"l0": (0.5, 0.1), "l1": (0.25, 0.2), "l2": (1.0, 0.3)}
    return LatencyTable(
        model="toy", target="ort-cpu", layers=layer_signature(_layers()), batches=batches, base="int8",
        base_ms={b: _s(2.0 * b) for b in batches}, float_ms={b: _s(3.0 * b) for b in batches},
        delta_ms={n: {"float": {b: _s(f * b) for b in batches}, "int8w8": {b: _s(w * b) for b in batches}}
                  for n, (f, w) in deltas.items()},
        provenance={"created": "2026-12-06T00:00:00+00:00"})


def test_prediction_is_base_plus_each_layers_change_by_hand():
    t = table()
    w4a8 = {f"l{i}": (4, 8) for i in range(3)}
    assert t.predict(w4a8) == pytest.approx(2.0)  # the base itself: every layer int8
    # l0 float (+0.5), l1 int8 (0), l2 W8A8 (+0.3): 2.8 ms; a weight-only quantized layer with a float input runs
    # as float too
    mixed = Policy(layers={"l0": LayerBits(weight_bits=4, act_bits=None), "l1": LayerBits(weight_bits=2, act_bits=8),
                           "l2": LayerBits(weight_bits=8, act_bits=8)})
    assert t.predict(mixed) == pytest.approx(2.8)
    assert t.predict({n: (None, None) for n in w4a8}) == pytest.approx(3.0)  # the float model, as measured
    assert t.predict({"l0": (None, None), "l1": (None, None), "l2": (8, 8)}) == pytest.approx(2.0 + 0.5 + 0.25 + 0.3)
    assert t.precisions("l1") == ("int8", "float", "int8w8")


def test_neighbouring_float_layers_by_hand():
    """l0 and l1 in float together measured +0.55 ms: 0.2 less than their single entries (0.5 + 0.25), the
    quantize/dequantize pair between them they no longer need."""
    import dataclasses

    t = dataclasses.replace(table(), float_pairs_ms={"l0>l1": {1: _s(0.55)}})
    assert t.pair_terms(1) == [("l0", "l1", pytest.approx(-0.2))]
    assert t.predict({"l0": (None, None), "l1": (None, None), "l2": (4, 8)}) == pytest.approx(2.0 + 0.55)
    assert t.predict({"l0": (None, None), "l1": (4, 8), "l2": (None, None)}) == pytest.approx(2.0 + 0.5 + 1.0)
    with pytest.raises(PolicyError, match="not two consecutive layers"):
        dataclasses.replace(table(), float_pairs_ms={"l0>l2": {1: _s(0.55)}})
    with pytest.raises(PolicyError, match="needs the batch sizes"):
        dataclasses.replace(table(), float_pairs_ms={"l0>l1": {8: _s(0.55)}})
    assert LatencyTable.from_dict(t.to_dict()) == t


def test_prediction_refuses_what_the_target_cannot_run_and_other_layers():
    t = table()
    with pytest.raises(ConfigError, match=r"no kernel for l1 \(W4A4\)"):
        t.predict({"l0": (4, 8), "l1": (4, 4), "l2": (4, 8)})
    with pytest.raises(PolicyError, match="different layers"):
        t.predict({"l0": (4, 8), "l1": (4, 8)})
    with pytest.raises(ConfigError, match="batch sizes \\[1\\], not 64"):
        t.predict({f"l{i}": (4, 8) for i in range(3)}, batch=64)
    t2 = table(batches=(1, 64))
    with pytest.raises(ConfigError, match="say which one"):
        t2.predict({f"l{i}": (4, 8) for i in range(3)})
    assert t2.predict({f"l{i}": (8, 8) for i in range(3)}, batch=64) == pytest.approx(64 * (2.0 + 0.6))


def test_a_table_prices_only_the_model_it_was_measured_on():
    t = table()
    t.check_layers(_layers())
    other = _layers()
    other[1] = LayerInfo(name="l1", kind="conv", params=100, macs=1000, in_shape=(4, 16, 16), out_shape=(4, 8, 8),
                         order=1)
    with pytest.raises(PolicyError, match="measured on toy .*differ at \\['l1'\\]"):
        t.check_layers(other, model="big")
    with pytest.raises(PolicyError, match="3 layers\\), not on this model \\(2 layers"):
        t.check_layers(_layers(2))


def test_a_table_of_another_target_is_refused():
    t = table()
    t.check_target("ort-cpu")
    t.check_target(None)
    with pytest.raises(ConfigError, match="measured on ort-cpu, not on ort-cuda"):
        t.check_target("ort-cuda")


def test_file_round_trip_and_corrupt_tables(tmp_path):
    t = table(batches=(1, 8))
    path = tmp_path / "lat.json"
    t.save(path)
    assert LatencyTable.load(path) == t
    data = json.loads(path.read_text())
    assert data["format"] == "qpolicy.latency" and data["delta_ms"]["l2"]["float"]["8"]["median"] == 8.0

    def bad(mutate, match):
        d = json.loads(path.read_text())
        mutate(d)
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(d))
        with pytest.raises(PolicyError, match=match):
            LatencyTable.load(p)

    bad(lambda d: d.update(format="qpolicy.sensitivity"), "not a qpolicy latency table")
    bad(lambda d: d.update(version=99), "version 99")
    bad(lambda d: d.pop("base_ms"), "missing field 'base_ms'")
    bad(lambda d: d["delta_ms"]["l0"]["float"]["1"].update(q1=5.0), "bracket the median")
    bad(lambda d: d["delta_ms"]["l0"]["float"].pop("8"), "needs the batch sizes")
    bad(lambda d: d["delta_ms"]["l0"].update(int4={}), "precision 'int4' is not one of")
    bad(lambda d: d["delta_ms"].pop("l2"), "missing \\['l2'\\]")
    bad(lambda d: d["float_ms"]["1"].update(median="fast"), "finite number")
    bad(lambda d: d.update(batches=[1, 0]), "positive integer")
    (tmp_path / "trunc.json").write_text(path.read_text()[:100])
    with pytest.raises(PolicyError):
        LatencyTable.load(tmp_path / "trunc.json")
