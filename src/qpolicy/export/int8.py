"""An integer ONNX model of a policy with 8-bit inputs (weights up to 8 bits) that onnxruntime runs with int8
kernels (QLinearConv, QGemm, QLinearMatMul for a Linear on a token sequence, QLinearAdd, ...), built from the
policy's own quantization. Layers the policy keeps in
float (``f``, or quantized weights with a float input) stay float operators between a dequantize and a quantize.

The Q/DQ export of :mod:`qpolicy.export.onnx` keeps the simulation's integer grids (the float arithmetic around them
differs by rounding only; its module docs say what is exact), but a runtime executes it as float convolutions
between quantize/dequantize pairs. For speed, a runtime needs integer operators, and those
requantize every operator's output to 8 bits, including points the fake-quant model keeps in float (a residual
branch before its addition, the addition itself). So this is a *deployment* model, close to but not bit-equal to
the simulation:

* BatchNorm is folded into the preceding convolution. With per-output-channel weight scales this leaves the integer
  weights unchanged: ``w * g = (s * g) * q`` for the BN factor ``g`` of the channel, so every convolution keeps the
  policy's integers ``q`` (the sign of a negative ``g`` moves into them) and gets the scale ``s * |g|``.
* Every quantized layer's input uses the policy's calibrated step size (unsigned inputs: uint8 with zero point 0;
  signed inputs: uint8 with zero point 128, a grid one step wider at the bottom than the policy's ``[-127, 127]``).
* Every other quantization point (outputs of convolutions, additions, pooling) is calibrated by onnxruntime's
  static quantizer on the given calibration images (min-max), which then builds the QOperator graph.

Every integer layer gets the policy's integers, folded scales and a bias re-quantized at their scales (int32);
``verify_onnx`` compares the result with the fake-quant model on real data.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..policy import Policy
from ..quant.fake_quant import QuantConv2d, QuantLinear

__all__ = ["export_int8", "INT8_TOP1_TOLERANCE"]

# Verification of an int8-kernel model: its top-1 may differ from the simulation's by this many points, since it
# requantizes to 8 bits where the simulation keeps float (so the one-step rule of verify_onnx does not apply).
INT8_TOP1_TOLERANCE = 0.5



def _integer_ops(graph: Any) -> list[str] | None:
    """The operator types onnxruntime's quantizer may make integer. A convolutional network: all it can (None: its
    default; additions, pooling, ... requantized between integer layers, as a deployed CNN runs). A graph with
    LayerNormalization (a transformer): only the layers. Its residual stream, norms, GELU and attention stay float,
    as the simulation computes them; requantizing every addition to 8 bits there tripled the error against the
    simulation on a tiny ViT (mean |logit difference| 1.1% of the logits' range instead of 0.33%)."""
    if any(n.op_type == "LayerNormalization" for n in graph.node):
        return ["Conv", "Gemm", "MatMul"]
    return None


def _quant_layers(qmodel: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def _runs_in_float(mod: nn.Module) -> bool:
    """A Conv/Linear the policy keeps in float, or whose input it keeps in float (``w4af``): such a layer runs as a
    float operator (with the policy's fake-quantized weights), between a dequantize and a quantize."""
    return not isinstance(mod, (QuantConv2d, QuantLinear)) or mod.act_quant is None


def _split_layers(qmodel: nn.Module) -> tuple[list[tuple[str, nn.Module]], set[str]]:
    """Every Conv/Linear in module order, and the names of those that run on integer kernels (quantized, 8-bit
    input); the others must be float (``f``) on their input side."""
    layers = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ints = [(n, m) for n, m in layers if not _runs_in_float(m)]
    if not ints:
        raise ConfigError("int8 kernels need at least one layer quantized with 8-bit inputs (from apply_policy); "
                          "every Conv/Linear of this model runs in float")
    kinds = sorted({m.act_quant.kind for _, m in ints} - {"lsq"})
    if kinds:
        raise ConfigError(f"int8 kernels need fixed-step activation quantizers; this model has {', '.join(kinds)}")
    bad = [f"{n} (W{m.weight_quant.bits if m.weight_quant is not None else 'f'}A{m.act_quant.bits})"
           for n, m in ints if m.act_quant.bits != 8 or m.weight_quant is None]
    if bad:
        raise ConfigError("int8 kernels need every layer either quantized with 8-bit inputs (A8; weights 2..8 bits), "
                          "since the runtime requantizes to the full 8-bit range, or kept in float (activations "
                          "'f', e.g. w8af or f); neither: " + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    return layers, {n for n, _ in ints}


def _float_twin(qmodel: nn.Module) -> nn.Module:
    """A CPU eval copy of the quantized model computing in float (same weights, re-estimated BN, no quantizers).
    A layer with quantized weights and a float input keeps its fake-quantized weights, as it will run in float."""
    m = copy.deepcopy(qmodel).cpu().eval()
    for _, mod in _quant_layers(m):
        if mod.act_quant is None and mod.weight_quant is not None:
            with torch.no_grad():
                mod.weight = nn.Parameter(mod.weight_quant(mod.weight).detach())
        mod.__class__ = nn.Conv2d if isinstance(mod, QuantConv2d) else nn.Linear
        for attr in ("weight_quant", "act_quant"):  # their extra state cannot be traced
            if hasattr(mod, attr):
                delattr(mod, attr)
    return m


def _match_nodes(layers: list[tuple[str, nn.Module]], nodes: list[Any]) -> list[Any]:
    """The ONNX node of each layer: by the module scope the exporter names nodes with (``/layer2/shortcut/Conv``
    is ``layer2.shortcut``), since execution order (the graph's) can differ from module order (a shortcut defined
    after the convolutions it runs beside); by position where the names do not say."""
    by_scope: dict[str, list[Any]] = {}
    for node in nodes:
        by_scope.setdefault(node.name.rpartition("/")[0].lstrip("/").replace("/", "."), []).append(node)
    found = [by_scope.get(name, []) for name, _ in layers]
    if all(len(f) == 1 for f in found):
        return [f[0] for f in found]
    return nodes


def float_onnx(model: nn.Module, input_shape: tuple[int, ...], *, opset: int = 17) -> bytes:
    """A float (CPU, eval) model as ONNX bytes, input ``input`` with a dynamic batch, BatchNorm folded by the
    exporter: the graph the integer model is built from, and the float model a latency table times."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), buf, opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


class _Reader:
    """onnxruntime's CalibrationDataReader over ``(x, y)`` batches."""

    def __init__(self, data: Iterable[Any], name: str):
        self.it, self.name = iter(data), name

    def get_next(self) -> dict[str, Any] | None:
        b = next(self.it, None)
        return None if b is None else {self.name: b[0].cpu().numpy()}


def _policy_integers(mod: nn.Module) -> tuple[Any, Any]:
    """The layer's integer weights and per-channel steps, as its fake quantizer computes them."""
    import numpy as np

    from ..quant.primitives import qrange

    s = mod.weight_quant.scale.detach().float().clamp_min(1e-12).cpu().numpy().reshape(-1)
    w = mod.weight.detach().float().cpu().numpy()
    lo, hi = qrange(mod.weight_quant.bits, True)
    q = np.clip(np.rint(w * (1.0 / s).reshape([-1] + [1] * (w.ndim - 1))), lo, hi)
    return q, s


def export_int8(qmodel: nn.Module, path: str | os.PathLike, *, calib: Iterable[Any], input_shape: tuple[int, ...],
                policy: Policy | None = None, opset: int = 17, weight_type: str = "auto") -> dict[str, Any]:
    """Write an integer (QOperator) ONNX model of ``qmodel``, a model from ``apply_policy`` whose layers have 8-bit
    inputs (weights of any width up to 8, held in an 8-bit container) or float ones (those run as float operators).

    Args:
        qmodel: The calibrated fake-quant model (every layer quantized with an 8-bit input, or float on its input).
        path: The .onnx file to write (atomically).
        calib: ``(x, y)`` batches that calibrate the requantization points the simulation does not have.
        input_shape: Per-sample input shape; the batch dimension is dynamic.
        policy: Stored in the model's metadata (``qpolicy.policy``).
        weight_type: "uint8" (zero point 128): onnxruntime's u8u8 kernels, exact everywhere; "int8": its u8s8
            kernels, faster, but on x86 CPUs without VNNI they add pairs of products in int16, which saturates
            unless every weight has at most 7 bits (2 x 255 x 63 < 2^15); "auto": per layer, int8 where the
            layer's weights have at most 7 bits, else uint8.

    Returns:
        A summary: operator counts, bytes, the number of integer layers given the policy's integers, and the names
        of the layers that run in float.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx import _write_model

    if weight_type not in ("auto", "uint8", "int8"):
        raise ConfigError(f"weight_type must be 'auto', 'uint8' or 'int8', got {weight_type!r}")
    layers, ints = _split_layers(qmodel)
    widest = max(m.weight_quant.bits for n, m in layers if n in ints)
    signed = {n: m.weight_quant.bits <= 7 if weight_type == "auto" else weight_type == "int8"
              for n, m in layers if n in ints}  # per layer: int8 weights (u8s8 kernels) or uint8 (u8u8)
    kinds = {"int8" if v else "uint8" for v in signed.values()}
    weight_type = kinds.pop() if len(kinds) == 1 else "mixed"
    twin = _float_twin(qmodel)
    with tempfile.TemporaryDirectory() as tmp:
        raw, pre, out = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        raw.write_bytes(float_onnx(twin, input_shape, opset=opset))
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        fp = onnx.load(str(pre))
        inits = {t.name: numpy_helper.to_array(t) for t in fp.graph.initializer}
        nodes = [n for n in fp.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and len(n.input) > 1 and n.input[1] in inits]
        if len(nodes) != len(layers):
            raise ConfigError(f"the float graph has {len(nodes)} Conv/Gemm/MatMul nodes with constant weights for "
                              f"{len(layers)} Conv/Linear layers; int8 export supports models whose layers map "
                              "one-to-one to ONNX nodes")
        nodes = _match_nodes(layers, nodes)
        overrides: dict[str, list[dict[str, Any]]] = {}
        producer = {o: n for n in fp.graph.node for o in n.output}
        expect: dict[str, tuple[Any, Any, Any, bool]] = {}  # weight -> (integers, scales, float bias, int8?)
        floats: list[str] = []  # the ONNX nodes of the layers that stay float
        for (name, mod), node in zip(layers, nodes, strict=True):
            wf = inits[node.input[1]]
            if name not in ints:
                if tuple(wf.shape) not in (tuple(mod.weight.shape), tuple(mod.weight.shape)[::-1]):
                    raise ConfigError(f"layer {name}: weight shape {tuple(mod.weight.shape)} does not match ONNX "
                                      f"node {node.name} ({tuple(wf.shape)})")
                floats.append(node.name)
                continue
            transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(
                a.name == "transB" and a.i == 1 for a in node.attribute))
            wf_oc = wf.T if transposed else wf  # output channels first
            q, s = _policy_integers(mod)
            if wf_oc.shape != q.shape:
                raise ConfigError(f"layer {name}: weight shape {tuple(q.shape)} does not match ONNX node "
                                  f"{node.name} ({tuple(wf_oc.shape)})")
            flat_w = mod.weight.detach().float().cpu().numpy().reshape(len(s), -1)
            flat_f = wf_oc.reshape(len(s), -1)
            j = np.abs(flat_w).argmax(1)
            rows = np.arange(len(s))
            g = np.where(flat_w[rows, j] != 0, flat_f[rows, j] / np.where(flat_w[rows, j] == 0, 1, flat_w[rows, j]),
                         1.0)  # the folded BN factor per channel (1 without BN)
            scale = np.maximum(s * np.abs(g), 1e-12).astype(np.float32)  # a zero BN factor: zero weights
            qf = (q * np.sign(g).reshape([-1] + [1] * (q.ndim - 1)) + 128).astype(np.uint8)
            bias = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            expect[node.input[1]] = (qf.T if transposed else qf, scale, bias, signed[name])
            axis = 1 if transposed else 0
            overrides[node.input[1]] = [{"axis": axis, "scale": np.array(v, dtype=np.float32),
                                         "zero_point": np.array(0, dtype=np.int8)} for v in scale]
            a = mod.act_quant
            zp = np.array(128 if a.signed else 0, dtype=np.uint8)
            act = [{"scale": np.array(float(a.scale.detach().reshape(-1)[0]), dtype=np.float32), "zero_point": zp}]
            overrides[node.input[0]] = act
            src = producer.get(node.input[0])
            if src is not None and src.op_type == "Relu" and not a.signed:
                # the runtime drops a Relu before a uint8 quantization (zero point 0 clamps at 0) and quantizes its
                # input with these parameters instead
                overrides[src.input[0]] = act
        root = logging.getLogger()  # onnxruntime's quantizer logs every operator it skips on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(str(pre), str(out), _Reader(calib, "input"), quant_format=QuantFormat.QOperator,
                            per_channel=True, op_types_to_quantize=_integer_ops(fp.graph),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=floats,
                            # products of two activations (attention's Q K^T and weights x V) stay float, as simulated
                            extra_options={"TensorQuantOverrides": overrides, "MatMulConstBOnly": True})
        finally:
            root.setLevel(level)
        proto = onnx.load(str(out))
    _set_policy_weights(proto, expect)
    info = _write_model(proto, path, policy)
    return {"path": str(path), "opset": opset, **info, "layers": len(expect), "weight_type": weight_type,
            "widest_weight_bits": widest, "float_layers": [n for n, _ in layers if n not in ints]}


def _set_policy_weights(proto: Any, expect: dict[str, tuple[Any, Any, Any, bool]]) -> None:
    """Give every integer Conv/Gemm the policy's integers, stored as uint8 with zero point 128 (or, where its entry
    says so, int8 with zero point 0), its folded per-channel scales, and the bias re-quantized at ``input scale x
    weight scale`` (int32).

    uint8 weights make the runtime use its u8u8 kernels, which are exact on every x86 CPU; its u8s8 kernels sum
    pairs of products in int16 on CPUs without VNNI and saturate."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in graph.node:  # QLinearMatMul: a Linear on a sequence (its bias is a separate Add)
        if node.op_type not in ("QLinearConv", "QGemm", "QLinearMatMul") or len(node.input) < 6:
            continue
        key = node.input[3].removesuffix("_quantized")
        if key not in expect:
            continue
        qf, scale, bias, signed = expect[key]
        x_scale = float(numpy_helper.to_array(inits[node.input[1]]))
        if signed:
            weights, zero = (qf.astype(np.int16) - 128).astype(np.int8), np.zeros(scale.shape, dtype=np.int8)
        else:
            weights, zero = qf, np.full(scale.shape, 128, dtype=np.uint8)
        new = {node.input[3]: weights, node.input[4]: scale.astype(np.float32), node.input[5]: zero}
        b_idx = {"QLinearConv": 8, "QGemm": 6}.get(node.op_type)
        if bias is not None and b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
            new[node.input[b_idx]] = np.rint(bias / (x_scale * scale)).astype(np.int32)
        for name, value in new.items():
            inits[name].CopyFrom(numpy_helper.from_array(value, name=name))
        done += 1
    if done != len(expect):
        raise ConfigError(f"onnxruntime's quantizer kept {len(expect) - done} of {len(expect)} quantized layers in "
                          "float; int8 export needs every one as an integer operator")
