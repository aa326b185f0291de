"""Search time on large tables: ilp and te-lp on seeded random tables of 100 to 500 layers, at a BitOPs and a size
budget. Two kinds of table: "te-like" (the weight and activation sides rank the layers in the same order, as a TE
table does: te-lp takes its exact dynamic program) and "independent" (the two sides rank the layers differently:
te-lp falls back to the integer program with ordering rows, stopped at its time limit).

    python benchmarks/search_scale.py [--layers 100,200,500]
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from _common import md_table, write

from qpolicy.budget import Budget
from qpolicy.layers import LayerInfo
from qpolicy.search import search
from qpolicy.search.te_lp import MILP_TIME_LIMIT
from qpolicy.sensitivity import SensitivityTable

BITS = (2, 3, 4, 5, 6, 8)


def table(n: int, kind: str, seed: int = 0) -> SensitivityTable:
    rng = random.Random(seed)
    layers = [LayerInfo(name=f"l{i}", kind="conv", params=rng.randint(100, 50_000), macs=rng.randint(10**4, 10**7),
                        in_shape=(rng.randint(10, 10_000),), out_shape=(1,), order=i) for i in range(n)]
    w, a = {}, {}
    for li in layers:
        tw = rng.random()
        ta = tw * 0.5 if kind == "te-like" else rng.random()
        w[li.name] = {b: tw * (8 - b) for b in BITS}
        a[li.name] = {b: ta * (8 - b) for b in BITS}
    return SensitivityTable(metric=kind, bits=BITS, layers=tuple(layers), weight=w, act=a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="100,200,500")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    records, rows = [], []
    for n in (int(v) for v in args.layers.split(",")):
        for kind in ("te-like", "independent"):
            t = table(n, kind)
            for budget in (Budget(bitops=0.25), Budget(size=0.45)):
                for strategy in ("ilp", "te-lp"):
                    t0 = time.perf_counter()
                    r = search(t, budget, strategy=strategy)
                    sec = time.perf_counter() - t0
                    rec = {"layers": n, "table": kind, "budget": budget.to_dict(), "strategy": strategy,
                           "seconds": sec, "predicted_damage": r.predicted_damage,
                           "cost": r.cost.to_dict(per_layer=False)}
                    records.append(rec)
                    print(rec, flush=True)
                    rows.append([n, kind, str(budget), strategy, f"{sec:.2f}", f"{r.predicted_damage:.4g}"])
    notes = ("Seconds of one search (HiGHS through scipy for ilp and for te-lp's fallback; te-lp's exact staircase "
             "DP where both sides rank the layers alike). te-lp's integer program stops after "
             f"{MILP_TIME_LIMIT:.0f} s with its best policy (a warning gives the optimality gap), so its "
             "'independent' rows are at most that plus set-up. Candidate bits {2,3,4,5,6,8}, no fixed layers.")
    write("search_scale", {"results": records},
          md_table(["layers", "table", "budget", "strategy", "seconds", "predicted damage"], rows), notes)


if __name__ == "__main__":
    main()
