"""One way to run many independent evaluations: serially (the default; no Ray import) or on Ray Core.

``run_many(fn, items, shared=..., workers=..., address=..., results=...)`` calls ``fn(shared, item)`` for every
item and returns the results in item order.

* **Serial** (``workers`` None or 1, no ``address``): a loop with a progress bar.
* **Ray** (``workers`` N > 1 starts a local Ray with N CPUs; ``address`` ``"auto"`` or ``"HOST:PORT"`` joins an
  existing cluster): ``shared`` (the model, the data) goes to the object store once (``ray.put``), not once per
  task; results arrive as they finish. A task whose worker dies is retried (``retries``). On a cluster with GPUs
  each task asks for an equal share of them, so that work shipped from a CUDA device finds one. Needs
  ``pip install 'qpolicy[ray]'``; usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``).
* **Errors**: an item whose ``fn`` raises does not stop the others; when all are done, :class:`RunManyError` names
  each failed item with its error, one line each.
* **Resume**: with ``results`` (a JSON file), each finished item's result is written there atomically as it
  arrives, keyed by ``key(item)``; a rerun (after a kill) computes only the items not in it. Results must then be
  plain JSON data. Callers with their own result file (``certify.json``) pass ``on_result(position, value)``
  instead, which runs in the calling process as each item finishes, and leave finished items out of ``items``.

Both backends compute the same thing: ``fn`` must depend only on ``shared`` and the item (seed inside ``fn``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import read_json, write_json
from .errors import ConfigError, QPolicyError, first_line
from .progress import progress

__all__ = ["run_many", "RunManyError", "RunStats", "check_workers", "check_address", "ray_session"]

log = logging.getLogger(__name__)
_FORMAT = "qpolicy.run_many"


class RunManyError(QPolicyError, RuntimeError):
    """Some items failed; ``failures`` lists ``(item key, error line)``, ``results`` holds the others (None where
    failed)."""

    def __init__(self, failures: list[tuple[str, str]], results: list[Any]):
        self.failures, self.results = failures, results
        lines = "; ".join(f"item {k}: {e}" for k, e in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} of {len(results)} items failed: {lines}{more}")


@dataclass(kw_only=True)
class RunStats:
    """What a ``run_many`` call did: backend, items computed now, items taken from the results file, seconds
    (``startup_seconds``: starting or joining Ray)."""

    backend: str = "serial"
    computed: int = 0
    resumed: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def check_workers(workers: Any) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer (1: serial, N: a local Ray with N CPUs), got "
                          f"{workers!r}")
    return workers


def check_address(address: str | None, timeout: float = 3.0) -> str | None:
    """``None``, ``"auto"`` or a reachable ``HOST:PORT`` (checked with a TCP connect within ``timeout`` s)."""
    if address is None or address == "auto":
        return address
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be 'auto' or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({first_line(e)}); start one with `ray start "
                          f"--head` there, or leave out --ray-address") from None
    return address


def _default_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=str)


def _load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    obj = read_json(path, "run_many results")
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT or not isinstance(obj.get("results"), dict):
        raise ConfigError(f"{path} is not a qpolicy run_many results file")
    return dict(obj["results"])


def run_many(fn: Callable[[Any, Any], Any], items: Sequence[Any], *, shared: Any = None, workers: int | None = None,
             address: str | None = None, results: str | os.PathLike | None = None,
             key: Callable[[Any], str] = _default_key, retries: int = 1, desc: str = "items",
             stats: RunStats | None = None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``[fn(shared, item) for item in items]``, serially or on Ray (module docs).

    Raises:
        RunManyError: some items failed (the others' results are kept, and written when ``results`` is given).
        ConfigError: bad ``workers`` or an unreachable ``address``.
    """
    workers = check_workers(workers)
    address = check_address(address)
    stats = stats if stats is not None else RunStats()
    t0 = time.perf_counter()
    keys = [key(it) for it in items]
    if len(set(keys)) != len(keys):
        raise ConfigError("run_many items must have distinct keys")
    path = Path(results) if results is not None else None
    done: dict[str, Any] = _load_results(path) if path is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in done]
    stats.resumed = len(items) - len(todo)
    failures: list[tuple[str, str]] = []

    def finish(i: int, value: Any) -> None:
        done[keys[i]] = value
        stats.computed += 1
        if path is not None:
            write_json(path, {"format": _FORMAT, "version": 1, "results": done})
        if on_result is not None:
            on_result(i, value)

    use_ray = address is not None or (workers or 1) > 1
    if todo and use_ray:
        stats.backend = "ray"
        _run_ray(fn, items, todo, shared, workers, address, retries, desc, finish, failures, keys, stats)
    else:
        for i in progress(todo, desc=desc, total=len(todo)):
            try:
                finish(i, fn(shared, items[i]))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # an item's own error: reported with the item, the others go on
                failures.append((keys[i], first_line(e)))
    stats.seconds = time.perf_counter() - t0
    stats.failures = failures
    out = [done.get(k) for k in keys]
    if failures:
        raise RunManyError(failures, out)
    return out


# Inside ray_session: objects already in the object store (id -> (object, ref)), so that a job calling run_many
# many times (the default search's refinement rounds) puts its model and data once.
_SESSION: dict[int, tuple[Any, Any]] | None = None


@contextlib.contextmanager
def ray_session(workers: int | None = None, address: str | None = None) -> Iterator[None]:
    """Keep one Ray runtime (and each ``shared`` object put once) across the ``run_many`` calls inside; serial
    settings (``workers`` None or 1, no ``address``) do nothing."""
    global _SESSION
    workers = check_workers(workers)
    address = check_address(address)
    if address is None and (workers or 1) <= 1 or _SESSION is not None:
        yield
        return
    ray = _import_ray()
    started = _init_ray(ray, workers, address) if not ray.is_initialized() else False
    _SESSION = {}
    try:
        yield
    finally:
        _SESSION = None
        if started:
            ray.shutdown()


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"--workers > 1 and --ray-address need Ray (pip install 'qpolicy[ray]'): {e}") from None
    return ray


def _init_ray(ray, workers: int | None, address: str | None) -> bool:
    try:
        if address is not None:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot start or join Ray ({'address ' + address if address else 'local'}): "
                          f"{first_line(e)}") from None
    return True


def _run_ray(fn, items, todo, shared, workers, address, retries, desc, finish, failures, keys, stats) -> None:
    ray = _import_ray()
    t = time.perf_counter()
    started = _init_ray(ray, workers, address) if not ray.is_initialized() else False
    stats.startup_seconds = time.perf_counter() - t
    try:
        if _SESSION is not None and id(shared) in _SESSION:
            shared_ref = _SESSION[id(shared)][1]
        else:
            shared_ref = ray.put(shared)
            if _SESSION is not None:
                _SESSION[id(shared)] = (shared, shared_ref)
        remote = ray.remote(max_retries=retries, num_cpus=1, num_gpus=_gpus_per_task(ray))(_call)
        pending = {remote.remote(fn, shared_ref, items[i]): i for i in todo}
        bar = progress(iter(range(len(todo))), desc=desc, total=len(todo))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i = pending.pop(ref)
            try:
                ok, value = ray.get(ref)
            except ray.exceptions.RayError as e:  # its worker died more often than retries allow
                ok, value = False, f"its worker died ({first_line(e)})"
            if ok:
                finish(i, value)
            else:
                failures.append((keys[i], value))
            next(bar, None)
    finally:
        if started:
            ray.shutdown()


def _gpus_per_task(ray) -> float:
    """A share of the cluster's GPUs per task (0 without any): Ray hides the GPUs from a task that asks for none,
    and a model or game shipped from a CUDA device must find one."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0.0)), float(res.get("CPU", 1.0))
    return min(1.0, gpus / max(cpus, 1.0)) if gpus > 0 else 0.0


def _call(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> tuple[bool, Any]:
    """Run one item in a worker; an exception comes back as (False, one line)."""
    import torch

    torch.set_num_threads(1)  # one CPU per task: workers do not fight over cores
    try:
        return True, fn(shared, item)
    except Exception as e:
        return False, first_line(e)
