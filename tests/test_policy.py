import json

import pytest

from qpolicy.errors import BitWidthError, ConfigError, PolicyError, PolicyMismatchError
from qpolicy.policy import LayerBits, Policy, parse_uniform_spec, uniform_policy
from qpolicy.testing import ThreeLayerNet, TinyConvNet


def test_parse_uniform_spec():
    assert parse_uniform_spec("w4a8") == LayerBits(weight_bits=4, act_bits=8)
    assert parse_uniform_spec("W3A4") == LayerBits(weight_bits=3, act_bits=4)
    assert parse_uniform_spec("w4") == LayerBits(weight_bits=4, act_bits=None)
    assert parse_uniform_spec("wfa8") == LayerBits(weight_bits=None, act_bits=8)
    for bad in ("w9a8", "w1a8", "a8", "w4a", "4/8", ""):
        with pytest.raises(ConfigError, match="uniform spec"):
            parse_uniform_spec(bad)


@pytest.mark.parametrize("bits", [1, 9, 0, -3, 4.0, "4", True])
def test_layer_bits_rejects_out_of_range(bits):
    with pytest.raises(BitWidthError, match="2..8"):
        LayerBits(weight_bits=bits, act_bits=8)


def test_uniform_policy_first_last_rule():
    model = TinyConvNet()
    p = uniform_policy(model, "w4a4", model_name="tiny")
    assert p.names == ["conv1", "dw", "pw", "fc"]
    assert p["conv1"] == p["fc"] == LayerBits(weight_bits=8, act_bits=8)
    assert p["dw"] == p["pw"] == LayerBits(weight_bits=4, act_bits=4)
    same = uniform_policy(model, "w4a4", first_last="same")
    assert all(b == LayerBits(weight_bits=4, act_bits=4) for b in same.layers.values())
    flt = uniform_policy(model, "w4a4", first_last="float")
    assert flt["conv1"].is_float and flt["fc"].is_float
    w_only = uniform_policy(model, "w4", first_last=8)
    assert w_only["conv1"] == LayerBits(weight_bits=8, act_bits=None)
    with pytest.raises(ConfigError):
        uniform_policy(model, "w4a4", first_last="first")
    with pytest.raises(BitWidthError):
        uniform_policy(model, "w4a4", first_last=12)


def test_provenance_records_method_cost_and_versions():
    p = uniform_policy(ThreeLayerNet(), "w4a8", model_name="three")
    prov = p.provenance
    assert prov["method"] == "uniform" and prov["spec"] == "w4a8" and prov["first_last"] == 8
    assert set(prov["versions"]) == {"qpolicy", "torch", "python"}
    assert prov["cost"]["size_bytes"] == (18 * 8 + 8 * 4 + 192 * 8) / 8


def test_json_round_trip(tmp_path):
    p = uniform_policy(TinyConvNet(), "w3a4", model_name="tiny").replace_layers(
        {"dw": LayerBits(weight_bits=None, act_bits=None)})
    path = tmp_path / "sub" / "p.json"
    p.save(path)
    q = Policy.load(path)
    assert q == p
    assert list(q.layers) == list(p.layers)  # order kept
    data = json.loads(path.read_text())
    assert data["format"] == "qpolicy.policy" and data["version"] == 1
    assert data["layers"]["dw"] == {"weight_bits": None, "act_bits": None}
    assert [f.name for f in tmp_path.joinpath("sub").iterdir()] == ["p.json"]  # no temp file left


def test_policy_is_immutable():
    p = uniform_policy(TinyConvNet(), "w4a4")
    with pytest.raises(TypeError):
        p.layers["fc"] = LayerBits(weight_bits=2, act_bits=2)
    with pytest.raises(AttributeError):
        p.model = "x"


def test_validate_names_missing_and_extra_with_suggestion():
    model = TinyConvNet()
    p = uniform_policy(model, "w4a4")
    p.validate(model)
    layers = dict(p.layers)
    layers["pww"] = layers.pop("pw")
    bad = Policy(layers=layers, model="tiny")
    with pytest.raises(PolicyMismatchError) as e:
        bad.validate(model)
    assert e.value.missing == ("pw",) and e.value.extra == ("pww",)
    assert "did you mean 'pw'" in str(e.value) and "made for 'tiny'" in str(e.value)


def test_policy_for_another_model_is_rejected():
    with pytest.raises(PolicyMismatchError, match="missing"):
        uniform_policy(TinyConvNet(), "w4a4").validate(ThreeLayerNet())


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"format": "qpolicy.policy", "version": 1, "layers": {"a": {"weight_bits": 4, "act_bits": 8}', "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"format": "other", "version": 1, "layers": {}}', "not a qpolicy policy"),
    ('{"format": "qpolicy.policy", "version": 99, "layers": {"a": {"weight_bits": 4, "act_bits": 8}}}', "newer"),
    ('{"format": "qpolicy.policy", "version": 1, "layers": {}}', "non-empty"),
    ('{"format": "qpolicy.policy", "version": 1, "layers": {"a": {"weight_bits": 4}}}', "act_bits"),
    ('{"format": "qpolicy.policy", "version": 1, "layers": {"a": {"weight_bits": 12, "act_bits": 8}}}', "2..8"),
])
def test_bad_files_give_clear_errors(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(PolicyError, match=match) as e:
        Policy.load(path)
    assert str(path) in str(e.value)


def test_missing_file():
    with pytest.raises(PolicyError, match="not found"):
        Policy.load("/nonexistent/policy.json")


def test_saved_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = tmp_path / "p.json"
        uniform_policy(TinyConvNet(), "w4a4").save(path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_a_layer_name_longer_than_a_module_path_is_refused(tmp_path):
    """A 10 MB layer name used to keep `qpolicy report` busy for minutes; now it is one error at load time."""
    from qpolicy.errors import PolicyError
    from qpolicy.policy import MAX_NAME

    with pytest.raises(PolicyError, match=f"longer than {MAX_NAME} characters"):
        Policy(layers={"x" * (MAX_NAME + 1): LayerBits(weight_bits=4, act_bits=4)})
    ok = Policy(layers={"x" * MAX_NAME: LayerBits(weight_bits=4, act_bits=4)})
    data = ok.to_dict()
    data["layers"] = {"y" * 10_000_000: data["layers"]["x" * MAX_NAME]}
    with pytest.raises(PolicyError, match="10000002 characters"):
        Policy.from_dict(data)
