"""Data-parallel training equals one process: ResNet-20 trained 50 steps with a global batch of 128, in one process
and in two gloo processes (each its half of every batch, BatchNorm on global statistics, gradients averaged).

For float fine-tuning and W4A4 QAT (PTQ first, first/last layer 8 bits): the largest absolute difference of any
parameter or buffer, the test top-1 of both, and the wall time (one process with 2 threads vs 2 processes with 1).
The same difference after fewer steps (``--trajectory``) shows how it grows, and for QAT the share of integer weight
codes (round(w / scale)) that differ between the two models: the rounding flips that make QAT diverge. Why they
appear at once: one training-mode forward pass of a quantized model, with and without a relative perturbation of
1e-7 (rounding level) on the input of one early layer's activation quantizer; the share of each later layer's
quantized activations that differ.

    python benchmarks/ddp_equivalence.py [--trajectory 1,5,20] [--cascade w4a4,w8a8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import md_table, write

import qpolicy as qp
from qpolicy.train import distributed

STEPS, BATCH = 50, 128


def _model(spec: str | None):
    model = qp.models.load("resnet20")
    if spec is None:
        return model
    return qp.apply_policy(model, qp.uniform_policy(model, spec), calib=qp.data.calib_loader("cifar10"))


def _run(spec: str | None, steps: int = STEPS) -> torch.nn.Module:
    from qpolicy.qat.finetune import FinetuneConfig, finetune

    model = _model(spec)
    data = qp.data.loader("cifar10", "train", batch_size=BATCH, limit=steps * BATCH, seed=0)
    finetune(model, data, config=FinetuneConfig(epochs=1, lr=0.01, checkpoint_every=0))
    return model


def _save_trained(spec: str | None, out: str, steps: int) -> None:
    """In each of the two processes: train; the main one saves."""
    from qpolicy import progress

    progress.set_enabled(False)
    model = _run(spec, steps)
    if distributed.is_main():
        torch.save(model.state_dict(), out)


def _ddp_state(spec: str | None, steps: int) -> tuple[dict, float]:
    """The rank-0 state after ``steps`` steps on two gloo processes, and the wall time (start-up included)."""
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "ddp.pt")
        t = time.perf_counter()
        distributed.spawn_local(_save_trained, spec, out, steps)
        return torch.load(out, weights_only=False), time.perf_counter() - t


def _codes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each fake-quantized weight's integer code, round(w_q / scale), by layer."""
    out = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            wq = getattr(m, "weight_quant", None)
            if wq is not None:
                s = wq.scale.view(-1, *([1] * (m.weight.dim() - 1)))
                out[name] = torch.round(wq(m.weight) / s).to(torch.int64)
    return out


def _compare(single: torch.nn.Module, state: dict, spec: str | None) -> dict:
    """Largest absolute and relative parameter differences, and differing weight codes (QAT)."""
    trainable = {n for n, _ in single.named_parameters()}
    ref = single.state_dict()
    absd = max((ref[k].double() - state[k].double()).abs().max().item() for k in trainable)
    rel = max(((ref[k].double() - state[k].double()).norm() / ref[k].double().norm().clamp_min(1e-12)).item()
              for k in trainable)
    out = {"max_abs_param_diff": absd, "max_rel_param_diff": rel}
    if spec is not None:
        other = _model(spec)
        other.load_state_dict(state)
        a, b = _codes(single), _codes(other)
        flips = sum(int((a[n] != b[n]).sum()) for n in a)
        total = sum(a[n].numel() for n in a)
        out.update(code_flips=flips, weights=total, code_flip_fraction=flips / total)
    return out


def _cascade(spec: str, at: str = "layer1.0.conv1", rel: float = 1e-7) -> dict[str, float]:
    """Share of each layer's quantized input that changes when ``at``'s activation-quantizer input is perturbed by
    ``rel`` (relative, seeded), in one training-mode forward pass of a 128-image batch."""
    model = _model(spec).train()
    x, _ = next(iter(qp.data.loader("cifar10", "train", batch_size=BATCH, limit=BATCH, seed=0)))
    outs: dict[str, list[torch.Tensor]] = {}
    on = {"perturb": False}

    def record(name):
        return lambda mod, inp, out: outs.setdefault(name, []).append(out.detach().clone())

    def perturb(mod, inp):
        if on["perturb"]:
            g = torch.Generator().manual_seed(1)
            return (inp[0] * (1 + rel * torch.randn(inp[0].shape, generator=g)),)
        return None

    for name, mod in model.named_modules():
        if getattr(mod, "act_quant", None) is not None:
            mod.act_quant.register_forward_hook(record(name))
            if name == at:
                mod.act_quant.register_forward_pre_hook(perturb)
    with torch.no_grad():
        model(x)
        on["perturb"] = True
        model(x)
    return {name: (a != b).double().mean().item() for name, (a, b) in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default="float,w4a4")
    ap.add_argument("--trajectory", default="1,5,20", help="also compare after these step counts ('' for none)")
    ap.add_argument("--cascade", default="w4a4,w8a8", help="policies of the one-pass perturbation table")
    args = ap.parse_args()
    steps_list = [int(k) for k in args.trajectory.split(",") if k.strip()]
    traj_rows = []
    test = qp.data.loader("cifar10", "test", batch_size=500, limit=2000)
    rows, payload = [], {}
    for spec in args.specs.split(","):
        s = None if spec == "float" else spec
        torch.set_num_threads(2)
        t = time.perf_counter()
        single = _run(s)
        t_single = time.perf_counter() - t
        state, t_ddp = _ddp_state(s, STEPS)
        ddp = _model(s)
        ddp.load_state_dict(state)
        ref = single.state_dict()
        trainable = {n for n, _ in single.named_parameters()}
        diffs, rel = {}, {}
        for k in ref:
            if torch.is_tensor(ref[k]) and ref[k].is_floating_point():
                a, b = ref[k].double(), state[k].double()
                diffs[k] = (a - b).abs().max().item()
                rel[k] = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
        params = {k: v for k, v in diffs.items() if k in trainable}
        worst = sorted(params.items(), key=lambda kv: -kv[1])[:3]
        rel_params = max(v for k, v in rel.items() if k in trainable)
        rel_buffers = max(v for k, v in rel.items() if k not in trainable)
        top_single, top_ddp = qp.evaluate(single, test).top1, qp.evaluate(ddp, test).top1
        payload[spec] = {"max_abs_param_diff": max(params.values()), "worst_params": worst,
                         "max_rel_param_diff": rel_params, "max_rel_buffer_diff": rel_buffers,
                         "max_abs_diff_all": max(diffs.values()), "top1_single": top_single, "top1_ddp": top_ddp,
                         "seconds_single": t_single, "seconds_ddp": t_ddp}
        trajectory = []
        for k in [*steps_list, STEPS]:
            torch.set_num_threads(2)
            c = _compare(single, state, s) if k == STEPS else _compare(_run(s, k), _ddp_state(s, k)[0], s)
            trajectory.append({"steps": k, **c})
            traj_rows.append([spec, str(k), f"{c['max_abs_param_diff']:.1e}", f"{c['max_rel_param_diff']:.1e}",
                              f"{c['code_flips']:,} of {c['weights']:,} ({100 * c['code_flip_fraction']:.3f}%)"
                              if "code_flips" in c else "-"])
            print(traj_rows[-1], flush=True)
        payload[spec]["trajectory"] = trajectory
        rows.append([spec, f"{max(params.values()):.2e}", ", ".join(f"{k} {v:.1e}" for k, v in worst),
                     f"{rel_params:.1e}", f"{rel_buffers:.1e}", f"{top_single:.2f}", f"{top_ddp:.2f}",
                     f"{t_single:.0f}", f"{t_ddp:.0f}"])
        print(rows[-1], flush=True)
    table = md_table(["training", "max abs parameter difference", "largest three (parameters)",
                      "max relative difference, parameter tensors", "max relative difference, BatchNorm statistics "
                      "and other buffers", "test top-1 1 proc", "test top-1 2 procs", "s 1 proc (2 threads)",
                      "s 2 procs (1 thread each, incl. start-up)"], rows)
    table += "\n\nHow the difference grows with the steps:\n\n" + md_table(
        ["training", "steps", "max abs parameter difference", "max relative difference, parameter tensors",
         "integer weight codes that differ"], traj_rows)
    quantized = [s for s in args.cascade.split(",") if s.strip()]
    if quantized:
        cascades = {s: _cascade(s) for s in quantized}
        payload["cascade"] = {"perturbed": "layer1.0.conv1", "relative": 1e-7, "share_changed": cascades}
        layers = list(cascades[quantized[0]])
        table += ("\n\nOne forward pass, input of layer1.0.conv1's activation quantizer perturbed by 1e-7 "
                  "(relative): share of each layer's quantized input that changes\n\n" + md_table(
                      ["layer", *quantized], [[n, *(f"{100 * cascades[s][n]:.4f}%" for s in quantized)]
                                              for n in layers]))
    notes = (f"ResNet-20 (pretrained), {STEPS} SGD steps with a global batch of {BATCH} (6,400 training images, "
             "seed 0, lr 0.01), one process vs two gloo processes on this machine; top-1 on 2,000 test images. "
             "Relative difference of a tensor: ||a - b|| / ||a||. "
             "W4A4: PTQ (first/last 8 bits) then QAT. Under QAT a float difference at rounding-error level can move "
             "a value across a quantizer's rounding boundary, and such flips accumulate over the steps. The second "
             "table repeats both runs for fewer steps (each from the same start): a weight code is round(w_q / scale) "
             "with each model's own scale.")
    write("ddp_equivalence", {"steps": STEPS, "batch": BATCH, "results": payload}, table, notes)


if __name__ == "__main__":
    main()
