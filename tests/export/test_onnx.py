import json

import numpy as np
import pytest
import torch

from qpolicy.export import METADATA_KEY, export_onnx, verify_onnx
from qpolicy.policy import LayerBits, Policy, uniform_policy
from qpolicy.quant import CalibConfig, apply_policy
from qpolicy.quant.apply import quantizers
from qpolicy.quant.fake_quant import ActQuantizer
from qpolicy.testing import TinyConvNet, random_loader

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
CALIB = CalibConfig(weight_method="minmax", act_method="minmax", bn_reestimate=False)


def _export(policy, tmp_path):
    model = TinyConvNet()
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    path = tmp_path / "m.onnx"
    info = export_onnx(qm, path, input_shape=(3, 8, 8), policy=policy)
    return qm, path, info


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_parity_at_every_width(bits, tmp_path):
    policy = uniform_policy(TinyConvNet(), f"w{bits}a{bits}", first_last="same")
    qm, path, info = _export(policy, tmp_path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # 4 layers: the weights are int8 initializers read by DequantizeLinear, the inputs are Q -> (Clip) -> DQ
    assert info["folded_weights"] == 4 and info["ops"]["QuantizeLinear"] == 4 and info["ops"]["DequantizeLinear"] == 8
    weights = [t for t in proto.graph.initializer if t.name.endswith("_quantized")]
    assert len(weights) == 4 and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    q_max = 2 ** (bits - 1) - 1
    assert all(np.abs(onnx.numpy_helper.to_array(t)).max() <= q_max for t in weights)
    # inputs below 8 bits need a Clip; at 8 bits only signed inputs do (the symmetric grid inside int8)
    signed = sum(q.signed for _, q in quantizers(qm) if isinstance(q, ActQuantizer))
    assert 1 <= signed < 4 and info["ops"].get("Clip", 0) == (signed if bits == 8 else 4)
    res = verify_onnx(path, qm, random_loader(128, batch_size=64, seed=3), threads=1)
    assert res.top1_onnx == res.top1_torch and res.agree == 1.0
    assert res.images_within_tolerance >= 0.95 and res.total == 128
    x = next(iter(random_loader(16, batch_size=16, seed=4)))[0]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = qm(x).numpy()
    out = sess.run(["logits"], {"input": x.numpy()})[0]
    assert np.allclose(out, ref, atol=max(res.tolerance, 1e-5) * 4)


def test_float_layer_and_metadata(tmp_path):
    layers = {n: LayerBits(weight_bits=4, act_bits=8) for n in ("conv1", "dw", "pw")}
    layers["fc"] = LayerBits(weight_bits=None, act_bits=None)
    policy = Policy(layers=layers, model="tiny", provenance={"method": "test"})
    _, path, info = _export(policy, tmp_path)
    assert info["ops"]["QuantizeLinear"] == 3 and info["ops"]["DequantizeLinear"] == 6  # the float layer: none
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert Policy.from_dict(json.loads(meta[METADATA_KEY])).layers == policy.layers
    gemm = [n for n in proto.graph.node if n.op_type == "Gemm"]
    producers = {o: n for n in proto.graph.node for o in n.output}
    assert gemm and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                        for i in gemm[0].input[1:])  # fc's weight and input are not dequantized tensors


def test_int4_types_at_opset_21(tmp_path):
    policy = uniform_policy(TinyConvNet(), "w4a4", first_last="same")
    model = TinyConvNet()
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    with pytest.raises(Exception, match="opset >= 21"):
        export_onnx(qm, tmp_path / "m.onnx", input_shape=(3, 8, 8), int4=True)
    info = export_onnx(qm, tmp_path / "m.onnx", input_shape=(3, 8, 8), policy=policy, int4=True, opset=21)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto)
    weights = [t for t in proto.graph.initializer if t.name.endswith("_quantized")]
    assert len(weights) == 4 and all(t.data_type == onnx.TensorProto.INT4 for t in weights)
    unsigned = sum(not q.signed for _, q in quantizers(qm) if isinstance(q, ActQuantizer))
    uint4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT4]
    int4_inputs = [t for t in proto.graph.initializer if t.name.endswith("_int4_zero_point")]
    assert all(t.data_type == onnx.TensorProto.INT4 for t in int4_inputs)
    # every input is 4-bit: unsigned ones UINT4, signed ones INT4 after a float Max/Min (no Clip is left)
    assert 1 <= unsigned < 4 and len(uint4) == unsigned and len(int4_inputs) == 4 - unsigned
    assert "Clip" not in info["ops"] and info["ops"]["Max"] == info["ops"]["Min"] == 4 - unsigned
    res = verify_onnx(tmp_path / "m.onnx", qm, random_loader(128, batch_size=64, seed=3), threads=1)
    assert res.top1_onnx == res.top1_torch and res.agree == 1.0 and res.images_within_tolerance >= 0.95


def test_verification_rule_margin_bound_by_hand_and_a_planted_mismatch(tmp_path):
    from qpolicy.export.onnx import _margin_bound

    policy = uniform_policy(TinyConvNet(), "w8a8", first_last="same")
    qm, path, _ = _export(policy, tmp_path)
    fc = qm.fc
    with torch.no_grad():
        w = fc.weight_quant(fc.weight)  # (4, 16)
        by_hand = max(float((w[i] - w[j]).abs().sum()) for i in range(4) for j in range(4))
    assert _margin_bound(qm, 1.0) == pytest.approx(float(fc.act_quant.scale.detach().max()) * by_hand)
    assert _margin_bound(qm, 2.0) == pytest.approx(2 * _margin_bound(qm, 1.0))
    data = random_loader(128, batch_size=64, seed=3)
    ok = verify_onnx(path, qm, data, threads=1)
    assert ok.passed and ok.failure() == "" and ok.unexplained == 0
    # a PyTorch model that is not the exported one: a large change of the last layer's bias flips predictions
    # whose margin is far above the bound, which rounding cannot explain
    other = apply_policy(TinyConvNet(), policy, calib=random_loader(64, batch_size=32), config=CALIB)
    with torch.no_grad():
        other.fc.bias[0] += 50.0
    bad = verify_onnx(path, other, data, threads=1)
    assert not bad.passed and bad.unexplained > 0 and "verification failed" in bad.failure()


def test_16_bit_activations_at_opset_21(tmp_path):
    """int16x8: 16-bit activations in an INT16 container (unsigned ones shifted by a zero point of -32768), the same
    predictions in onnxruntime; below opset 21 a clear error."""
    from qpolicy.errors import ConfigError

    model = TinyConvNet()
    policy = uniform_policy(model, "w8a16", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(64, batch_size=32), config=CALIB)
    with pytest.raises(ConfigError, match="16-bit activations need opset >= 21"):
        export_onnx(qm, tmp_path / "m.onnx", input_shape=(3, 8, 8), policy=policy)
    assert not (tmp_path / "m.onnx").exists()
    export_onnx(qm, tmp_path / "m.onnx", input_shape=(3, 8, 8), policy=policy, opset=21)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    zps = [onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"
           and n.attribute[0].t.data_type == onnx.TensorProto.INT16 and n.attribute[0].t.dims == []]
    assert -32768 in {int(z) for z in zps}  # an unsigned input, on the shifted grid
    res = verify_onnx(tmp_path / "m.onnx", qm, random_loader(128, batch_size=64, seed=3), threads=1)
    assert res.agree == 1.0 and res.passed


@pytest.mark.parametrize("opset", [0, 12, 22, 99])
def test_opsets_the_exporter_cannot_write_are_refused(opset, tmp_path):
    from qpolicy.errors import ConfigError

    model = TinyConvNet()
    policy = uniform_policy(model, "w4a4", first_last="same")
    qm = apply_policy(model, policy, calib=random_loader(32, batch_size=32), config=CALIB)
    with pytest.raises(ConfigError, match="opset must be in 13..21"):
        export_onnx(qm, tmp_path / "m.onnx", input_shape=(3, 8, 8), opset=opset)
