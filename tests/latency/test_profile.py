"""profile_latency on a tiny network: the measurement plan (what is timed, how often) and the cache."""

import pytest

from qpolicy.errors import ConfigError, UnknownNameError
from qpolicy.latency import LatencyTable, ProfileConfig, load_or_profile, profile_latency
from qpolicy.latency import profile as profile_mod
from qpolicy.policy import uniform_policy
from qpolicy.testing import TinyConvNet, random_loader

pytest.importorskip("onnxruntime")
FAST = ProfileConfig(batches=(1, 3), repeats=3, run_ms=0.5, threads=1, max_repeats=None)


def test_profile_measures_every_layer_at_every_other_precision_in_pairs():
    model = TinyConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = profile_latency(model, calib=random_loader(16, batch_size=8), config=FAST, model_name="tiny")
    assert all(v.equal(model.state_dict()[k]) for k, v in before.items())  # the model is not changed
    assert list(t.layers) == ["conv1", "dw", "pw", "fc"] and t.layers["conv1"] == "conv 3x8x8 -> 8x8x8"
    assert t.batches == (1, 3) and t.base == "int8"
    for name in t.layers:
        assert set(t.delta_ms[name]) == {"float", "int8w8"}
        assert all(s.n == 3 and s.q1 <= s.median <= s.q3 for per in t.delta_ms[name].values() for s in per.values())
    # the three consecutive pairs in float together
    assert list(t.float_pairs_ms) == ["conv1>dw", "dw>pw", "pw>fc"] and all(
        set(per) == {1, 3} and per[1].n == 3 for per in t.float_pairs_ms.values())
    # the base model is timed beside every variant: 3 repeats against float plus 3 per (layer, precision) and pair
    assert all(t.base_ms[b].n == 3 * (1 + 4 * 2 + 3) and t.float_ms[b].n == 3 for b in (1, 3))
    assert all(t.base_ms[b].median > 0 and t.float_ms[b].median > 0 for b in (1, 3))
    prov = t.provenance
    assert prov["threads"] == 1 and prov["repeats"] == 3 and prov["machine"]["cpu"] and prov["versions"]["onnxruntime"]
    w4 = uniform_policy(model, "w4a8", first_last="same")
    assert t.predict(w4, batch=3) == t.base_ms[3].median
    off = profile_latency(model, calib=random_loader(16, batch_size=8), model_name="tiny",
                          config=ProfileConfig(batches=(1,), repeats=3, run_ms=0.5, threads=1, float_pairs=False,
                                              max_repeats=None))
    assert off.float_pairs_ms == {} and off.base_ms[1].n == 3 * (1 + 4 * 2)


def test_the_table_file_is_the_cache(tmp_path, monkeypatch):
    model, path = TinyConvNet(), tmp_path / "lat.json"
    t, reused = load_or_profile(path, model, calib=random_loader(16, batch_size=8), config=FAST)
    assert not reused and LatencyTable.load(path) == t

    def fail(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(profile_mod, "profile_latency", fail)
    again, reused = load_or_profile(path, model, calib=random_loader(16, batch_size=8), config=FAST)
    assert reused and again == t
    with pytest.raises(AssertionError, match="measured again"):  # other batch sizes, or --force: a new measurement
        load_or_profile(path, model, calib=random_loader(16), config=ProfileConfig(batches=(1,), threads=1))
    with pytest.raises(AssertionError, match="measured again"):
        load_or_profile(path, model, calib=random_loader(16), config=FAST, force=True)
    with pytest.raises(AssertionError, match="measured again"):  # another model's table is not reused
        load_or_profile(path, TinyConvNet(num_classes=5), calib=random_loader(16), config=FAST)


@pytest.mark.parametrize(("kw", "match"), [({"batches": ()}, "batch sizes"), ({"batches": (1, 1)}, "differ"),
                                           ({"repeats": 2}, "repeats"), ({"run_ms": 0}, "run_ms"),
                                           ({"threads": -1}, "threads"), ({"batches": [1]}, "batch sizes"),
                                           ({"repeats": 15, "max_repeats": 10}, "max_repeats"),
                                           ({"max_repeats": 2000}, "max_repeats"), ({"precision": 0}, "precision"),
                                           ({"precision": 1.5}, "precision")])
def test_bad_profile_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        ProfileConfig(**kw)
    with pytest.raises(UnknownNameError, match="did you mean"):
        ProfileConfig(target="ort-gpu")


def test_an_uncertain_entry_gets_more_repeats_up_to_the_limit(monkeypatch):
    """``_more``: 5 more pairs at a time while the median's standard error exceeds the precision, up to max_repeats;
    a precise entry stops at ``repeats``. Timings are scripted (base 1 ms; the variant 1.2 ms with or without a
    spread of +-0.3 ms), so the counts are exact."""
    calls = []

    def scripted(noisy):
        def fake(base, other, feed, repeats, runs):
            calls.append(repeats)
            k = len(calls)
            return [1.0] * repeats, [1.2 + (0.3 * (-1) ** i if noisy else 0.0) * (k % 3 + 1) / 3
                                     for i in range(repeats)]
        return fake

    cfg = ProfileConfig(repeats=15, max_repeats=27, precision=0.01)
    monkeypatch.setattr(profile_mod, "_paired", scripted(False))
    a, b = profile_mod._paired(None, None, {}, 15, 1)
    profile_mod._more(cfg, None, None, {}, 1, a, b, lambda a, b: [y - z for y, z in zip(b, a, strict=True)])
    assert len(b) == 15 and calls == [15]  # spread 0: certain at once
    calls.clear()
    monkeypatch.setattr(profile_mod, "_paired", scripted(True))
    a, b = profile_mod._paired(None, None, {}, 15, 1)
    profile_mod._more(cfg, None, None, {}, 1, a, b, lambda a, b: [y - z for y, z in zip(b, a, strict=True)])
    assert len(a) == len(b) == 27 and calls == [15, 5, 5, 2]  # the last step stops at max_repeats
    # the standard error of a median from its quartiles: IQR 0.6 over 16 values -> 1.2533 * 0.6 / 1.349 / 4
    assert profile_mod._median_se([0.0] * 4 + [0.9] * 4 + [1.2] * 4 + [1.5] * 4) == pytest.approx(
        1.2533 * 0.6 / 1.349 / 4, rel=1e-3)
    calls.clear()
    profile_mod._more(ProfileConfig(repeats=15, max_repeats=None), None, None, {}, 1, a[:15], b[:15], lambda a, b: b)
    assert calls == []  # max_repeats None: exactly repeats
