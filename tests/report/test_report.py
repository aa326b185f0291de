import json
import shutil
import subprocess

import pytest

from qpolicy.budget import Budget
from qpolicy.errors import PolicyError
from qpolicy.layers import LayerInfo
from qpolicy.policy import LayerBits, Policy
from qpolicy.report import collect, render_report
from qpolicy.search import pareto, search
from qpolicy.sensitivity import SensitivityTable

pytest.importorskip("matplotlib")
BITS = (2, 4, 8)


def _run_dir(tmp_path):
    """A run folder of stored JSON only: two tables, a searched and a uniform policy, a front, evaluations."""
    layers = tuple(LayerInfo(name=n, kind="conv", params=100 * (i + 1), macs=1000 * (i + 1), in_shape=(10,),
                             out_shape=(1,), order=i) for i, n in enumerate("abcd"))
    for metric, scale in (("hessian", 1.0), ("qerror", 0.1)):
        dmg = {n: {2: scale * (4 - i), 4: scale * (4 - i) / 8, 8: 0.0} for i, n in enumerate("abcd")}
        SensitivityTable(metric=metric, bits=BITS, layers=layers, weight=dmg, act=dmg,
                         model="tiny").save(tmp_path / f"{metric}.json")
    table = SensitivityTable.load(tmp_path / "hessian.json")
    searched = search(table, Budget(bitops=0.3)).policy
    searched.save(tmp_path / "policy.json")
    uniform = Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in "abcd"}, model="tiny",
                     provenance={"method": "uniform", "spec": "w4a4"})
    uniform.save(tmp_path / "uniform.json")
    front = pareto(table, "bitops", [0.15, 0.3, 0.6])
    d = front.to_dict()
    for k, pt in enumerate(d["points"]):
        pt["top1"] = 80.0 + 5 * k
    (tmp_path / "front.json").write_text(json.dumps(d))
    for name, pol, top1 in (("eval_uniform.json", uniform, 84.0), ("eval_searched.json", searched, 86.5)):
        (tmp_path / name).write_text(json.dumps({"format": "qpolicy.evaluation", "policy": pol.to_dict(),
                                                 "top1": top1, "cost": {"bitops_rel_w8a8": 0.25,
                                                                        "size_rel_w8a8": 0.5}}))
    (tmp_path / "notes.json").write_text('{"something": "else"}')
    return tmp_path


def test_report_from_stored_json(tmp_path):
    run = _run_dir(tmp_path / "run")
    contents = collect(run)
    assert len(contents.tables) == 2 and len(contents.policies) == 2 and len(contents.fronts) == 1
    assert len(contents.evaluations) == 2 and contents.skipped == ["notes.json"]
    info = render_report(run, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert info["figures"] == ["Bit-width per layer", "Sensitivity: hessian (hessian.json)",
                               "Sensitivity: qerror (qerror.json)", "Pareto front: top-1 vs cost", "Cost per layer"]
    assert page.count('src="data:image/png;base64,') == 5 and "http" not in page.replace("http-equiv", "")
    md = (tmp_path / "report.md").read_text()
    # the report opens with the summary: each evaluated policy against the uniform one of the nearest cost
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Bit-width per layer</h2>")
    rows = {r[0].split(" (")[0]: r for r in info["summary"]["rows"]}
    assert rows["hessian + ilp"][-1] == "+2.50 vs uniform w4a4" and rows["uniform w4a4"][-1] == "-"
    assert "## Pareto front: top-1 vs cost" in md and "| uniform w4a4 | uniform |" in md and "86.50" in md


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "qpolicy.policy", "version": 1, "layers": 3}', "bad.json"),
    ('{"format": "qpolicy.pareto", "points": [{"cost": {}}]}', "bad.json: malformed qpolicy.pareto"),
    ('{"format": "qpolicy.pareto", "points": []}', "'metric' must be a string"),  # was a KeyError in render
    ('{"format": "qpolicy.evaluation", "policy": {"format": "qpolicy.policy", "version": 1, "layers": {"a": '
     '{"weight_bits": 4, "act_bits": 4}}}, "top1": 90, "cost": {"size_rel_w8a8": 0.5}}', "cost.bitops_rel_w8a8"),
    ('{"format": "qpolicy.evaluation", "policy": {"format": "qpolicy.policy", "version": 1, "layers": {"a": '
     '{"weight_bits": 4, "act_bits": 4}}}, "top1": "x", "cost": {}}', "top1 must be a finite number"),
])
def test_corrupt_run_folder_names_the_file(tmp_path, content, message):
    run = _run_dir(tmp_path / "run")
    (run / "sub").mkdir()
    (run / "sub" / "bad.json").write_text(content)
    with pytest.raises(PolicyError, match=message) as exc:
        render_report(run, tmp_path / "r.html")
    assert "bad.json" in str(exc.value)
    assert not (tmp_path / "r.html").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no qpolicy result"):
        collect(tmp_path / "empty")
    with pytest.raises(PolicyError, match="run folder not found"):
        collect(tmp_path / "missing")


def _chromium():
    return next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (CI installs it with apt)")
def test_report_renders_in_headless_chromium(tmp_path):
    run = _run_dir(tmp_path / "run")
    render_report(run, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,2400", "--enable-logging=stderr", "--v=0",
                           (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr.upper().replace("CONSOLE_", "")


def _certify_file(path, policy, radii, labels, preds):
    recs = [{"index": i, "label": y, "prediction": p, "radius": r, "p_lower": 0.9, "count": 90, "samples": 100,
             "seconds": 0.5, "method": "rs", "correct": p == y}
            for i, (r, y, p) in enumerate(zip(radii, labels, preds, strict=True))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "qpolicy.certify", "version": 1, "method": "rs", "split": "test",
                                "policy": policy.to_dict() if policy else None, "complete": True,
                                "settings": {"config": {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001,
                                                        "batch": 100, "seed": 0}},
                                "records": recs}))


def test_report_shows_certified_accuracy_curves(tmp_path):
    uniform = Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in "abcd"}, model="tiny",
                     provenance={"method": "uniform", "spec": "w4a4"})
    _certify_file(tmp_path / "fp" / "certify.json", None, [0.6, 0.3, 0.0, 0.9], [0, 1, 2, 3], [0, 1, -1, 2])
    _certify_file(tmp_path / "q" / "certify.json", uniform, [0.5, 0.1, 0.0, 0.0], [0, 1, 2, 3], [0, 1, -1, -1])
    info = render_report(tmp_path, tmp_path / "r.html")
    md = (tmp_path / "r.md").read_text()
    assert info["certificates"] == 2 and "Certified robustness (randomized smoothing)" in info["figures"]
    # float: correct radii 0.6 and 0.3 of 4 images -> ACR 0.225; at r=0.25 50%, at r=0.5 25%
    assert "| float [rs] (fp/certify.json) | 0.25 | 4 | 0.225 | 50.0 | 50.0 | 25.0 | 0.0 | 0.0 |" in md
    assert "| uniform w4a4 [rs] (q/certify.json) | 0.25 | 4 | 0.150 | 50.0 | 25.0 | 25.0 |" in md
    bad = json.loads((tmp_path / "q" / "certify.json").read_text())
    bad["records"][0]["radius"] = -1
    (tmp_path / "q" / "certify.json").write_text(json.dumps(bad))
    with pytest.raises(PolicyError, match="q/certify.json: malformed qpolicy.certify"):
        render_report(tmp_path, tmp_path / "r.html")


def test_report_plots_weight_kurtosis_from_inspect(tmp_path, capsys):
    from qpolicy.cli import main

    assert main(["inspect", "--model", "qpolicy.testing:TinyConvNet", "-o", str(tmp_path / "layers.json"),
                 "--quiet"]) == 0
    info = render_report(tmp_path, tmp_path / "r.html")
    md = (tmp_path / "r.md").read_text()
    assert "Weight kurtosis per layer" in info["figures"] and "| conv1 |" in md
    bad = json.loads((tmp_path / "layers.json").read_text())
    bad["layers"][0]["kurtosis"] = "high"
    (tmp_path / "layers.json").write_text(json.dumps(bad))
    with pytest.raises(PolicyError, match="layers.json: malformed qpolicy.layers"):
        render_report(tmp_path, tmp_path / "r.html")


def test_report_shows_a_latency_table_and_top1_against_predicted_latency(tmp_path):
    from qpolicy.latency import LatencyTable, Stat, layer_signature

    layers = [LayerInfo(name=n, kind="conv", params=100, macs=1000, in_shape=(10,), out_shape=(1,), order=i)
              for i, n in enumerate("abcd")]

    def st(v):
        return Stat(median=v, q1=v - 0.01, q3=v + 0.02, n=5)

    LatencyTable(model="tiny", target="ort-cpu", layers=layer_signature(layers), batches=(1,), base="int8",
                 base_ms={1: st(1.0)}, float_ms={1: st(2.0)},
                 delta_ms={n: {"float": {1: st(0.25 * (i + 1))}, "int8w8": {1: st(0.1)}}
                           for i, n in enumerate("abcd")}).save(tmp_path / "lat.json")
    w8 = Policy(layers={n: LayerBits(weight_bits=8, act_bits=8) for n in "abcd"}, model="tiny",
                provenance={"method": "uniform", "spec": "w8a8"})
    w4a4 = Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in "abcd"}, model="tiny",
                  provenance={"method": "uniform", "spec": "w4a4"})
    for name, pol, top1 in (("e8.json", w8, 90.0), ("e4.json", w4a4, 85.0)):
        (tmp_path / name).write_text(json.dumps({"format": "qpolicy.evaluation", "policy": pol.to_dict(),
                                                 "top1": top1, "cost": {"bitops_rel_w8a8": 1, "size_rel_w8a8": 1}}))
    info = render_report(tmp_path, tmp_path / "r.html")
    md = (tmp_path / "r.md").read_text()
    assert "Latency table (lat.json)" in info["figures"] and "Top-1 against predicted latency (lat.json)" in md
    assert "| c | conv 10 -> 1 | +0.7500 [+0.7400, +0.7700] | +0.1000 [+0.0900, +0.1200] |" in md
    # W8A8: 1.0 + 4 x 0.1 = 1.4 ms; W4A4 has no int8 kernel on the target, so it is not on the latency plot
    front = md.split("Top-1 against predicted latency")[1]
    assert "| uniform w8a8 | 1.4 | 90.00 |" in front and "w4a4" not in front
    # an end-to-end measurement of W8A8 (qpolicy measure): predicted against measured, and top-1 against measured
    from qpolicy.latency import LatencyMeasurement

    rec = LatencyMeasurement(model="tiny", target="ort-cpu", policy=w8, measured_ms={1: st(1.5)},
                             base_ms={1: st(1.05)}, predicted_ms={1: 1.4}, table_base_ms={1: 1.0})
    rec.save(tmp_path / "m8.json")
    info = render_report(tmp_path, tmp_path / "r.html")
    md = (tmp_path / "r.md").read_text()
    assert "Latency measured end to end against the table's prediction" in info["figures"]
    # error |1.4 - 1.5| / 1.5 = 6.7%; the base ran 1.05 ms against the table's 1.0: +5.0%
    assert "| uniform w8a8 | ort-cpu | 1 | 1.5 [1.49, 1.52] | 1.4 | 6.7% | +5.0% |" in md
    assert "| uniform w8a8 | ort-cpu | 1 | 1.5 | 90.00 | e8.json |" in md.split("Top-1 against measured latency")[1]
    bad = rec.to_dict()
    bad["batches"]["1"]["measured_ms"]["q1"] = 9.0  # quartiles that do not bracket the median
    (tmp_path / "m8.json").write_text(json.dumps(bad))
    with pytest.raises(PolicyError, match="m8.json: .*bracket the median"):
        render_report(tmp_path, tmp_path / "r.html")
