"""Rules of the comparison benchmarks: what each compares, checked without running them."""

import sys
from dataclasses import fields
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for m in ("qfa_compare", "_common"):
        sys.modules.pop(m, None)


def test_qfa_compare_arms_differ_in_the_activation_quantizer_only(bench):
    import qfa_compare

    a, b = qfa_compare.arms().values()
    differ = [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    assert differ == ["act_quantizer"]
