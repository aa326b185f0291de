import json

import numpy as np
import pytest
import torch

from qpolicy.errors import ConfigError
from qpolicy.export import METADATA_KEY
from qpolicy.export.int8 import export_int8
from qpolicy.policy import LayerBits, Policy, uniform_policy
from qpolicy.quant import CalibConfig, apply_policy
from qpolicy.testing import TinyConvNet, random_loader

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
CALIB = CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False)


def _model():
    model = TinyConvNet()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BN with negative factors (their sign moves into the integer weights) and real statistics
        model.bn1.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.7, -1.3, 1.1, 0.4, 0.9]))
        model.bn1.running_mean.uniform_(-0.5, 0.5, generator=g)
        model.bn1.running_var.uniform_(0.5, 2.0, generator=g)
        model.bn2.weight.copy_(torch.tensor([0.8, 1.2, -0.9, 1.0, 0.6, -1.1, 1.5, 0.5]))
    return model


def _close(out, ref):
    """Close to the fake-quant logits, up to the requantization points the simulation does not have."""
    spread = float(ref.max() - ref.min())
    diff = np.abs(out - ref)
    assert diff.mean() < 0.01 * spread and diff.max() < 0.1 * spread
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_w8a8_runs_on_integer_kernels_with_the_policys_integers(tmp_path):
    model = _model()
    policy = uniform_policy(model, "w8a8", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    path = tmp_path / "int8.onnx"
    info = export_int8(qm, path, calib=random_loader(64, batch_size=32, seed=1), input_shape=(3, 8, 8), policy=policy)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert info["layers"] == 4 and info["ops"].get("QLinearConv") == 3 and info["ops"].get("QGemm") == 1
    assert "Conv" not in info["ops"] and "Gemm" not in info["ops"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert Policy.from_dict(json.loads(meta[METADATA_KEY])).layers == policy.layers
    # the stem's integers are the policy's: round(w / s), times the sign of the BN factor, stored + 128
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    stem = next(n for n in proto.graph.node if n.op_type == "QLinearConv")
    w = inits[stem.input[3]].astype(np.int64) - 128
    s = qm.conv1.weight_quant.scale.detach().reshape(-1, 1, 1, 1)
    q = torch.clamp(torch.round(qm.conv1.weight.detach() / s), -127, 127).numpy()
    g = (qm.bn1.weight / torch.sqrt(qm.bn1.running_var + qm.bn1.eps)).detach().numpy()
    assert inits[stem.input[3]].dtype == np.uint8 and np.array_equal(w, q * np.sign(g).reshape(-1, 1, 1, 1))
    assert np.allclose(inits[stem.input[4]], s.reshape(-1).numpy() * np.abs(g), rtol=1e-6)
    # it computes what the fake-quant model computes, up to the requantization the simulation does not have
    x, _ = next(iter(random_loader(128, batch_size=128, seed=3)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    _close(out, ref)


def test_needs_8_bit_or_float_inputs(tmp_path):
    model = _model()
    qm = apply_policy(model, uniform_policy(model, "w8a4"), calib=random_loader(32, batch_size=32), config=CALIB)
    with pytest.raises(ConfigError, match=r"neither: dw \(W8A4\)"):
        export_int8(qm, tmp_path / "m.onnx", calib=random_loader(32), input_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="every Conv/Linear of this model runs in float"):
        export_int8(model, tmp_path / "m.onnx", calib=random_loader(32), input_shape=(3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_layers_kept_in_float_run_as_float_operators_between_integer_ones(tmp_path):
    """Mixed integer/float: ``fc`` float, ``conv1`` with 4-bit weights and a float input (``w4af``) run as float
    Conv/Gemm (conv1 with the policy's 4-bit weights); ``dw`` and ``pw`` stay on the integer kernels."""
    model = _model()
    layers = {**uniform_policy(model, "w8a8", first_last="same").layers,
              "fc": LayerBits(weight_bits=None, act_bits=None), "conv1": LayerBits(weight_bits=4, act_bits=None)}
    policy = Policy(layers=layers)
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    path = tmp_path / "mixed.onnx"
    info = export_int8(qm, path, calib=random_loader(64, batch_size=32, seed=1), input_shape=(3, 8, 8), policy=policy)
    assert info["float_layers"] == ["conv1", "fc"] and info["layers"] == 2
    assert info["ops"].get("QLinearConv") == 2 and info["ops"].get("Conv") == 1 and info["ops"].get("Gemm") == 1
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    stem = next(n for n in proto.graph.node if n.op_type == "Conv")
    w = inits[stem.input[1]].reshape(8, -1)  # BN folded in: a factor per channel, so still 15 levels at most
    assert w.shape[1] == 27 and max(len(np.unique(r)) for r in w) <= 15 < len(np.unique(model.conv1.weight.detach()))
    x, _ = next(iter(random_loader(128, batch_size=128, seed=3)))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    _close(out, ref)


def test_narrow_weights_take_the_int8_kernels_exactly(tmp_path):
    """W4A8 everywhere: the policy's 4-bit integers in int8 tensors ("auto" picks them: no saturation possible)."""
    model = _model()
    policy = uniform_policy(model, "w4a8", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    info = export_int8(qm, tmp_path / "w4.onnx", calib=random_loader(64, batch_size=32, seed=1), input_shape=(3, 8, 8))
    assert info["weight_type"] == "int8" and info["widest_weight_bits"] == 4
    proto = onnx.load(str(tmp_path / "w4.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type in ("QLinearConv", "QGemm")]
    assert len(convs) == 4 and all(inits[n.input[3]].dtype == np.int8 and np.abs(inits[n.input[3]]).max() <= 7
                                   for n in convs)
    x, _ = next(iter(random_loader(128, batch_size=128, seed=3)))
    out = ort.InferenceSession(str(tmp_path / "w4.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    _close(out, ref)


def test_int8_weights_option_and_bad_weight_type(tmp_path):
    model = _model()
    policy = uniform_policy(model, "w8a8", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    info = export_int8(qm, tmp_path / "s8.onnx", calib=random_loader(32), input_shape=(3, 8, 8), weight_type="int8")
    assert info["weight_type"] == "int8"
    auto = export_int8(qm, tmp_path / "a.onnx", calib=random_loader(32), input_shape=(3, 8, 8))
    assert auto["weight_type"] == "uint8"  # 8-bit weights could saturate the int8 kernels
    proto = onnx.load(str(tmp_path / "s8.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    stem = next(n for n in proto.graph.node if n.op_type == "QLinearConv")
    assert inits[stem.input[3]].dtype == np.int8 and not inits[stem.input[5]].any()
    with pytest.raises(ConfigError, match="weight_type"):
        export_int8(qm, tmp_path / "x.onnx", calib=random_loader(32), input_shape=(3, 8, 8), weight_type="int4")


def test_auto_weight_type_is_per_layer(tmp_path):
    """8-bit weights in one layer keep the exact u8u8 kernels there; the 4-bit layers still take the u8s8 ones."""
    model = _model()
    layers = {**uniform_policy(model, "w4a8", first_last="same").layers, "pw": LayerBits(weight_bits=8, act_bits=8)}
    qm = apply_policy(model, Policy(layers=layers), calib=random_loader(64, batch_size=32), config=CALIB)
    info = export_int8(qm, tmp_path / "m.onnx", calib=random_loader(64, batch_size=32, seed=1), input_shape=(3, 8, 8))
    assert info["weight_type"] == "mixed" and info["widest_weight_bits"] == 8
    proto = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    kinds = [inits[n.input[3]].dtype for n in proto.graph.node if n.op_type in ("QLinearConv", "QGemm")]
    assert kinds.count(np.uint8) == 1 and kinds.count(np.int8) == 3
    x, _ = next(iter(random_loader(128, batch_size=128, seed=3)))
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    _close(out, ref)


def test_a_vision_transformer_runs_its_linears_on_integer_kernels(tmp_path):
    """A ViT's Linears on token sequences export as MatMul (+ Add): they become QLinearMatMul with the policy's
    integers; the head (one token) a QGemm. The two products of activations in each attention stay float MatMuls,
    as the simulation keeps them."""
    from qpolicy.models.vit import tiny_vit

    torch.manual_seed(0)
    model = tiny_vit(channels=3, classes=4).eval()
    policy = uniform_policy(model, "w8a8", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    path = tmp_path / "vit.onnx"
    info = export_int8(qm, path, calib=random_loader(64, batch_size=32, seed=1), input_shape=(3, 8, 8), policy=policy)
    assert info["layers"] == 10 and info["ops"].get("QLinearMatMul") == 9 and info["ops"].get("QGemm") == 1
    assert info["ops"].get("MatMul") == 4  # Q K^T and weights x V in each of the 2 blocks
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    qkv = [n for n in proto.graph.node if n.op_type == "QLinearMatMul"][1]  # the first block's qkv (after embed)
    mod = qm.blocks[0].attn.qkv
    s = mod.weight_quant.scale.detach().reshape(-1, 1)
    q = torch.clamp(torch.round(mod.weight.detach() / s), -127, 127).numpy()
    assert np.array_equal(inits[qkv.input[3]].astype(np.int64) - 128, q.T)  # (in, out), zero point 128
    assert np.allclose(inits[qkv.input[4]], s.reshape(-1).numpy(), rtol=1e-6)
    x, _ = next(iter(random_loader(128, batch_size=128, seed=3)))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = qm(x).numpy()
    _close(out, ref)
