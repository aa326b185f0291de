"""DMPQ (argmax of alpha) vs SMPQ (Shapley values) vs the TE and Hessian policies on ResNet-20 / CIFAR-10, at the
BitOPs of uniform W3A4 and the weight size of uniform W3 (8-bit activations).

For each budget and seed: a DMPQ and an SMPQ search (same supernet settings, same data split), then every policy's
top-1 on the test set with PTQ only (our quantizer: MSE + BN re-estimation) and after ``--finetune-epochs`` of QAT;
TE (te-lp) and Hessian (ilp) policies are deterministic and searched once, fine-tuned with each seed. Also: search
wall time, how a Shapley round's cost scales with the number of samples, and per layer the agreement of alpha and
the Shapley values: Kendall tau over each side's candidates, and where their top candidates differ, which one
scores better on the held-out images when that side of that layer is restricted to it ("who was right").

    python benchmarks/mpq_compare.py [--seeds 0,1,2] [--epochs 3] [--train-images N] [--shapley-samples 10]
                                     [--finetune-epochs 1] [--limit N] [--jobs 2 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import md_table, write
from scipy.stats import kendalltau

import qpolicy as qp
from qpolicy.pipeline import evaluate_policy, finetune_policy
from qpolicy.supernet import DifferentiableConfig, monte_carlo_shapley, search_differentiable
from qpolicy.supernet.differentiable import _split, _SubnetGame

RUNS = Path(__file__).resolve().parents[1] / "runs" / "bench_mpq"


def who_was_right(net, shapley_round, held):
    """Per layer side: Kendall tau of alpha vs Shapley mean over the candidates; where the top candidates differ,
    the held-out top-1 with that side restricted to alpha's pick vs Shapley's pick."""
    mean = dict(zip(map(tuple, shapley_round["players"]), shapley_round["mean"], strict=True))
    game = _SubnetGame(net, held)
    rows = []
    for name, m in net.mixed_layers():
        for side in ("weight", "act"):
            bits = m.bits[side]
            if len(bits) < 2:
                continue
            alpha = [float(a) for a in m.alpha(side)]
            phi = [mean[(name, side, b)] for b in bits]
            tau = kendalltau(alpha, phi).statistic
            a_pick, s_pick = bits[max(range(len(bits)), key=alpha.__getitem__)], bits[
                max(range(len(bits)), key=phi.__getitem__)]
            row = {"layer": name, "side": side, "tau": None if tau != tau else float(tau), "alpha_pick": a_pick,
                   "shapley_pick": s_pick}
            if a_pick != s_pick:
                acc = {}
                for label, b in (("alpha", a_pick), ("shapley", s_pick)):
                    net.reset_masks()
                    for other in bits:
                        if other != b:
                            net.remove((name, side, other))
                    acc[label] = game.value()
                net.reset_masks()
                row.update({"top1_alpha_pick": acc["alpha"], "top1_shapley_pick": acc["shapley"],
                            "right": "shapley" if acc["shapley"] > acc["alpha"] else
                            "alpha" if acc["alpha"] > acc["shapley"] else "tie"})
            rows.append(row)
    return rows


BUDGETS = ("BitOPs of W3A4", "size of W3 (A8)")


def run_budget(label: str, args: argparse.Namespace) -> dict:
    """Every search, evaluation and fine-tuning of one budget (a worker process when ``--jobs`` > 1)."""
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    model = qp.models.load("resnet20")
    layers = qp.quantizable_layers(model)
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=args.limit)
    calib = qp.data.calib_loader("cifar10")
    train = qp.data.loader("cifar10", "train", batch_size=128)
    plain = qp.data.loader("cifar10", "train", batch_size=128, shuffle=True, augment=False)

    def rel(spec, what):
        c = qp.policy_cost(layers, qp.uniform_policy(model, spec))
        return c.bitops_rel_w8a8 if what == "bitops" else c.size_rel_w8a8

    budget, act = {"BitOPs of W3A4": (qp.Budget(bitops=rel("w3a4", "bitops")), None),
                   "size of W3 (A8)": (qp.Budget(size=rel("w3a8", "size")), 8)}[label]
    tables = {"te": (qp.analyze(model, plain, metric="te", bits=(2, 3, 4, 6, 8)), "te-lp"),
              "hessian": (qp.analyze(model, plain, metric="hessian", bits=(2, 3, 4, 6, 8)), "ilp")}
    rows, agreement, scaling = [], [], []
    policies: dict[str, dict[int, qp.Policy]] = {}
    search_seconds: dict[str, list[float]] = {}
    argmax_cost: dict[str, list[float]] = {}
    for name, (table, strategy) in tables.items():
        p = qp.search(table, budget, strategy=strategy, act_bits=act, first_last=8).policy
        policies[name] = dict.fromkeys(seeds, p)
        search_seconds[name] = [table.provenance["seconds"]]
    for method in ("dmpq", "smpq"):
        policies[method], search_seconds[method], argmax_cost[method] = {}, [], []
        for seed in seeds:
            cfg = DifferentiableConfig(epochs=args.epochs, train_images=args.train_images, seed=seed,
                            act_bits=(act,) if act else (2, 3, 4, 6, 8), shapley_samples=args.shapley_samples,
                            final_temperature=args.final_temperature)
            t = time.perf_counter()
            res = search_differentiable(model, budget, method=method, train=train, calib=calib, config=cfg,
                             out_dir=RUNS / f"{label}/{method}/{seed}".replace(" ", "_"), model_name="resnet20")
            search_seconds[method].append(time.perf_counter() - t)
            policies[method][seed] = res.policy
            am = qp.policy_cost(layers, res.argmax_policy)
            argmax_cost[method].append(am.bitops_rel_w8a8 if act is None else am.size_rel_w8a8)
            print(label, method, seed, f"{search_seconds[method][-1]:.0f} s",
                  f"argmax cost {argmax_cost[method][-1]:.3f}",
                  " ".join(b.short() for b in res.policy.layers.values()), flush=True)
            if method == "smpq" and res.shapley:
                _, _, held = _split(train, seed, args.train_images, cfg.shapley_images, cfg.batch_size)
                held = list(held)
                agreement.append({"budget": label, "seed": seed,
                                  "layers": who_was_right(res.supernet, res.shapley[-1], held)})
                if seed == seeds[0]:  # cost of one round vs samples, on the final supernet
                    for k in (int(v) for v in args.scaling.split(",")):
                        t = time.perf_counter()
                        est = monte_carlo_shapley(res.supernet.players(), _SubnetGame(res.supernet, held),
                                                  samples=k, truncation=cfg.truncation, seed=99)
                        scaling.append({"budget": label, "samples": k, "seconds": time.perf_counter() - t,
                                        "evaluations": est.evaluations, "truncated": est.truncated})
                        print("shapley scaling", scaling[-1], flush=True)
    rec = {"budget": label, "limits": budget.to_dict(), "act_bits": act, "methods": {}}
    limit_rel = budget.to_dict().get("bitops" if act is None else "size")
    for name, by_seed in policies.items():
        ptq, ft = [], []
        for seed in seeds:
            pol = by_seed[seed]
            ptq.append(evaluate_policy(model, pol, test=test, calib=calib).accuracy.top1)
            if args.finetune_epochs:
                ft_train = qp.data.loader("cifar10", "train", batch_size=128, seed=seed,
                                          limit=args.finetune_images)
                run, _ = finetune_policy(model, pol, train=ft_train, test=test, calib=calib,
                                         out_dir=RUNS / f"ft/{label}/{name}/{seed}".replace(" ", "_"),
                                         config=qp.FinetuneConfig(epochs=args.finetune_epochs, seed=seed))
                ft.append(run.after.top1)
        cost = qp.policy_cost(layers, by_seed[seeds[0]])
        rec["methods"][name] = {"ptq": ptq, "finetuned": ft, "search_seconds": search_seconds[name],
                                "argmax_cost_rel": argmax_cost.get(name),
                                "policies": {s: by_seed[s].to_dict() for s in seeds},
                                "cost_seed0": cost.to_dict(per_layer=False)}
        ms = lambda v: f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}" if v else "-"  # noqa: E731
        am = argmax_cost.get(name)
        rows.append([label, name, ms(ptq), ms(ft), f"{statistics.mean(search_seconds[name]):.0f}",
                     f"{cost.bitops_rel_w8a8:.3f}", f"{cost.size_rel_w8a8:.3f}",
                     f"{statistics.mean(am):.3f} (limit {limit_rel:.3f})" if am else "-"])
        print(rows[-1], flush=True)
    return {"record": rec, "rows": rows, "agreement": agreement, "scaling": scaling}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=None)
    ap.add_argument("--shapley-samples", type=int, default=10)
    ap.add_argument("--final-temperature", type=float, default=DifferentiableConfig.final_temperature,
                    help="end of the softmax temperature annealing (1: no annealing)")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-images", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="budgets run in parallel processes")
    ap.add_argument("--scaling", default="1,2,4", help="Shapley samples whose round cost is measured")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            outs = list(pool.map(run_budget, BUDGETS, [args] * len(BUDGETS)))
    else:
        outs = [run_budget(label, args) for label in BUDGETS]
    records = [o["record"] for o in outs]
    rows = [r for o in outs for r in o["rows"]]
    agreement = [a for o in outs for a in o["agreement"]]
    scaling = [s for o in outs for s in o["scaling"]]
    right = [r for a in agreement for r in a["layers"] if "right" in r]
    taus = [r["tau"] for a in agreement for r in a["layers"] if r["tau"] is not None]
    qat = f"after {args.finetune_epochs} epoch QAT" + (f" on {args.finetune_images} images" if args.finetune_images
                                                       else "") + " %"
    table = md_table(["budget", "policy", f"PTQ top-1 % (mean ± std, {len(seeds)} seeds)", qat, "search s",
                      "BitOPs / W8A8", "size / W8A8", "argmax (before the budget step) cost / W8A8"], rows)
    table += "\n\n" + md_table(["budget (players)", "Shapley samples", "seconds", "evaluations",
                                "truncated permutations"],
                               [[s["budget"], s["samples"], f"{s['seconds']:.0f}", s["evaluations"], s["truncated"]]
                                for s in scaling])
    table += "\n\n" + md_table(["quantity", "value"], [
        ["Kendall tau of alpha vs Shapley, mean over layer sides", f"{statistics.mean(taus):.3f}" if taus else "-"],
        ["layer sides whose top candidates differ", f"{len(right)} of {sum(len(a['layers']) for a in agreement)}"],
        ["... of which Shapley's pick scored higher / alpha's / tie",
         f"{sum(r['right'] == 'shapley' for r in right)} / {sum(r['right'] == 'alpha' for r in right)} / "
         f"{sum(r['right'] == 'tie' for r in right)}"]])
    notes = (f"ResNet-20, CIFAR-10. Supernet: candidates {{2,3,4,6,8}} (size budget: activations held at 8), first "
             f"and last layer W8A8, {args.epochs} epoch(s) over "
             f"{args.train_images or 50000} training images split in halves (weights / alpha), complexity weight 1, "
             f"softmax temperature annealed 1 -> {args.final_temperature:g}; "
             f"SMPQ: {args.shapley_samples} permutations per round, one round per epoch, 256 held-out images, "
             "truncation at 20% top-1, momentum 0.8. Both select under the exact budget with the ILP. PTQ: MSE "
             "clipping + BN re-estimation on 4,096 augmented training images; QAT: SGD lr 0.01 cosine"
             + (f" on {args.finetune_images} images" if args.finetune_images else "")
             + f"; top-1 on {args.limit or 10000} test images; {args.jobs} process(es) x {args.threads} torch "
             "thread(s).")
    write("mpq_compare", {"seeds": seeds, "results": records, "agreement": agreement, "shapley_scaling": scaling},
          table, notes)


if __name__ == "__main__":
    main()
