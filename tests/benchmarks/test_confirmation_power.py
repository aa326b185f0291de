"""benchmarks/confirmation_power.py: per-image statistics and the paired comparison, on cases checked by hand."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for m in ("confirmation_power", "search_quality", "_common"):
        sys.modules.pop(m, None)


def test_per_image_statistics_match_their_definitions(bench):
    import confirmation_power as cp

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # the "quantized" model's outputs
    float_logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1])
    x = torch.arange(3.0).unsqueeze(1)

    class Fixed(torch.nn.Module):
        def forward(self, inp):
            return logits[inp.squeeze(1).long()]

    out = cp.per_image(Fixed(), [float_logits], [(x, y)])
    p0 = math.exp(2) / (math.exp(2) + 1)  # softmax of (2, 0), first class
    assert out["ce"] == pytest.approx([-math.log(p0), math.log(1 + math.e), math.log(2)])
    assert out["brier"] == pytest.approx([2 * (1 - p0) ** 2, 2 * (math.e / (1 + math.e)) ** 2, 0.5])
    assert out["top1"].tolist() == [0.0, 1.0, 1.0]  # the tie (1, 1) is read as class 0: wrong
    assert out["kl"][0] == pytest.approx(0.0, abs=1e-7)  # same outputs as float
    assert out["kl"][1] > 0 and out["kl"][2] > 0


def test_compare_gives_the_paired_gain_its_error_and_the_rule(bench):
    import confirmation_power as cp

    n = 400
    base_err = np.zeros(n)
    base_err[:40] = 1.0  # uniform wrong on 40 images
    mine_err = np.zeros(n)
    mine_err[:20] = 1.0  # the candidate wrong on 20 of them, right on the other 20
    mine_err[200:204] = 1.0  # and wrong on 4 that uniform gets right
    loss = lambda e: e + 0.1  # noqa: E731 - a loss that follows the errors
    base = {"ce": loss(base_err), "brier": loss(base_err), "top1": base_err, "kl": np.full(n, 0.2)}
    mine = {"ce": loss(mine_err), "brier": loss(mine_err), "top1": mine_err, "kl": np.full(n, 0.2)}
    r = cp.compare(mine, base, level=0.05 / 3)
    d = 100.0 * (base_err - mine_err)  # +100 on 20 images, -100 on 4
    assert r["top1_gain"] == pytest.approx(100.0 * 16 / n)
    assert r["top1_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(n))
    t = -r["top1_gain"] / r["top1_se"]
    assert r["t"]["top1"] == pytest.approx(t) and r["t"]["ce"] == pytest.approx(t)
    assert r["passes"]["top1"] and r["passes"]["ce"]  # t = -3.3: p < 0.0167
    assert r["t"]["kl"] == 0.0 and r["p"]["kl"] == 1.0 and not r["passes"]["kl"]  # no difference: never passes
    # fewer images carrying the same gain: not significant at the rule's level
    small = cp.compare({k: v[::4] for k, v in mine.items()}, {k: v[::4] for k, v in base.items()}, level=0.05 / 3)
    assert small["top1_gain"] > 0 and not small["passes"]["ce"]
