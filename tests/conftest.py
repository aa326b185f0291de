from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path | None:
    for cand in (os.environ.get("QPOLICY_HOME"), REPO.parent / "shared"):
        if cand and (Path(cand) / "models" / "resnet20-12fca82f.th").exists() and \
                (Path(cand) / "datasets" / "cifar10" / "test.npz").exists():
            return Path(cand)
    return None


SHARED = _shared()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Unit tests never read or write the user's cache: QPOLICY_HOME points at an empty folder."""
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path_factory.mktemp("home")))
    torch.manual_seed(0)


@pytest.fixture
def shared_home(monkeypatch) -> Path:
    """The real data and weights (../shared); the test is skipped when they are not there."""
    if SHARED is None:
        pytest.skip("real CIFAR-10 and pretrained weights not found (../shared or QPOLICY_HOME)")
    monkeypatch.setenv("QPOLICY_HOME", str(SHARED))
    return SHARED


@pytest.fixture(scope="session")
def local_ray():
    """A local 2-CPU Ray, started once per test run (``run_many`` with workers joins it instead of starting one)."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """Tests on a local Ray cluster are slow checks (`make test-slow`: starting Ray and its workers alone takes
    seconds); they run last, so that its idle workers do not slow the rest of the run."""
    for item in items:
        if "local_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "local_ray" in getattr(item, "fixturenames", ()))
