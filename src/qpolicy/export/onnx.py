"""ONNX export of a fake-quantized model: every quantizer becomes standard QuantizeLinear -> (Clip) ->
DequantizeLinear, so an ONNX runtime computes the simulated arithmetic with the same integer grids.

What is exact and what is not: the integer weights, the step sizes, zero points, clipping ranges and the rounding
rule (half to even) are the simulation's own, and every quantized tensor lies on the same grid. The float
arithmetic around them is not bit-identical: convolutions sum in another order in each runtime, and ONNX divides by
the scale where qpolicy multiplies by its reciprocal, so a value within a float rounding error of a grid boundary
can land one step away, and that difference then travels through the network. :func:`verify_onnx` therefore
checks that every prediction that differs is one such a difference can explain (its rule is stated there).

* A b-bit quantizer uses an 8-bit container: ``QuantizeLinear`` to int8 (signed) or uint8 (unsigned) with zero point
  0 and the layer's step size(s) (per output channel for weights, ``axis=0``); a ``Clip`` to the b-bit range
  (``[-(2^(b-1)-1), 2^(b-1)-1]`` signed, ``[0, 2^b-1]`` unsigned) when that is narrower than the container
  (every signed width, since qpolicy's signed grid is symmetric, and unsigned widths below 8); then
  ``DequantizeLinear``. 8-bit unsigned activations are a plain Q/DQ pair.
* Weights are stored as integer tensors (their QuantizeLinear and Clip folded at export), read by DequantizeLinear;
  with ``int4=True`` (opset 21) weights of 4 bits and fewer are INT4 tensors, 4-bit unsigned inputs quantize to
  UINT4 (no Clip) and 4-bit signed inputs to INT4 after clipping in float to ``[-7 s, 7 s]``; other inputs keep the
  8-bit container.
* 16-bit activations (int16x8) use an INT16 container (opset 21); unsigned ones with a zero point of -32768.
* Layers kept in float export as plain Conv/Gemm.
* The policy (its JSON) is stored in the model's ``metadata_props`` under ``qpolicy.policy``.

"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..errors import ConfigError
from ..policy import Policy
from ..quant.fake_quant import ActQuantizer, WeightQuantizer
from ..quant.primitives import qrange

__all__ = ["check_opset", "export_onnx", "verify_onnx", "VerifyResult", "METADATA_KEY"]

log = logging.getLogger(__name__)
METADATA_KEY = "qpolicy.policy"
OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 21  # per-channel QuantizeLinear needs 13; 21 is the newest the exporter writes


class _QDQ(torch.autograd.Function):
    """Fake quantization that exports as QuantizeLinear -> Clip -> DequantizeLinear (forward: the same math)."""

    @staticmethod
    def forward(ctx, x, scale, bits, signed, axis):  # type: ignore[override]
        q_min, q_max = qrange(bits, signed)
        s = scale if axis is None else scale.reshape([-1] + [1] * (x.dim() - 1))
        return torch.clamp(torch.round(x * (1.0 / s)), q_min, q_max) * s

    @staticmethod
    def symbolic(g, x, scale, bits, signed, axis):  # type: ignore[override]
        q_min, q_max = qrange(bits, signed)
        offset = 0
        if bits > 8:
            # 16-bit activations (int16x8): an INT16 container (opset 21). The exporter cannot write UINT16, so the
            # unsigned grid 0..65535 is stored shifted by a zero point of -32768: (q - zp) * s is the same value.
            dtype, container = torch.int16, (-32768, 32767)
            offset = 0 if signed else -32768
        else:
            dtype = torch.int8 if signed else torch.uint8
            container = (-128, 127) if signed else (0, 255)
        zero = torch.full(() if axis is None else scale.type().sizes(), offset, dtype=dtype)
        zp = g.op("Constant", value_t=zero)
        kw = {} if axis is None else {"axis_i": axis}
        if bits > 8 and (q_min + offset, q_max + offset) != container:
            # onnxruntime has no INT16 Clip: the symmetric signed grid is clipped in float, [q_min s, q_max s],
            # before QuantizeLinear (round(x / s) then lies in it)
            lo = g.op("Mul", scale, g.op("Constant", value_t=torch.tensor(float(q_min))))
            hi = g.op("Mul", scale, g.op("Constant", value_t=torch.tensor(float(q_max))))
            x = g.op("Clip", x, lo, hi)
            return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zp, **kw), scale, zp, **kw)
        q = g.op("QuantizeLinear", x, scale, zp, **kw)
        if (q_min + offset, q_max + offset) != container:
            lo = g.op("Constant", value_t=torch.tensor(q_min + offset, dtype=dtype))
            hi = g.op("Constant", value_t=torch.tensor(q_max + offset, dtype=dtype))
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, scale, zp, **kw)


class _ExportWeightQuantizer(WeightQuantizer):
    """The same quantizer, running :class:`_QDQ` on a constant step size (``export_scale``, a buffer, so it becomes
    an initializer) and without the extra state the tracer cannot take."""

    get_extra_state = nn.Module.get_extra_state  # type: ignore[assignment]
    export_scale: torch.Tensor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _QDQ.apply(weight, self.export_scale, self.bits, True, 0)


class _ExportActQuantizer(ActQuantizer):
    get_extra_state = nn.Module.get_extra_state  # type: ignore[assignment]
    export_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.observing:
            return x
        return _QDQ.apply(x, self.export_scale, self.bits, self.signed, None)


def _exportable(qmodel: nn.Module) -> nn.Module:
    """A CPU eval copy whose quantizers run :class:`_QDQ` (same values, exportable)."""
    other = sorted({type(mod).kind for mod in qmodel.modules() if isinstance(mod, (WeightQuantizer, ActQuantizer))
                    and type(mod) not in (WeightQuantizer, ActQuantizer)})
    if other:
        from ..errors import ConfigError

        raise ConfigError(f"ONNX export writes fixed-step quantizers (QuantizeLinear/DequantizeLinear); this model has "
                          f"{', '.join(other)} activation quantizers: quantize it with the default act_quantizer 'lsq'")
    m = copy.deepcopy(qmodel).cpu().eval()
    for mod in list(m.modules()):
        if type(mod) in (WeightQuantizer, ActQuantizer):
            per_tensor = type(mod) is ActQuantizer
            scale = mod.scale.detach().float().clamp_min(1e-12)
            mod.__class__ = _ExportActQuantizer if per_tensor else _ExportWeightQuantizer
            del mod.scale  # the learnable parameter would become an unused initializer
            mod.register_buffer("export_scale", scale.reshape(()) if per_tensor else scale)
    return m


def _graph_index(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The values of Constant nodes by output name, and the nodes reading each tensor."""
    from onnx import numpy_helper

    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return consts, users


def _drop_unused(graph: Any) -> None:
    """Remove Constant nodes and initializers nothing reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _fold_weight_quantization(proto: Any, *, int4: bool = False) -> int:
    """Replace QuantizeLinear (+ Clip) of a constant weight by its integer tensor: ``DequantizeLinear`` then reads
    an int8 initializer, the usual QDQ form (4x smaller, and what runtimes fuse into integer kernels). Computed as
    ONNX defines it: ``saturate(round_half_even(w / scale))``, then the Clip bounds. Returns the count folded."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts, users = _graph_index(graph)

    def value(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else consts.get(name)

    drop, folded = [], 0
    for n in list(graph.node):
        if n.op_type != "QuantizeLinear" or n.input[0] not in inits:
            continue
        w, scale, zp = value(n.input[0]), value(n.input[1]), value(n.input[2])
        if w is None or scale is None or zp is None:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        s = scale if scale.ndim == 0 else scale.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w.astype(np.float32) / s), info.min, info.max)
        out, chain = n.output[0], [n]
        nxt = users.get(out, [])
        if len(nxt) == 1 and nxt[0].op_type == "Clip":
            lo, hi = value(nxt[0].input[1]), value(nxt[0].input[2])
            q = np.clip(q, lo, hi)
            out, chain = nxt[0].output[0], [n, nxt[0]]
        name = n.input[0] + "_quantized"
        dq_zp = None
        if int4 and zp.dtype == np.int8 and np.abs(q).max() <= 7 and not zp.any():
            from onnx import TensorProto, helper

            tensor = helper.make_tensor(name, TensorProto.INT4, q.shape, q.astype(np.int8).flatten().tolist())
            dq_zp = helper.make_tensor(name + "_zero_point", TensorProto.INT4, zp.shape,
                                       np.zeros(zp.size, dtype=np.int8).tolist())
            graph.initializer.append(dq_zp)
        else:
            tensor = numpy_helper.from_array(q.astype(zp.dtype), name=name)
        graph.initializer.append(tensor)
        for u in users.get(out, []):
            for k, i in enumerate(u.input):
                if i == out:
                    u.input[k] = tensor.name
                    if dq_zp is not None and u.op_type == "DequantizeLinear":
                        u.input[2] = dq_zp.name
        drop += chain
        folded += 1
    for n in drop:
        graph.node.remove(n)
    _drop_unused(graph)  # the Clip bounds and float weights of folded chains
    return folded


def export_onnx(qmodel: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...],
                policy: Policy | None = None, opset: int = OPSET, int4: bool = False) -> dict[str, Any]:
    """Write ``qmodel`` (a calibrated model from ``apply_policy``) as ONNX to ``path`` (atomically).

    Args:
        qmodel: The fake-quantized model.
        path: Where the .onnx file goes.
        input_shape: Per-sample input shape (C, H, W); the batch dimension is dynamic.
        policy: Stored in the model's metadata.
        opset: ONNX opset (>= 13 for per-channel QuantizeLinear).
        int4: Store weights of 4 bits and fewer as INT4 tensors and quantize 4-bit inputs to UINT4 / INT4 (needs
            opset >= 21).

    Returns:
        A summary: the count of each operator type, and the number of quantize/dequantize nodes.
    """
    import onnx

    check_opset(opset, int4=int4)
    if opset < 21 and any(isinstance(m, ActQuantizer) and m.bits > 8 for m in qmodel.modules()):
        raise ConfigError(f"16-bit activations need opset >= 21 (INT16 QuantizeLinear), got {opset}")
    model = _exportable(qmodel)
    buf = io.BytesIO()
    dummy = torch.zeros(1, *input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (dummy,), buf, opset_version=opset, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    folded = _fold_weight_quantization(proto, int4=int4)
    if int4:
        _int4_activations(proto)
    info = _write_model(proto, path, policy)
    return {"path": str(path), "opset": opset, **info, "folded_weights": folded}


def check_opset(opset: int, *, int4: bool = False) -> int:
    """``opset`` if this exporter writes it (13..21; INT4 tensors need 21), else ConfigError."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be in {MIN_OPSET}..{MAX_OPSET} (per-channel QuantizeLinear needs 13; INT4 "
                          f"tensors 21, the newest this exporter writes), got {opset!r}")
    if int4 and opset < 21:
        raise ConfigError(f"INT4 tensors need opset >= 21, got {opset} (pass opset=21)")
    return opset


def _write_model(proto: Any, path: str | os.PathLike, policy: Policy | None) -> dict[str, Any]:
    """Store the policy in the metadata, check the model, write it atomically; its operator counts and bytes."""
    import onnx

    if policy is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(policy.to_dict())
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    with atomic_write(path, "wb") as f:
        f.write(data)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    log.info("exported %s: %s", path, ops)
    return {"ops": ops, "bytes": len(data)}


def _int4_activations(proto: Any) -> int:
    """4-bit inputs in 4-bit tensors: unsigned ones QuantizeLinear -> UINT4 (whose range is exactly 0..15) ->
    DequantizeLinear, dropping the Clip the 8-bit container needed; signed ones (qpolicy's symmetric grid -7..7,
    one step narrower than INT4's -8..7) clip in float to ``[-7 s, 7 s]`` first (Max, Min; Clip takes no 4-bit
    type), then QuantizeLinear -> INT4 -> DequantizeLinear. Returns the count changed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    consts, users = _graph_index(graph)
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        zp = consts.get(q.input[2])
        nxt = users.get(q.output[0], [])
        if zp is None or zp.dtype not in (np.uint8, np.int8) or len(nxt) != 1 or nxt[0].op_type != "Clip":
            continue
        clip = nxt[0]
        lo, hi = consts.get(clip.input[1]), consts.get(clip.input[2])
        signed = zp.dtype == np.int8
        if lo is None or hi is None or (int(lo), int(hi)) != ((-7, 7) if signed else (0, 15)):
            continue
        scale = consts.get(q.input[1])
        if scale is None and q.input[1] in inits:
            scale = numpy_helper.to_array(inits[q.input[1]])
        if signed and (scale is None or scale.size != 1):
            continue
        name = q.output[0] + ("_int4_zero_point" if signed else "_uint4_zero_point")
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT4 if signed else TensorProto.UINT4,
                                                    zp.shape, [0] * max(zp.size, 1)))
        if signed:
            s = float(scale.reshape(()))
            bounds = [numpy_helper.from_array(np.array(v * s, dtype=np.float32), name=f"{q.output[0]}_clip_{k}")
                      for k, v in (("lo", -7), ("hi", 7))]
            graph.initializer.extend(bounds)
            # Max then Min rather than Clip: onnxruntime's Clip -> QuantizeLinear fusion fails on INT4 zero points
            floor, clipped = q.output[0] + "_float_floor", q.output[0] + "_float_clipped"
            at = list(graph.node).index(q)
            graph.node.insert(at, helper.make_node("Min", [floor, bounds[1].name], [clipped],
                                                   name=q.name + "_float_clip_hi"))
            graph.node.insert(at, helper.make_node("Max", [q.input[0], bounds[0].name], [floor],
                                                   name=q.name + "_float_clip_lo"))
            q.input[0] = clipped
        for dq in users.get(clip.output[0], []):
            dq.input[0] = q.output[0]
            if dq.op_type == "DequantizeLinear":
                dq.input[2] = name
        q.input[2] = name
        graph.node.remove(clip)
        changed += 1
    _drop_unused(graph)
    return changed


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """ONNX Runtime vs PyTorch on the same images.

    Attributes:
        top1_onnx, top1_torch: Top-1 (%) of each.
        max_abs_diff: Largest |logit difference|.
        tolerance: One quantization step of the logits (see :func:`verify_onnx`).
        within_tolerance: Every logit within it.
        images_within_tolerance: Fraction of images whose logits are all within it. (Convolutions sum in another
            order in each runtime; a float difference of 1e-7 at a rounding boundary moves one activation by a
            whole step, which then spreads, so a few images differ by more than a step while top-1 agrees.)
        agree: Fraction of images with the same predicted class.
        total: Images compared.
        margin_bound: How much one quantization step of difference at every input of the last quantized layer
            can move the difference of two logits: its input step times the largest L1 distance between two rows
            of its quantized weights. (See :func:`verify_onnx`.)
        disagree: Images whose predicted class differs.
        unexplained: Of those, the images whose PyTorch top-2 logit margin exceeds ``margin_bound``, which an
            accumulated rounding difference of one step cannot explain. Verification passes when this is 0.
    """

    top1_onnx: float
    top1_torch: float
    max_abs_diff: float
    tolerance: float
    within_tolerance: bool
    images_within_tolerance: float
    agree: float
    total: int
    seconds: float
    margin_bound: float = 0.0
    disagree: int = 0
    unexplained: int = 0

    @property
    def passed(self) -> bool:
        """The verification rule (:func:`verify_onnx`): every differing prediction is explained."""
        return self.unexplained == 0

    def failure(self) -> str:
        """One line saying why the verification failed ('' when it passed)."""
        if self.passed:
            return ""
        return (f"verification failed: {self.unexplained} of {self.disagree} differing predictions (of "
                f"{self.total} images) had a PyTorch top-2 logit margin above {self.margin_bound:.3g}, more than "
                f"one quantization step of difference at the last layer's input can explain (onnxruntime top-1 "
                f"{self.top1_onnx:.2f}% vs PyTorch {self.top1_torch:.2f}%)")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _logit_step(qmodel: nn.Module) -> float:
    """One quantization step of the logits: the last quantized layer's input step times its largest weight step,
    the resolution of its integer accumulator (its outputs are integers times that, plus the bias)."""
    last = None
    for mod in qmodel.modules():
        if getattr(mod, "act_quant", None) is not None and getattr(mod, "weight_quant", None) is not None:
            last = mod
    if last is None:
        return 1e-5
    return float(last.act_quant.scale.detach().abs().max()) * float(last.weight_quant.scale.detach().abs().max())


def _margin_bound(qmodel: nn.Module, steps: float) -> float:
    """``steps`` input steps of the last quantized layer times the largest L1 distance between two rows of its
    quantized weight: the most that a difference of that many steps in each of its inputs can change the
    difference of two of its outputs (logits)."""
    last = None
    for mod in qmodel.modules():
        if getattr(mod, "act_quant", None) is not None and getattr(mod, "weight_quant", None) is not None:
            last = mod
    if last is None:
        return 0.0
    with torch.no_grad():
        w = last.weight_quant(last.weight).reshape(last.weight.shape[0], -1)  # (classes, inputs)
        dist = torch.cdist(w.double(), w.double(), p=1).max()
    return steps * float(last.act_quant.scale.detach().abs().max()) * float(dist)


def verify_onnx(path: str | os.PathLike, qmodel: nn.Module, data: Iterable[Any], *,
                threads: int = 2, steps: float = 1.0) -> VerifyResult:
    """Run the exported model in onnxruntime on ``data`` (batches ``(x, y)``) beside the PyTorch model.

    The rule (``VerifyResult.passed``): the two runtimes may differ only by float rounding around the same integer
    grids (module docs), which amounts to a small difference, taken here as at most ``steps`` quantization step,
    in each input of the last quantized layer. That moves the difference of two logits by at most
    ``margin_bound`` = steps x its input step x the largest L1 distance between two rows of its quantized weight.
    So an image may be classified differently only where PyTorch's top-2 logit margin is within ``margin_bound``;
    any other differing prediction is a real mismatch, and the verification fails.
    """
    import time

    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = copy.deepcopy(qmodel).cpu().eval()
    tol = _logit_step(model)
    bound = _margin_bound(model, steps)
    correct_o = correct_t = agree = total = within = unexplained = 0
    worst = 0.0
    t = time.perf_counter()
    from ..progress import progress

    with torch.no_grad():
        for x, y in progress(data, desc="verify", total=len(data) if hasattr(data, "__len__") else None):
            ref = model(x).numpy()
            out = sess.run(["logits"], {"input": x.numpy()})[0]
            diff = np.abs(out - ref).max(axis=1)  # (B,) worst logit per image
            worst = max(worst, float(diff.max()))
            within += int((diff <= tol).sum())
            po, pt = out.argmax(1), ref.argmax(1)
            yy = y.numpy()
            correct_o += int((po == yy).sum())
            correct_t += int((pt == yy).sum())
            agree += int((po == pt).sum())
            top2 = np.sort(ref, axis=1)[:, -2:]  # (B, 2) second and first logit
            unexplained += int(((po != pt) & (top2[:, 1] - top2[:, 0] > bound)).sum())
            total += len(yy)
    if total == 0:
        raise ConfigError("the verification data yielded no batch")
    return VerifyResult(top1_onnx=100.0 * correct_o / total, top1_torch=100.0 * correct_t / total,
                        max_abs_diff=worst, tolerance=tol, within_tolerance=worst <= tol,
                        images_within_tolerance=within / total, agree=agree / total, total=total,
                        seconds=time.perf_counter() - t, margin_bound=bound, disagree=total - agree,
                        unexplained=unexplained)
