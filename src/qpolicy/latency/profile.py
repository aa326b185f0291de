"""``profile_latency``: measure a model's latency table on a deployment target (see :mod:`.table` for the design).

Every configuration is exported the way it ships (:func:`qpolicy.export.export_int8`: integer operators, float
layers between them) and timed in the target's own runtime; nothing is computed from a formula.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PolicyError
from .table import BASE, LatencyTable, Stat, layer_signature
from .targets import Target, target

__all__ = ["ProfileConfig", "profile_latency", "load_or_profile"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """How a latency table is measured.

    Args:
        target: A registered target (``qpolicy list targets``... ``ort-cpu``, ``ort-cuda``).
        batches: Batch sizes to measure (each gets its own entries).
        repeats: Paired repeats per entry (base and variant alternate; the entry is their median difference).
        max_repeats: An entry whose median is still uncertain after ``repeats`` pairs gets more, 5 at a time, up
            to this many (None: exactly ``repeats``). Uncertain: the median's standard error (estimated from the
            quartiles, ``1.253 * IQR / 1.349 / sqrt(n)``) above ``precision`` of the base latency. Noisy machines
            (two runtime threads on two shared cores) need it; quiet ones stop at ``repeats``.
        precision: That bound, a share of the base latency.
        run_ms: Each repeat times as many runs as take about this long (at least 3), and keeps their median.
        threads: The runtime's intra-op threads (0: its default, all cores).
        float_pairs: Also measure every two consecutive layers in float together (the table's pair terms).
    """

    target: str = "ort-cpu"
    batches: tuple[int, ...] = (1,)
    repeats: int = 15
    max_repeats: int | None = 60
    precision: float = 0.01
    run_ms: float = 20.0
    threads: int = 0
    float_pairs: bool = True

    def __post_init__(self) -> None:
        target(self.target)  # unknown names: did you mean
        if not isinstance(self.batches, tuple) or not self.batches or any(
                isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 4096 for b in self.batches):
            raise ConfigError(f"batches must be batch sizes in 1..4096, got {self.batches!r}")
        if len(set(self.batches)) != len(self.batches):
            raise ConfigError(f"batches must differ, got {list(self.batches)}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 3 <= self.repeats <= 1000:
            raise ConfigError(f"repeats must be an integer in 3..1000, got {self.repeats!r}")
        if self.max_repeats is not None and (isinstance(self.max_repeats, bool) or not isinstance(
                self.max_repeats, int) or not self.repeats <= self.max_repeats <= 1000):
            raise ConfigError(f"max_repeats must be an integer in repeats..1000 ({self.repeats}..1000) or None, got "
                              f"{self.max_repeats!r}")
        if isinstance(self.precision, bool) or not isinstance(self.precision, (int, float)) or \
                not 0 < self.precision < 1:
            raise ConfigError(f"precision must be a share of the base latency in (0, 1), got {self.precision!r}")
        if isinstance(self.run_ms, bool) or not isinstance(self.run_ms, (int, float)) or \
                not 0 < self.run_ms <= 10_000:
            raise ConfigError(f"run_ms must be a number of milliseconds in (0, 10000], got {self.run_ms!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 0 <= self.threads <= 1024:
            raise ConfigError(f"threads must be an integer in 0..1024 (0: the runtime's default), got "
                              f"{self.threads!r}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _set_module(model: Any, name: str, module: Any) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _time(sess: Any, feed: dict[str, Any], runs: int) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(ts)


def _paired(base: Any, other: Any, feed: dict[str, Any], repeats: int, runs: int) -> tuple[list[float], list[float]]:
    """Times (ms) of ``base`` and ``other``, alternating which goes first, one pair per repeat."""
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(_time(base, feed, runs))
            b.append(_time(other, feed, runs))
        else:
            b.append(_time(other, feed, runs))
            a.append(_time(base, feed, runs))
    return a, b


def _median_se(values: Sequence[float]) -> float:
    """The standard error of a median of ``values``, from their quartiles (normal approximation)."""
    st = Stat.of(values)
    return 1.2533 * (st.spread / 1.349) / math.sqrt(len(values))


def _more(config: ProfileConfig, base: Any, other: Any, feed: dict[str, Any], runs: int, a: list[float],
          b: list[float], entry: Any) -> None:
    """Extend the paired times ``a`` (base) and ``b`` 5 pairs at a time while the entry's median (``entry(a, b)``)
    is uncertain by more than ``config.precision`` of the base latency, up to ``config.max_repeats`` pairs."""
    while config.max_repeats is not None and len(b) < config.max_repeats and \
            _median_se(entry(a, b)) > config.precision * statistics.median(a):
        a2, b2 = _paired(base, other, feed, min(5, config.max_repeats - len(b)), runs)
        a += a2
        b += b2


def profile_latency(model: Any, *, calib: Iterable[Any], config: ProfileConfig | None = None,
                    calib_config: Any = None, input_shape: tuple[int, ...] | None = None,
                    model_name: str | None = None, command: str | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` on ``config.target`` (the model is not changed).

    Args:
        model: The float model.
        calib: ``(x, y)`` batches that calibrate the exported models as a deployment would (the runtime's graph
            optimizations depend on the quantization parameters, so they are the deployed calibration's).
        config: Target, batch sizes, repeats (:class:`ProfileConfig`).
        calib_config: The calibration the policies will be deployed with (default: ``CalibConfig()``, what
            ``qpolicy export`` uses).
        input_shape: Per-sample input shape (default: the model's ``input_shape``).
        model_name: Recorded in the table.
        command: The command line, recorded in the provenance.

    Returns:
        The table: base and float latency per batch size, and each layer's measured change at every other
        precision of the target, with repeats, medians and quartiles.
    """
    from ..export import export_int8
    from ..layers import model_input_shape, quantizable_layers
    from ..progress import progress
    from ..quant import CalibConfig, apply_policy

    config = config or ProfileConfig()
    tgt: Target = target(config.target)
    tgt.check()
    shape = model_input_shape(model, input_shape)
    layers = quantizable_layers(model, shape)
    if not layers:
        raise ConfigError("the model has no quantizable layer (Conv/Linear) to profile")
    calib_config = calib_config or CalibConfig()
    cal = [b for b, _ in zip(calib, range(calib_config.batches_needed), strict=False)]
    if not cal:
        raise ConfigError("profile needs at least one calibration batch")
    batch = cal[0]
    src = copy.deepcopy(model).cpu().eval()
    names = [li.name for li in layers]

    def uniform(w: int) -> Any:
        return apply_policy(src, _base_policy(names, w), calib=cal, config=calib_config).cpu().eval()

    sources = {"int8": uniform(7), "int8w8": uniform(8), "float": src}
    others = [p for p in tgt.precisions if p != BASE]
    x0 = batch[0].detach().float().cpu().numpy()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        def export(m: Any, name: str) -> str:
            path = os.path.join(tmp, f"{name}.onnx")
            if m is src:
                _export_float(src, path, shape)
            else:
                export_int8(m, path, calib=cal[:1], input_shape=tuple(shape))
            return path

        def variant(switch: dict[str, str]) -> Any:
            m = copy.deepcopy(sources[BASE])
            for name, prec in switch.items():
                _set_module(m, name, copy.deepcopy(sources[prec].get_submodule(name)))
            return m

        base_sess = tgt.session(export(sources[BASE], "base"), config.threads)
        float_sess = tgt.session(export(src, "float"), config.threads)
        feeds, runs = {}, {}
        for b in config.batches:
            feeds[b] = {base_sess.get_inputs()[0].name: _batch_of(x0, b)}
            runs[b] = _runs_per_repeat([base_sess, float_sess], feeds[b], config.run_ms)
        base_ms: dict[int, list[float]] = {b: [] for b in config.batches}
        float_ms: dict[int, Stat] = {}
        for b in config.batches:
            a, f = _paired(base_sess, float_sess, feeds[b], config.repeats, runs[b])
            _more(config, base_sess, float_sess, feeds[b], runs[b], a, f, lambda a, f: f)
            base_ms[b] += a
            float_ms[b] = Stat.of(f)
        delta: dict[str, dict[str, dict[int, Stat]]] = {n: {} for n in names}
        pairs: dict[str, dict[int, Stat]] = {}
        jobs = [({n: p}, (n, p)) for n in names for p in others]
        if config.float_pairs and "float" in others:
            jobs += [({a: "float", c: "float"}, (f"{a}>{c}", None)) for a, c in zip(names, names[1:], strict=False)]
        for switch, (key, prec) in progress(jobs, desc=f"latency on {tgt.name}", unit="variant"):
            sess = tgt.session(export(variant(switch), "variant"), config.threads)
            stats = delta[key].setdefault(prec, {}) if prec is not None else pairs.setdefault(key, {})
            for b in config.batches:
                for _ in range(2):
                    sess.run(None, feeds[b])
                a, v = _paired(base_sess, sess, feeds[b], config.repeats, runs[b])
                _more(config, base_sess, sess, feeds[b], runs[b], a, v,
                      lambda a, v: [y - z for y, z in zip(v, a, strict=True)])
                base_ms[b] += a
                stats[b] = Stat.of([y - z for y, z in zip(v, a, strict=True)])
    seconds = time.perf_counter() - t0
    prov = {**_provenance(config, runs, command), "input_shape": list(shape), "seconds": round(seconds, 1),
            "calib": calib_config.to_dict(),
            "method": "paired in-context switches against the all-int8 model (qpolicy.latency.table)",
            "float_pairs": bool(pairs)}
    log.info("latency table of %d layers x %d precisions on %s in %.0f s", len(names), len(others), tgt.name, seconds)
    return LatencyTable(model=model_name, target=tgt.name, layers=layer_signature(layers), batches=config.batches,
                        base=BASE, base_ms={b: Stat.of(v) for b, v in base_ms.items()}, float_ms=float_ms,
                        delta_ms=delta, float_pairs_ms=pairs, provenance=prov)


def _base_policy(names: Sequence[str], weight_bits: int = 7) -> Any:
    """Every layer at 8-bit inputs and ``weight_bits`` weights (7: the table's base, on u8s8 kernels)."""
    from ..policy import LayerBits, Policy

    return Policy(layers={n: LayerBits(weight_bits=weight_bits, act_bits=8) for n in names})


def _batch_of(x0: Any, b: int) -> Any:
    """A batch of ``b`` inputs, the calibration batch ``x0`` repeated as needed."""
    import numpy as np

    reps = int(math.ceil(b / len(x0)))
    return np.ascontiguousarray(np.concatenate([x0] * reps)[:b])


def _runs_per_repeat(sessions: Sequence[Any], feed: dict[str, Any], run_ms: float) -> int:
    """Warm the sessions up; then how many runs one repeat times so that it lasts about ``run_ms`` (3..1000)."""
    for _ in range(3):
        for s in sessions:
            s.run(None, feed)
    one = min(_time(s, feed, 3) for s in sessions)
    return max(3, min(1000, int(math.ceil(run_ms / max(one, 1e-3)))))


def _provenance(config: ProfileConfig, runs: dict[int, int], command: str | None) -> dict[str, Any]:
    """Machine, versions and timing settings of a measurement."""
    import onnxruntime as ort
    import torch

    from ..policy import versions

    return {"machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
            "versions": {**versions(), "onnxruntime": ort.__version__, "torch": str(torch.__version__)},
            "target": config.target, "threads": config.threads, "repeats": config.repeats,
            "max_repeats": config.max_repeats, "precision": config.precision,
            "runs_per_repeat": {str(b): runs[b] for b in runs}, "run_ms": config.run_ms, "command": command,
            "created": _now()}


def _now() -> str:
    """The time now (UTC, ISO 8601, seconds): when a measurement was made."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _export_float(model: Any, path: str, shape: Sequence[int]) -> None:
    """The float model as ONNX, the configuration relative budgets scale."""
    from ..export.int8 import float_onnx

    Path(path).write_bytes(float_onnx(model, tuple(shape)))


def load_or_profile(path: str | os.PathLike, model: Any, *, calib: Iterable[Any], config: ProfileConfig,
                    calib_config: Any = None, input_shape: tuple[int, ...] | None = None,
                    model_name: str | None = None, command: str | None = None,
                    force: bool = False) -> tuple[LatencyTable, bool]:
    """The table at ``path`` when it was measured for this model, target and batch sizes on this machine (the
    cache), else a new measurement written there atomically. Returns ``(table, reused)``."""
    from ..layers import model_input_shape, quantizable_layers

    p = Path(path)
    if p.exists() and not force:
        try:
            old = LatencyTable.load(p)
            old.check_layers(quantizable_layers(model, model_input_shape(model, input_shape)), model=model_name)
        except PolicyError as e:
            log.info("not reusing %s: %s", p, e)
        else:
            from ..quant import CalibConfig

            same = (old.target == config.target and set(old.batches) == set(config.batches)
                    and old.provenance.get("machine", {}).get("cpu") == _cpu_name()
                    and old.provenance.get("threads") == config.threads
                    and old.provenance.get("calib") == (calib_config or CalibConfig()).to_dict())
            if same:
                log.info("reusing the latency table %s (measured %s)", p, old.provenance.get("created"))
                return old, True
    table = profile_latency(model, calib=calib, config=config, calib_config=calib_config, input_shape=input_shape,
                            model_name=model_name, command=command)
    table.save(p)
    return table, False
