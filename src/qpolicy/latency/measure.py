"""``measure_latency``: a policy's model exported as it ships and timed end to end on a deployment target, beside
what a latency table predicted for it (the check that the prediction can be trusted).

Each policy is exported the way ``qpolicy export --int8-kernels`` ships it (the float model itself when every layer
is float) and timed in the target's runtime, alternating with the all-int8 base model of the latency table, so a
record carries both the absolute end-to-end time and the base measured at the same moment: when the machine has
drifted since the table was measured (another load, a clock change), the base shows it.

The record is a versioned JSON artefact (``qpolicy.latency-measure``) naming the model, target, batch, threads,
machine and the policy; ``qpolicy report`` draws predicted against measured latency from it, and top-1 against
measured latency where the run folder holds an evaluation of the same policy.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PolicyError, shorten
from .table import LatencyTable, Stat

__all__ = ["MEASURE_FORMAT", "LatencyMeasurement", "measure_latency"]

log = logging.getLogger(__name__)

MEASURE_FORMAT = "qpolicy.latency-measure"
MEASURE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class LatencyMeasurement:
    """One policy's model measured end to end on one target.

    Attributes:
        model: The model's name, if it has one.
        target: The target's registered name.
        policy: The policy measured (a :class:`qpolicy.policy.Policy`).
        measured_ms: Batch size -> end-to-end time of the exported policy (median and quartiles of the repeats).
        base_ms: Batch size -> the all-int8 base model, timed alternately with it (the machine's state then).
        predicted_ms: Batch size -> the latency table's prediction, where a table was given.
        table_base_ms: Batch size -> the table's own base latency (``base_ms`` over it is the drift since then).
        onnx: The exported file, where it was kept.
        provenance: Machine, versions, threads, repeats, runs per repeat, command, time.
    """

    model: str | None
    target: str
    policy: Any
    measured_ms: dict[int, Stat]
    base_ms: dict[int, Stat]
    predicted_ms: dict[int, float] = field(default_factory=dict)
    table_base_ms: dict[int, float] = field(default_factory=dict)
    onnx: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.measured_ms or set(self.base_ms) != set(self.measured_ms):
            raise PolicyError("a latency measurement needs the policy's and the base's time at the same batch sizes")
        for what, d in (("predicted_ms", self.predicted_ms), ("table_base_ms", self.table_base_ms)):
            if not set(d) <= set(self.measured_ms):
                raise PolicyError(f"{what} names batch sizes that were not measured")
            for v in d.values():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise PolicyError(f"{what} must hold positive milliseconds, got {shorten(v)}")

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(sorted(self.measured_ms))

    def error(self, batch: int) -> float | None:
        """|predicted - measured| / measured at ``batch`` (None without a prediction)."""
        if batch not in self.predicted_ms:
            return None
        m = self.measured_ms[batch].median
        return abs(self.predicted_ms[batch] - m) / m

    def drift(self, batch: int) -> float | None:
        """The base model now over the table's base, minus 1 (None without a table)."""
        if batch not in self.table_base_ms:
            return None
        return self.base_ms[batch].median / self.table_base_ms[batch] - 1.0

    # ---- file ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": MEASURE_FORMAT, "version": MEASURE_VERSION, "model": self.model, "target": self.target,
                "policy": self.policy.to_dict(),
                "batches": {str(b): {"measured_ms": self.measured_ms[b].to_dict(),
                                     "base_ms": self.base_ms[b].to_dict(), "predicted_ms": self.predicted_ms.get(b),
                                     "table_base_ms": self.table_base_ms.get(b), "error": self.error(b),
                                     "drift": self.drift(b)} for b in self.batches},
                "onnx": self.onnx, "provenance": dict(self.provenance)}

    def save(self, path: str | os.PathLike) -> None:
        from .._io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "latency measurement") -> LatencyMeasurement:
        from ..policy import Policy
        from .table import _batch, _stat

        if not isinstance(data, dict) or data.get("format") != MEASURE_FORMAT:
            raise PolicyError(f"{source}: not a qpolicy latency measurement (format should be {MEASURE_FORMAT!r})")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MEASURE_VERSION:
            raise PolicyError(f"{source}: latency measurement version {shorten(version)} (this qpolicy reads "
                              f"1..{MEASURE_VERSION})")
        try:
            per = data["batches"]
            if not isinstance(per, dict) or not per:
                raise PolicyError("batches must map batch sizes to times")
            measured, base, pred, tbase = {}, {}, {}, {}
            for b, rec in per.items():
                if not isinstance(rec, dict):
                    raise PolicyError(f"batch {shorten(b)}: a record must be an object")
                k = _batch(b)
                measured[k] = _stat(rec["measured_ms"], f"batch {k} measured_ms")
                base[k] = _stat(rec["base_ms"], f"batch {k} base_ms")
                if rec.get("predicted_ms") is not None:
                    pred[k] = rec["predicted_ms"]
                if rec.get("table_base_ms") is not None:
                    tbase[k] = rec["table_base_ms"]
            return cls(model=data.get("model"), target=str(data["target"]),
                       policy=Policy.from_dict(data["policy"], source=source), measured_ms=measured, base_ms=base,
                       predicted_ms=pred, table_base_ms=tbase, onnx=data.get("onnx"),
                       provenance=data.get("provenance") or {})
        except KeyError as e:
            raise PolicyError(f"{source}: missing field {e}") from None
        except (TypeError, ValueError, PolicyError) as e:
            raise PolicyError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyMeasurement:
        from .._io import read_json

        return cls.from_dict(read_json(path, "latency measurement"), source=str(path))


def measure_latency(model: Any, policies: Sequence[Any], *, calib: Iterable[Any], config: Any = None,
                    calib_config: Any = None, table: LatencyTable | None = None,
                    input_shape: tuple[int, ...] | None = None, model_name: str | None = None,
                    onnx_dir: str | os.PathLike | None = None,
                    command: str | None = None) -> list[LatencyMeasurement]:
    """Export each policy as it ships and time it end to end on ``config.target`` (the model is not changed).

    Args:
        model: The float model.
        policies: The policies to measure (every layer at 8-bit inputs or float: what integer kernels run).
        calib: ``(x, y)`` batches: the deployed calibration, as for :func:`.profile_latency`.
        config: Target, batch sizes, repeats (adaptive up to ``max_repeats``), runs per repeat, threads (a
            :class:`.ProfileConfig`).
        calib_config: The calibration the policies are deployed with (default ``CalibConfig()``).
        table: A latency table of this model and target: each record then carries its prediction.
        input_shape: Per-sample input shape (default: the model's ``input_shape``).
        model_name: Recorded, and checked against the table's.
        onnx_dir: Keep each exported model there as ``policy-<i>.onnx`` (default: a temporary folder).
        command: The command line, recorded in the provenance.

    Returns:
        One record per policy, in order.
    """
    from ..export import export_int8
    from ..layers import model_input_shape, quantizable_layers
    from ..progress import progress
    from ..quant import CalibConfig, apply_policy
    from .profile import (
        ProfileConfig,
        _base_policy,
        _batch_of,
        _export_float,
        _more,
        _now,
        _paired,
        _provenance,
        _runs_per_repeat,
    )
    from .targets import precision_of, target

    config = config or ProfileConfig()
    tgt = target(config.target)
    tgt.check()
    if not policies:
        raise ConfigError("measure_latency needs at least one policy")
    shape = model_input_shape(model, input_shape)
    layers = quantizable_layers(model, shape)
    names = [li.name for li in layers]
    for i, pol in enumerate(policies):  # everything checked before any work
        try:
            pol.validate_names(names)
        except PolicyError as e:
            raise PolicyError(f"policy {i + 1}: {e}") from None
        bad = [f"{n} ({lb.short()})" for n, lb in pol.layers.items()
               if precision_of(lb.weight_bits, lb.act_bits) is None]
        if bad:
            raise ConfigError(f"policy {i + 1}: target {tgt.name} has no kernel for " + ", ".join(bad[:4])
                              + (" ..." if len(bad) > 4 else "") + "; an integer-kernel layer takes 8-bit inputs "
                              "(weights 2..8 bits) or float ones")
    if table is not None:
        table.check_target(tgt.name)
        table.check_layers(layers, model=model_name)
        for b in config.batches:
            table.check_batch(b)
    calib_config = calib_config or CalibConfig()
    cal = [b for b, _ in zip(calib, range(calib_config.batches_needed), strict=False)]
    if not cal:
        raise ConfigError("measuring latency needs at least one calibration batch")
    src = copy.deepcopy(model).cpu().eval()
    x0 = cal[0][0].detach().float().cpu().numpy()
    keep = Path(onnx_dir) if onnx_dir is not None else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out: list[LatencyMeasurement] = []
    with tempfile.TemporaryDirectory() as tmp:
        def export(pol: Any, path: str) -> str:
            if all(lb.is_float for lb in pol.layers.values()):  # the float model itself (no integer operator)
                _export_float(src, path, shape)
            else:
                q = apply_policy(src, pol, calib=cal, config=calib_config).cpu().eval()
                export_int8(q, path, calib=cal[:1], input_shape=tuple(shape))
            return path

        base_sess = tgt.session(export(_base_policy(names), os.path.join(tmp, "base.onnx")), config.threads)
        feeds, runs = {}, {}
        for b in config.batches:
            feeds[b] = {base_sess.get_inputs()[0].name: _batch_of(x0, b)}
            runs[b] = _runs_per_repeat([base_sess], feeds[b], config.run_ms)
        # what every record shares: machine, versions, timing settings, calibration, the table's identity
        common = {**_provenance(config, runs, command), "calib": calib_config.to_dict()}
        tbase = {}
        if table is not None:
            common["table"] = {"created": table.provenance.get("created"), "model": table.model}
            tbase = {b: table.base_ms[b].median for b in config.batches}
        for i, pol in enumerate(progress(list(policies), desc=f"end-to-end latency on {tgt.name}", unit="policy")):
            path = str(keep / f"policy-{i}.onnx") if keep is not None else os.path.join(tmp, "policy.onnx")
            sess = tgt.session(export(pol, path), config.threads)
            measured, base = {}, {}
            for b in config.batches:
                for _ in range(3):
                    sess.run(None, feeds[b])
                a, v = _paired(base_sess, sess, feeds[b], config.repeats, runs[b])
                _more(config, base_sess, sess, feeds[b], runs[b], a, v, lambda a, v: v)
                measured[b], base[b] = Stat.of(v), Stat.of(a)
            pred = {b: table.predict(pol, b) for b in config.batches} if table is not None else {}
            out.append(LatencyMeasurement(model=model_name, target=tgt.name, policy=pol, measured_ms=measured,
                                          base_ms=base, predicted_ms=pred, table_base_ms=tbase,
                                          onnx=path if keep is not None else None,
                                          provenance={**common, "created": _now()}))
    log.info("measured %d polic%s end to end on %s in %.0f s", len(out), "y" if len(out) == 1 else "ies", tgt.name,
             time.perf_counter() - t0)
    return out

