"""Render a run folder's results as one self-contained HTML file (figures embedded as PNG) and a markdown summary.

Figures (matplotlib, Agg): bits per layer of every policy (weights and activations); a sensitivity heat map
(layer x bits, log scale) per table; the Pareto front, top-1 vs BitOPs and vs size, with uniform and searched
policies marked; the cost of each layer under each policy. Every figure has the table of its numbers below it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..costs import policy_cost
from ..policy import Policy
from .collect import RunContents, collect

__all__ = ["render_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
details{margin-bottom:1em}"""


def _label(policy: Policy, source: str) -> str:
    p = policy.provenance
    if p.get("method") == "uniform":
        return f"uniform {p.get('spec')}"
    if p.get("metric") or p.get("strategy"):
        return f"{p.get('metric', '?')} + {p.get('strategy', '?')} ({source})"
    return source


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(headers: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    """(HTML, markdown) of one table."""
    h = "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in headers) + "</tr>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    md = "| " + " | ".join(map(str, headers)) + " |\n|" + "|".join("---" for _ in headers) + "|\n"
    md += "".join("| " + " | ".join(map(str, r)) + " |\n" for r in rows)
    return h + "</table>", md


def _policies(run: RunContents) -> list[tuple[str, Policy, float | None]]:
    """Every distinct policy with a label and its top-1 if an evaluation holds it."""
    out: dict[tuple, tuple[str, Policy, float | None]] = {}
    for src, pol in run.policies:
        out.setdefault(tuple(sorted((n, b.short()) for n, b in pol.layers.items())), (_label(pol, src), pol, None))
    for src, ev in run.evaluations:
        pol = ev["policy"]
        key = tuple(sorted((n, b.short()) for n, b in pol.layers.items()))
        label = _label(pol, src) + (" (fine-tuned)" if ev.get("finetuned") else "")
        if key in out and out[key][2] is None and not ev.get("finetuned"):
            out[key] = (out[key][0], pol, ev["top1"])
        else:
            out[(*key, src)] = (label, pol, ev["top1"])
    return list(out.values())


def summary_rows(run: RunContents) -> tuple[list[str], list[list[str]]]:
    """The summary that opens the report: every evaluated policy with top-1, size, BitOPs and its top-1 minus that
    of the uniform policy of the nearest cost in the run (BitOPs and size relative to W8A8)."""
    evs = [(src, ev) for src, ev in run.evaluations]
    uniform = [(src, ev) for src, ev in evs if ev["policy"].provenance.get("method") == "uniform"]
    headers = ["policy", "top-1 %", "size KiB (/ W8A8)", "BitOPs G (/ W8A8)", "vs uniform"]
    rows = []
    for src, ev in evs:
        c = ev["cost"]
        label = _label(ev["policy"], src) + (" (fine-tuned)" if ev.get("finetuned") else "")
        delta = "-"
        others = [u for u in uniform if u[0] != src]
        if others and ev["policy"].provenance.get("method") != "uniform":
            usrc, uev = min(others, key=lambda u: abs(u[1]["cost"]["bitops_rel_w8a8"] - c["bitops_rel_w8a8"])
                            + abs(u[1]["cost"]["size_rel_w8a8"] - c["size_rel_w8a8"]))
            delta = f"{ev['top1'] - uev['top1']:+.2f} vs {_label(uev['policy'], usrc)}"
        size = f"{c['size_bytes'] / 1024:.1f} " if c.get("size_bytes") is not None else ""
        bitops = f"{c['bitops'] / 1e9:.3f} " if c.get("bitops") is not None else ""
        rows.append([label, f"{ev['top1']:.2f}", f"{size}({c['size_rel_w8a8']:.3f})",
                     f"{bitops}({c['bitops_rel_w8a8']:.3f})", delta])
    return headers, rows


def certify_label(cert: dict[str, Any], source: str) -> str:
    pol = cert["policy"]
    what = "float" if pol is None else _label(pol, source).split(" (")[0]
    return f"{what} [{cert['method']}] ({source})"


CERTIFY_HEADERS = ["certify run", "sigma", "images", "ACR", "r=0 %", "r=0.25 %", "r=0.5 %", "r=0.75 %", "r=1 %",
                   "samples", "seconds"]


def _certify_section(run: RunContents, plt) -> tuple[tuple[str, str, str, str], list[list[str]]]:
    """Certified accuracy (correct with radius at least r) against r for every certify result, and its numbers."""
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = []
    for src, c in run.certificates:
        n = len(c["radii"]) or 1
        ok = sorted(r for r, good in zip(c["radii"], c["correct"], strict=True) if good)
        top = max([*ok, 0.0])
        grid = [top * i / 200 for i in range(201)] or [0.0]
        curve = [100.0 * sum(r >= g for r in ok) / n for g in grid]
        label = certify_label(c, src)
        ax.plot(grid, curve, label=label, linewidth=1.5)
        acr = sum(ok) / n
        at = {r: 100.0 * sum(x >= r for x in ok) / n for r in (0.0, 0.25, 0.5, 0.75, 1.0)}
        rows.append([label, f"{c['sigma']:g}", f"{len(c['radii'])}{'' if c['complete'] else ' (partial)'}",
                     f"{acr:.3f}", *(f"{v:.1f}" for v in at.values()), f"{c['samples']:,}", f"{c['seconds']:.0f}"])
    ax.set_xlabel("L2 radius (pixel units)")
    ax.set_ylabel("certified accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    h, md = _table(CERTIFY_HEADERS, rows)
    return ("Certified robustness (randomized smoothing)", _png(fig), h, md), rows


def _latency_sections(src: str, lat: Any, run: RunContents, plt) -> list[tuple[str, str | None, str, str]]:
    """A latency table's entries (bars with quartile whiskers, first batch size) and, for every evaluated policy
    the table can price, top-1 against its predicted latency beside the table's measured float and all-int8."""
    from ..errors import QPolicyError

    b = lat.batches[0]
    names = list(lat.layers)
    precs = [p for p in ("float", "int8w8") if any(p in lat.delta_ms[n] for n in names)]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / max(len(precs), 1)
    rows = []
    for k, p in enumerate(precs):
        st = [lat.delta_ms[n][p][b] for n in names]
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, [s.median for s in st], width, label=f"{p} - int8",
               yerr=[[s.median - s.q1 for s in st], [s.q3 - s.median for s in st]], capsize=2)
    for n in names:
        rows.append([n, lat.layers[n], *(f"{lat.delta_ms[n][p][b].median:+.4f} [{lat.delta_ms[n][p][b].q1:+.4f}, "
                                          f"{lat.delta_ms[n][p][b].q3:+.4f}]" for p in precs)])
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
    ax.set_ylabel(f"ms vs all int8 (batch {b})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    h, md = _table(["layer", "shape", *(f"{p} - int8, ms [quartiles]" for p in precs)], rows)
    intro = (f"{lat.model or 'model'} on {lat.target}, batch {b}: all int8 {lat.base_ms[b].median:.4g} ms, float "
             f"{lat.float_ms[b].median:.4g} ms; measured {lat.provenance.get('created', '?')} on "
             f"{lat.provenance.get('machine', {}).get('cpu', '?')}, {lat.provenance.get('threads', '?')} thread(s)")
    out = [(f"Latency table ({src})", _png(fig), f"<p>{html.escape(intro)}</p>" + h, f"{intro}\n\n{md}")]
    pts = []
    for esrc, ev in run.evaluations:
        try:
            pts.append((_label(ev["policy"], esrc), lat.predict(ev["policy"], b), ev["top1"]))
        except QPolicyError:  # another model's policy, or layers the target has no kernel for
            continue
    if pts:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for label, ms, top1 in pts:
            ax.plot([ms], [top1], "*", markersize=12, label=label)
        for ms, what in ((lat.base_ms[b].median, "all int8 (measured)"), (lat.float_ms[b].median,
                                                                          "float (measured)")):
            ax.axvline(ms, color="gray", linestyle=":", linewidth=1)
            ax.annotate(what, (ms, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom")
        ax.set_xlabel(f"predicted latency, ms ({lat.target}, batch {b})")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h, md = _table(["policy", "predicted ms", "top-1 %"], [[p[0], f"{p[1]:.4g}", f"{p[2]:.2f}"] for p in pts])
        out.append((f"Top-1 against predicted latency ({src})", _png(fig), h, md))
    return out


def _measured_latency_sections(run: RunContents, plt) -> list[tuple[str, str | None, str, str]]:
    """End-to-end latency measurements (``qpolicy measure``): predicted against measured, with the +-10% band the
    prediction is held to, and top-1 against measured latency for every measured policy the folder evaluated."""
    recs = [(src, m, b) for src, m in run.latency_measures for b in m.batches]
    rows = [[_label(m.policy, src), m.target, b, f"{m.measured_ms[b].median:.4g} [{m.measured_ms[b].q1:.4g}, "
             f"{m.measured_ms[b].q3:.4g}]", "-" if m.error(b) is None else f"{m.predicted_ms[b]:.4g}",
             "-" if m.error(b) is None else f"{m.error(b):.1%}", "-" if m.drift(b) is None else f"{m.drift(b):+.1%}"]
            for src, m, b in recs]
    h, md = _table(["policy", "target", "batch", "measured ms [quartiles]", "predicted ms", "error", "base drift"],
                   rows)
    out = []
    priced = [(src, m, b) for src, m, b in recs if b in m.predicted_ms]
    png = None
    if priced:
        fig, ax = plt.subplots(figsize=(6.4, 5))
        xs = [m.predicted_ms[b] for _, m, b in priced]
        ys = [m.measured_ms[b].median for _, m, b in priced]
        ax.errorbar(xs, ys, yerr=[[y - m.measured_ms[b].q1 for y, (_, m, b) in zip(ys, priced, strict=True)],
                                  [m.measured_ms[b].q3 - y for y, (_, m, b) in zip(ys, priced, strict=True)]],
                    fmt="o", capsize=2, label="policies (quartiles of the repeats)")
        lo, hi = min(xs + ys) * 0.85, max(xs + ys) * 1.15
        grid = [lo, hi]
        ax.plot(grid, grid, color="gray", linewidth=1, label="measured = predicted")
        ax.fill_between(grid, [g / 1.1 for g in grid], [g / 0.9 for g in grid], color="gray", alpha=0.15,
                        label="within 10% of measured")
        ax.set_xlabel("predicted latency, ms (latency table)")
        ax.set_ylabel("measured end to end, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        png = _png(fig)
    out.append(("Latency measured end to end" + (" against the table's prediction" if priced else ""), png, h, md))
    pts = []
    for src, m, b in recs:
        for esrc, ev in run.evaluations:
            if dict(ev["policy"].layers) == dict(m.policy.layers):
                pts.append((_label(m.policy, src), m.target, b, m.measured_ms[b], ev["top1"], esrc))
                break
    if pts:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for label, tgt, b, st, top1, _ in pts:
            ax.errorbar([st.median], [top1], xerr=[[st.median - st.q1], [st.q3 - st.median]], fmt="*",
                        markersize=12, capsize=2, label=f"{label} ({tgt}, batch {b})")
        ax.set_xlabel("measured latency, ms (end to end)")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h2, md2 = _table(["policy", "target", "batch", "measured ms", "top-1 %", "evaluation"],
                         [[p[0], p[1], p[2], f"{p[3].median:.4g}", f"{p[4]:.2f}", p[5]] for p in pts])
        out.append(("Top-1 against measured latency", _png(fig), h2, md2))
    return out


def render_report(run_dir: str | Path, out: str | Path, *, markdown: str | Path | None = None) -> dict[str, Any]:
    """Write ``out`` (HTML) and a markdown summary (default: ``out`` with ``.md``) from ``run_dir``'s results.

    Returns:
        What went in: counts of tables, policies, fronts, evaluations, and the figures drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = collect(run_dir)
    layers = run.layers
    pols = _policies(run)
    sections: list[tuple[str, str | None, str, str]] = []  # title, png, html table, md table
    onnx = sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*.onnx"))

    # 0. the summary: evaluated policies against uniform at the nearest cost, and the exported models
    headers, summary = summary_rows(run)
    if summary:
        h, md = _table(headers, summary)
        if onnx:
            h += "<p>ONNX: " + ", ".join(html.escape(o) for o in onnx) + "</p>"
            md += "\nONNX: " + ", ".join(onnx) + "\n"
        sections.append(("Summary", None, h, md))

    # 1. bits per layer
    if pols:
        names = list(pols[0][1].layers)
        fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
        rows = []
        for label, pol, _ in pols:
            for ax, side in zip(axes, ("weight_bits", "act_bits"), strict=True):
                vals = [getattr(pol.layers[n], side) or 32 for n in names if n in pol.layers]
                ax.step(range(len(vals)), vals, where="mid", label=label, linewidth=1.5, alpha=0.85)
            rows.append([label, " ".join(pol.layers[n].short() for n in names if n in pol.layers)])
        for ax, what in zip(axes, ("weight bits", "activation bits"), strict=True):
            ax.set_ylabel(what)
            ax.set_yticks([2, 3, 4, 5, 6, 7, 8])
            ax.grid(alpha=0.3)
        axes[1].set_xticks(range(len(names)), names, rotation=75, fontsize=7)
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h, md = _table(["policy", "bits per layer (execution order)"], rows)
        sections.append(("Bit-width per layer", _png(fig), h, md))

    # 2. sensitivity heat maps
    for src, table in run.tables:
        fig, axes = plt.subplots(1, 2, figsize=(11, max(3, 0.22 * len(table.layers) + 1)))
        rows = []
        for ax, side in zip(axes, ("weight", "act"), strict=True):
            scores = getattr(table, side)
            positive = [v for n in table.names for v in scores[n].values() if v > 0]
            floor = max(min(positive), max(positive) * 1e-6) if positive else 1e-12  # 0 damage: the floor
            grid = [[math.log10(max(scores[n][b], floor)) for b in table.bits] for n in table.names]
            im = ax.imshow(grid, aspect="auto", cmap="magma")
            ax.set_xticks(range(len(table.bits)), table.bits)
            ax.set_yticks(range(len(table.names)), table.names if side == "weight" else [""] * len(table.names),
                          fontsize=7)
            ax.set_title(f"{side} damage (log10)")
            ax.set_xlabel("bits")
            fig.colorbar(im, ax=ax, fraction=0.046)
        for n in table.names:
            rows.append([n, *(f"{table.weight[n][b]:.3g}" for b in table.bits),
                         *(f"{table.act[n][b]:.3g}" for b in table.bits)])
        h, md = _table(["layer", *(f"w{b}" for b in table.bits), *(f"a{b}" for b in table.bits)], rows)
        sections.append((f"Sensitivity: {table.metric} ({src})", _png(fig), h, md))

    # 3. Pareto front: top-1 vs BitOPs and vs size
    points = []  # (label, kind, bitops, size, top1)
    for src, front in run.fronts:
        for pt in front["points"]:
            if "top1" in pt:
                c = pt["cost"]
                points.append((f"{front['metric']} front ({src})", "front", c["bitops_rel_w8a8"],
                               c["size_rel_w8a8"], float(pt["top1"])))
    for src, ev in run.evaluations:
        pol, c = ev["policy"], ev["cost"]
        kind = "uniform" if pol.provenance.get("method") == "uniform" else "searched"
        points.append((_label(pol, src) + (" (fine-tuned)" if ev.get("finetuned") else ""), kind,
                       c["bitops_rel_w8a8"], c["size_rel_w8a8"], ev["top1"]))
    if points:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        style = {"front": ("o-", 4), "uniform": ("s", 8), "searched": ("*", 12)}
        for ax, idx, xl in ((axes[0], 2, "BitOPs / W8A8"), (axes[1], 3, "size / W8A8")):
            for label in dict.fromkeys(p[0] for p in points):
                pts = sorted((p for p in points if p[0] == label), key=lambda p: p[idx])
                fmt, ms = style[pts[0][1]]
                ax.plot([p[idx] for p in pts], [p[4] for p in pts], fmt, markersize=ms, label=label, alpha=0.85)
            ax.set_xlabel(xl)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("top-1 %")
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h, md = _table(["policy", "kind", "BitOPs / W8A8", "size / W8A8", "top-1 %"],
                       [[p[0], p[1], f"{p[2]:.4f}", f"{p[3]:.4f}", f"{p[4]:.2f}"] for p in points])
        sections.append(("Pareto front: top-1 vs cost", _png(fig), h, md))

    # 4. cost per layer
    if layers is not None and pols:
        names = [li.name for li in layers]
        fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
        rows = []
        width = 0.8 / len(pols)
        for k, (label, pol, _) in enumerate(pols):
            rep = policy_cost(layers, pol)
            by = {lc.name: lc for lc in rep.layers}
            xs = [i + k * width for i in range(len(names))]
            axes[0].bar(xs, [by[n].bitops / 1e6 for n in names], width, label=label)
            axes[1].bar(xs, [by[n].size_bytes / 1024 for n in names], width)
            rows.append([label, f"{rep.bitops / 1e9:.4f}", f"{rep.size_bytes / 1024:.1f}",
                         f"{rep.avg_weight_bits:.2f}", f"{rep.avg_act_bits:.2f}"])
        axes[0].set_ylabel("MBitOPs")
        axes[1].set_ylabel("weight KiB")
        axes[1].set_xticks(range(len(names)), names, rotation=75, fontsize=7)
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h, md = _table(["policy", "GBitOPs", "size KiB", "avg weight bits", "avg act bits"], rows)
        sections.append(("Cost per layer", _png(fig), h, md))

    # 5. certified robustness: certified accuracy against radius, float and quantized
    certify_rows: list[list[str]] = []
    if run.certificates:
        section, certify_rows = _certify_section(run, plt)
        sections.append(section)

    # 6. weight kurtosis per layer (`qpolicy inspect -o`): KURE drives it towards 1.8 (uniform)
    if run.kurtosis:
        names = list(run.kurtosis[0][1])
        fig, ax = plt.subplots(figsize=(11, 3.5))
        for src, kurt in run.kurtosis:
            ax.plot(range(len(names)), [kurt.get(n, float("nan")) for n in names], "o-", label=src, alpha=0.85)
        ax.axhline(1.8, color="gray", linestyle=":", label="uniform (1.8)")
        ax.axhline(3.0, color="gray", linestyle="--", label="normal (3)")
        ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
        ax.set_ylabel("weight kurtosis")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        h, md = _table(["layer", *(src for src, _ in run.kurtosis)],
                       [[n, *(f"{k.get(n, float('nan')):.2f}" for _, k in run.kurtosis)] for n in names])
        sections.append(("Weight kurtosis per layer", _png(fig), h, md))

    # 7. adversarial robustness: robust accuracy against eps, float vs each QNN; the suite's findings
    if run.attack_curves:
        attacks = sorted({c["attack"] for _, c in run.attack_curves})
        fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 4), squeeze=False)
        rows = []
        for ax, attack in zip(axes[0], attacks, strict=True):
            for src, c in run.attack_curves:
                if c["attack"] != attack:
                    continue
                xs, ys = zip(*c["points"], strict=True) if c["points"] else ((), ())
                ax.plot(xs, ys, "--" if "transfer" in c["label"] else "-", marker="o", label=c["label"],
                        linewidth=1.3)
                rows.append([attack, c["label"], ", ".join(f"{e:g}: {a:.0f}%" for e, a in c["points"]), src])
            ax.set_title(attack)
            ax.set_xlabel("eps (pixel units)")
            ax.set_ylabel("robust accuracy %")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        h, md = _table(["attack", "model / QNN", "robust accuracy per eps", "file"], rows)
        sections.append(("Adversarial robustness: robust accuracy against eps", _png(fig), h, md))
    for src, fs in run.findings:
        h, md = _table(["finding", "verdict", "cases"], [[f["finding"], f["verdict"], len(f.get("rows", []))]
                                                        for f in fs])
        sections.append((f"Findings of the attack suite ({src})", None, h, md))

    # 8. latency tables: each layer's measured change per precision, and top-1 against predicted latency
    for src, lat in run.latency:
        sections.extend(_latency_sections(src, lat, run, plt))
    if run.latency_measures:
        sections.extend(_measured_latency_sections(run, plt))

    title = f"qpolicy report: {run.root.name}"
    body = [f"<h1>{html.escape(title)}</h1><p>{len(run.tables)} sensitivity table(s), {len(run.policies)} "
            f"policy file(s), {len(run.fronts)} Pareto front(s), {len(run.evaluations)} evaluation(s), "
            f"{len(run.certificates)} certify result(s).</p>"]
    md_parts = [f"# {title}\n"]
    for name, png, h, md in sections:
        body.append(f"<h2>{html.escape(name)}</h2>")
        if png:
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{png}">')
        body.append(h if png is None else f"<details open><summary>numbers</summary>{h}</details>")
        md_parts.append(f"## {name}\n\n{md}")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    out = Path(out)
    md_path = Path(markdown) if markdown else out.with_suffix(".md")
    with atomic_write(out) as f:
        f.write(page)
    with atomic_write(md_path) as f:
        f.write("\n".join(md_parts))
    return {"html": str(out), "markdown": str(md_path), "figures": [s[0] for s in sections if s[1]],
            "summary": {"headers": headers, "rows": summary}, "onnx": onnx,
            "certify": {"headers": CERTIFY_HEADERS, "rows": certify_rows},
            "tables": len(run.tables), "policies": len(run.policies), "fronts": len(run.fronts),
            "evaluations": len(run.evaluations), "certificates": len(run.certificates), "skipped": run.skipped}
