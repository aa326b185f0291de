"""Bad input, measured: a seeded corpus of mutated inputs (sensitivity tables, policies, result folders, budgets,
sweeps, bit lists, output paths) run through the CLI in-process. For every case: exit 0 or 2, never an exception
(a traceback), never past a time limit (a hang), no output file unless it succeeded (no partial file), one short
error line (no echo of a huge input), and a case built to be invalid never succeeds (no silent accept)."""

from __future__ import annotations

import copy
import json
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from qpolicy.budget import Budget
from qpolicy.cli import main
from qpolicy.layers import LayerInfo
from qpolicy.policy import LayerBits, Policy
from qpolicy.search import search
from qpolicy.sensitivity import SensitivityTable

BITS = (2, 4, 8)
CASE_SECONDS = 20
TIMES: list[tuple[float, str]] = []  # (seconds, case) of every case run, for `pytest -s` when the corpus is slow
PER_COMMAND: dict[str, int] = {}  # cases per command (`pytest -s` prints them)


def _table() -> dict:
    layers = tuple(LayerInfo(name=f"l{i}", kind="conv", params=100 * (i + 1), macs=1000 * (i + 1), in_shape=(4, 2),
                             out_shape=(8,), order=i) for i in range(4))
    dmg = {li.name: {2: 4.0 - i, 4: (4.0 - i) / 8, 8: 0.0} for i, li in enumerate(layers)}
    return SensitivityTable(metric="golden", bits=BITS, layers=layers, weight=dmg, act=dmg, model="tiny").to_dict()


HUGE = "9" * 5000
# (raw JSON text of a value, whether it keeps a table valid)
BAD_SCORES = ["[]", "null", '"x"', "NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, HUGE, "-1.0", "true",
              "{}"]
BAD_COUNTS = ["-5", "2.5", '"7"', "null", "true", "1" + "0" * 400, "[]"]
BAD_BITS = ["[2.5, 4, 8]", "[]", "[1, 4, 8]", "[9, 4, 8]", '["4", 2, 8]', "[2, 2, 4, 8]", "null", '"2,4,8"']
BAD_SHAPES = ['"abc"', "[0]", "[-1]", "5", "[1.5]", "[true]"]
BAD_NAMES = ['""', "5", "null", '"\\ud800"', "[]"]
GOOD_SCORES = ["0", "0.5", "3", "1e-300", "123456.0"]


def _text(data: dict) -> str:
    return json.dumps(data)


def _set_raw(data: dict, path: list, raw: str) -> str:
    """The table as JSON text with the value at ``path`` replaced by the raw JSON ``raw`` (which json.dumps could
    not write: NaN as a literal, huge numbers, lone surrogates)."""
    marker = "__FUZZ_MARKER__"
    d = copy.deepcopy(data)
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = marker
    return json.dumps(d).replace(f'"{marker}"', raw)


def _table_cases(rng: random.Random) -> list[tuple[str, str, bool]]:
    """(name, table JSON text, must_fail)."""
    base = _table()
    names = [li["name"] for li in base["layers"]]
    cases = []
    for raw in BAD_SCORES:
        for side in ("weight", "act"):
            for n in names:
                for b in map(str, BITS):
                    cases.append((f"score {side} {n} {b} = {raw[:20]}", _set_raw(base, [side, n, b], raw), True))
    for field in ("params", "macs"):
        for raw in BAD_COUNTS:
            for i in range(len(names)):
                cases.append((f"layers[{i}].{field} = {raw[:20]}", _set_raw(base, ["layers", i, field], raw), True))
    for raw in BAD_BITS:
        cases.append((f"bits = {raw}", _set_raw(base, ["bits"], raw), raw != "[2, 2, 4, 8]"))
    for raw in BAD_SHAPES:
        for i in range(len(names)):
            cases.append((f"in_shape {i} = {raw}", _set_raw(base, ["layers", i, "in_shape"], raw), True))
    for raw in BAD_NAMES:
        cases.append((f"metric = {raw}", _set_raw(base, ["metric"], raw), True))
        for i in range(len(names)):
            cases.append((f"layers[{i}].name = {raw}", _set_raw(base, ["layers", i, "name"], raw), True))
    # structure
    d = copy.deepcopy(base)
    d["layers"] = []
    cases.append(("no layers", _text(d), True))
    d = copy.deepcopy(base)
    d["layers"].append(copy.deepcopy(d["layers"][0]))
    cases.append(("duplicate layer", _text(d), True))
    d = copy.deepcopy(base)
    del d["weight"][names[1]]
    cases.append(("missing weight scores", _text(d), True))
    d = copy.deepcopy(base)
    d["act"]["ghost"] = d["act"][names[0]]
    cases.append(("extra act scores", _text(d), True))
    d = copy.deepcopy(base)
    d["layers"][2]["shares_input_with"] = "ghost"
    cases.append(("shares with unknown", _text(d), True))
    d = copy.deepcopy(base)
    d["layers"][2]["shares_input_with"] = 5
    cases.append(("shares with a number", _text(d), True))
    text = _text(base)
    cases.append(("duplicate key", text.replace('"weight": {', '"weight": {"l0": {"2": 1, "4": 1, "8": 1}, ', 1),
                  True))
    for depth in (50, 2000, 20000):
        cases.append((f"nested {depth}", "[" * depth + "]" * depth, True))
        cases.append((f"nested in provenance {depth}", _set_raw(base, ["provenance"], "{\"a\": " * depth + "1"
                                                                + "}" * depth), depth > 900))
    for cut in (1, 10, len(text) // 2, len(text) - 1):
        cases.append((f"truncated at {cut}", text[:cut], True))
    for raw in ('"qpolicy.policy"', "null", "3"):
        cases.append((f"format = {raw}", _set_raw(base, ["format"], raw), True))
    for raw in ("2", "0", '"1"', "null", HUGE):
        cases.append((f"version = {raw[:10]}", _set_raw(base, ["version"], raw), True))
    cases.append(("not an object", "[1, 2, 3]", True))
    cases.append(("empty file", "", True))
    cases.append(("binary", "\x00\x01\x02", True))
    # valid edits: the search may succeed (or fail cleanly, e.g. an infeasible budget)
    for _ in range(200):
        n, side, b = rng.choice(names), rng.choice(("weight", "act")), str(rng.choice(BITS))
        cases.append((f"valid score {side} {n} {b}", _set_raw(base, [side, n, b], rng.choice(GOOD_SCORES)), False))
    for _ in range(40):
        i = rng.randrange(len(names))
        d = copy.deepcopy(base)
        d["layers"][i]["params"] = rng.randint(0, 10**6)
        d["layers"][i]["macs"] = rng.randint(0, 10**8)
        cases.append((f"valid sizes {i}", _text(d), False))
    return cases


def _policy_cases(rng: random.Random) -> list[tuple[str, str, bool]]:
    pol = Policy(layers={f"l{i}": LayerBits(weight_bits=4, act_bits=8) for i in range(4)}, model="tiny").to_dict()
    cases = []
    for raw in ("2.5", "1", "9", '"4"', "true", "[]", HUGE, "NaN", "-3"):
        for side in ("weight_bits", "act_bits"):
            cases.append((f"policy {side} = {raw[:10]}", _set_raw(pol, ["layers", "l1", side], raw), True))
    cases.append(("policy no layers", _set_raw(pol, ["layers"], "{}"), True))
    cases.append(("policy layers list", _set_raw(pol, ["layers"], "[]"), True))
    cases.append(("policy duplicate layer", _text(pol).replace('"layers": {', '"layers": {"l0": {"weight_bits": 2, '
                                                                                '"act_bits": 2}, ', 1), True))
    cases.append(("policy nested", "{\"a\": " * 5000 + "1" + "}" * 5000, True))
    cases.append(("policy surrogate name", _text(pol).replace('"l3"', '"\\udc00"'), True))
    return cases


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def _run(argv: list[str], out: Path | None, must_fail: bool, name: str, capsys) -> list[str]:
    """Run one case; return the problems found (empty: it behaved)."""
    if out is not None and out.is_dir():
        shutil.rmtree(out)
    elif out is not None and out.exists():
        out.unlink()
    problems = []
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    start = time.perf_counter()
    cmd = " ".join(argv[:2]) if argv[0] == "supernet" else argv[0]
    PER_COMMAND[cmd] = PER_COMMAND.get(cmd, 0) + 1
    try:
        code = main(argv)
    except _Hang:
        return [f"{name}: hang (over {CASE_SECONDS} s)"]
    except SystemExit as e:  # argparse usage errors exit 2
        code = e.code
    except Exception as e:  # a traceback in the CLI
        return [f"{name}: traceback {type(e).__name__}: {str(e)[:200]}"]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        TIMES.append((time.perf_counter() - start, name))
    captured = capsys.readouterr()
    if code not in (0, 2):
        problems.append(f"{name}: exit {code}")
    if code == 2:
        lines = captured.err.strip().splitlines()
        if out is not None and out.exists():
            problems.append(f"{name}: partial output file after an error")
        if not lines or len(lines[-1]) > 600:
            problems.append(f"{name}: error line missing or too long ({len(captured.err)} characters)")
    if code == 0:
        if must_fail:
            problems.append(f"{name}: invalid input accepted")
        if out is not None and not out.is_dir():
            try:
                raw = out.read_bytes()
                if out.suffix == ".json":
                    json.loads(raw)
                elif not raw:
                    raise ValueError("empty")
            except (OSError, ValueError):
                problems.append(f"{name}: exit 0 but the output file is missing or incomplete")
    return problems


@pytest.fixture
def quiet_cli(monkeypatch):
    from qpolicy import progress

    progress.set_enabled(False)
    yield
    progress.set_enabled(None)


def _latency_table(layers: dict | None = None) -> dict:
    """A latency table of _table()'s layers: all int8 1.0 ms, float 2.0 ms, each layer +0.1 (W8A8) / +0.3 (float)."""
    from qpolicy.latency import LatencyTable, Stat, layer_signature

    def st(v):
        return Stat(median=v, q1=v, q3=v, n=3)

    sig = layers or layer_signature(SensitivityTable.from_dict(_table()).layers)
    return LatencyTable(model="tiny", target="ort-cpu", layers=sig, batches=(1,), base="int8", base_ms={1: st(1.0)},
                        float_ms={1: st(2.0)}, delta_ms={n: {"float": {1: st(0.3)}, "int8w8": {1: st(0.1)}}
                                                         for n in sig}).to_dict()


def _latency_cases() -> list[tuple[str, str, str, bool]]:
    """(name, table text, budget, must fail): corrupt tables, another model's table, budgets below the fastest."""
    base = _latency_table()
    text = _text(base)
    cases = [("latency ok", text, "latency=0.6", False), ("latency ok ms", text, "latency=1.2ms", False),
             ("latency below the fastest", text, "latency=0.4", True),
             ("latency 0", text, "latency=0", True), ("latency unit", text, "latency=3parsecs", True),
             ("latency nan", text, "latency=nan", True)]
    other = {n: "conv 4x4 -> 8" for n in base["layers"]}
    cases.append(("latency other model", _text(_latency_table(other)), "latency=0.6", True))
    fewer = dict(list(base["layers"].items())[:3])
    cases.append(("latency fewer layers", _text(_latency_table(fewer)), "latency=0.6", True))
    for cut in (0, 1, len(text) // 2, len(text) - 1):
        cases.append((f"latency truncated at {cut}", text[:cut], "latency=0.6", True))
    for path, raw in ((["format"], '"qpolicy.sensitivity"'), (["version"], "2"), (["version"], "true"),
                      (["base_ms", "1", "median"], "NaN"), (["base_ms", "1", "median"], HUGE),
                      (["float_ms", "1", "q1"], "5.0"), (["batches"], "[0]"), (["batches"], "[1, 2]"),
                      (["delta_ms", "l0"], "{}"), (["delta_ms", "l0", "int4"], "{}"), (["layers"], "[]"),
                      (["base_ms"], '"fast"'), (["delta_ms", "l1", "float", "1"], '{"median": 1}'),
                      (["base"], '"fp16"'), (["delta_ms", "l2", "float", "1", "n"], "0")):
        cases.append((f"latency {'.'.join(path)} = {raw[:10]}", _set_raw(base, path, raw), "latency=0.6", True))
    cases.append(("latency nested", "[" * 5000 + "]" * 5000, "latency=0.6", True))
    return cases


def test_bad_input_corpus(tmp_path, capsys, quiet_cli):
    rng = random.Random(20261129)
    problems: list[str] = []
    count = 0
    table_cases = _table_cases(rng)
    src = tmp_path / "table.json"
    out = tmp_path / "out" / "result.json"
    commands = [
        lambda t: ["search", str(t), "--budget", "bitops=0.3", "--strategy", "ilp", "-o", str(out), "--quiet"],
        lambda t: ["search", str(t), "--budget", "size=0.4", "--strategy", "te-lp", "-o", str(out), "--quiet"],
        lambda t: ["pareto", str(t), "--bitops", "0.2:0.5:2", "-o", str(out), "--quiet"],
    ]
    for name, text, must_fail in table_cases:
        src.write_text(text, encoding="utf-8", errors="surrogatepass")
        for k, cmd in enumerate(commands):
            problems += _run(cmd(src), out, must_fail, f"{name} [{k}]", capsys)
            count += 1
    # policies, through `search`'s sibling readers: evaluate reads a policy before any data
    for name, text, _must_fail in _policy_cases(rng):  # every policy case is invalid
        src.write_text(text, encoding="utf-8", errors="surrogatepass")
        problems += _run(["evaluate", "--model", "resnet20", "--random-init", "--policy", str(src), "-o", str(out),
                          "--quiet"], out, True, name, capsys)
        count += 1
    # budgets, sweeps, bit lists, output paths
    good = tmp_path / "good.json"
    good.write_text(_text(_table()))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv_cases = []
    for budget in ("", "bitops=", "bitops=-1", "bitops=0", "bitops=1e400", "bitops=nan", "speed=2", "bitops=0.3x" * 3,
                   "size=12parsecs", "wbits=4KB", "=", ",,,", "bitops=" + HUGE, "x" * 100_000):
        argv_cases.append((f"budget {budget[:20]}", ["search", str(good), "--budget", budget, "-o", str(out)], True))
    for sweep in ("", ":", "0.5:0.1:3", "0.1:0.5:0", "0.1:0.5:100000000", "0.1:0.5:" + HUGE, "a,b", "-1,2",
                  "inf", "1e400", "0.1:0.5", "x" * 100_000):
        argv_cases.append((f"sweep {sweep[:20]}", ["pareto", str(good), "--bitops", sweep, "-o", str(out)], True))
    for bits in ("2.5", "1,2", "9", HUGE, "a", ",", "x" * 100_000):
        argv_cases.append((f"weight bits {bits[:20]}", ["search", str(good), "--budget", "bitops=0.3",
                                                        "--weight-bits", bits, "-o", str(out)], True))
    for strategy in ("ipl", "x" * 100_000, "", "validated"):
        argv_cases.append((f"strategy {strategy[:20]}", ["search", str(good), "--budget", "bitops=0.3", "--strategy",
                                                         strategy, "-o", str(out)], True))
    for target in (tmp_path, blocker / "under" / "p.json"):
        argv_cases.append((f"output {target.name}", ["search", str(good), "--budget", "bitops=0.3", "-o",
                                                     str(target)], True))
    # latency tables (qpolicy profile's artefact) and latency budgets
    lat = tmp_path / "lat.json"
    for name, text, budget, must_fail in _latency_cases():
        path = tmp_path / f"lat{len(argv_cases)}.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        argv_cases.append((name, ["search", str(good), "--budget", budget, "--latency-table", str(path),
                                  "--act-bits", "8", "-o", str(out)], must_fail))
    lat.write_text(_text(_latency_table()))
    for target, must_fail in (("ort-cuda", True), ("ort-gpu", True), ("x" * 100_000, True), ("ort-cpu", False)):
        argv_cases.append((f"latency target {target[:10]}", ["search", str(good), "--budget", "latency=0.6",
                                                             "--latency-table", str(lat), "--latency-target", target,
                                                             "--act-bits", "8", "-o", str(out)], must_fail))
    for name, argv, must_fail in argv_cases:
        problems += _run(argv, out if "-o" in argv and argv[argv.index("-o") + 1] == str(out) else None,
                         must_fail, name, capsys)
        count += 1
    # result folders for the report: a valid base with one mutated evaluation file
    run = tmp_path / "run"
    run.mkdir()
    (run / "t.json").write_text(_text(_table()))
    pol = search(SensitivityTable.from_dict(_table()), Budget(bitops=0.3)).policy
    ev = {"format": "qpolicy.evaluation", "policy": pol.to_dict(), "top1": 90.0,
          "cost": {"bitops_rel_w8a8": 0.3, "size_rel_w8a8": 0.5}}
    report_cases = []
    for raw in ('"x"', "null", "-1", "101", "NaN", "1e400", "[]", HUGE):
        report_cases.append((f"report top1 {raw[:10]}", _set_raw(ev, ["top1"], raw), True))
        for key in ("bitops_rel_w8a8", "size_rel_w8a8"):
            # a relative cost above 1 is possible (float layers cost 16x W8A8's BitOPs)
            report_cases.append((f"report cost {key} {raw[:10]}", _set_raw(ev, ["cost", key], raw), raw != "101"))
    report_cases.append(("report cost missing", _set_raw(ev, ["cost"], "{}"), True))
    report_cases.append(("report cost string", _set_raw(ev, ["cost"], '"cheap"'), True))
    report_cases.append(("report nested", "[" * 5000 + "]" * 5000, True))
    for name, text, must_fail in report_cases:
        (run / "eval.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        problems += _run(["report", str(run), "-o", str(tmp_path / "r.html"), "--quiet"], tmp_path / "r.html",
                         must_fail, name, capsys)
        count += 1
    # latency measurements (qpolicy measure) beside a valid evaluation
    from qpolicy.latency import LatencyMeasurement, Stat

    st = Stat(median=1.0, q1=0.9, q3=1.1, n=3)
    meas = LatencyMeasurement(model=None, target="ort-cpu", policy=pol, measured_ms={1: st}, base_ms={1: st},
                              predicted_ms={1: 1.0}, table_base_ms={1: 0.9}).to_dict()
    (run / "eval.json").write_text(_text(ev))
    for raw in ('"x"', "null", "-1", "0", "NaN", "1e400", "[]", "true", HUGE, "1.05"):
        for path in (["batches", "1", "measured_ms", "median"], ["batches", "1", "predicted_ms"],
                     ["batches", "1", "base_ms", "n"]):
            valid = raw == "1.05" and path[-1] != "n" or raw == "null" and path[-1] == "predicted_ms"
            (run / "m.json").write_text(_set_raw(meas, path, raw), encoding="utf-8", errors="surrogatepass")
            problems += _run(["report", str(run), "-o", str(tmp_path / "r.html"), "--quiet"], tmp_path / "r.html",
                             not valid, f"measure {path[-2]}.{path[-1]} {raw[:10]}", capsys)
            count += 1
    (run / "m.json").unlink()
    # certify: smoothing settings (checked before any model or data), and stored certify results, read by
    # `certify --incremental` and by `report`
    cert_out = tmp_path / "cert"
    for flag, values in (("--sigma", ("0", "-1", "nan", "inf", "1e400")), ("--n0", ("0", "-3")), ("--n", ("0",)),
                         ("--alpha", ("0", "1", "1.5", "nan", "-0.1")), ("--batch", ("0",)), ("--n-p", ("0",))):
        for v in values:
            argv = ["certify", "--model", "resnet20", "--random-init", "--allow-plain-base", flag, v, "-o",
                    str(cert_out), "--quiet"]
            if flag == "--n-p":
                argv += ["--incremental", str(tmp_path / "nowhere")]
            problems += _run(argv, None, True, f"certify {flag} {v}", capsys)
            problems += [] if not cert_out.exists() else [f"certify {flag} {v}: output folder left behind"]
            count += 1
    problems += _run(["certify", "--model", "resnet20", "--random-init", "--allow-plain-base", "--n0", "200",
                      "--n", "100", "-o", str(cert_out)], None, True, "certify n0 > n", capsys)
    ref = {"format": "qpolicy.certify", "version": 1, "split": "test", "method": "rs", "policy": None,
           "complete": True, "settings": {"config": {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001, "batch": 100,
                                                     "seed": 0}, "indices": [0], "record": 4, "method": "rs"},
           "records": [{"index": 0, "label": 3, "prediction": 3, "radius": 0.4, "p_lower": 0.95, "count": 99,
                        "samples": 110, "seconds": 1.0, "method": "rs", "sample_preds": "AwMDAw=="}]}
    ref_cases = []
    for raw in ('"x"', "null", "-5", "2.5", "NaN", "1e400", "[]", "true", HUGE):
        for path in (["records", 0, "index"], ["records", 0, "prediction"], ["records", 0, "label"],
                     ["records", 0, "radius"], ["records", 0, "p_lower"], ["settings", "config", "sigma"],
                     ["settings", "config", "n"], ["settings", "record"], ["records", 0, "sample_preds"]):
            valid = raw == "2.5" and path[-1] in ("radius", "sigma")  # a radius or a sigma of 2.5 is fine
            ref_cases.append((f"certify ref {'.'.join(map(str, path[-2:]))} {raw[:10]}", _set_raw(ref, path, raw),
                              valid))
    ref_cases.append(("certify ref extra setting", _set_raw(ref, ["settings", "config", "sigmaa"], "0.25"), False))
    ref_cases.append(("certify ref short samples", _set_raw(ref, ["records", 0, "sample_preds"], '"AwM="'), False))
    ref_cases.append(("certify ref records object", _set_raw(ref, ["records"], "{}"), False))
    ref_cases.append(("certify ref nested", "[" * 5000 + "]" * 5000, False))
    ref_file = tmp_path / "ref" / "certify.json"
    ref_file.parent.mkdir()
    for name, text, valid in ref_cases:
        ref_file.write_text(text, encoding="utf-8", errors="surrogatepass")
        problems += _run(["certify", "--model", "resnet20", "--random-init", "--allow-plain-base", "--uniform", "w4a4",
                          "--incremental", str(ref_file.parent), "--n-p", "4", "-o", str(cert_out), "--quiet"],
                         None, True, name, capsys)
        problems += [] if not cert_out.exists() else [f"{name}: output folder left behind"]
        count += 1
        (run / "eval.json").unlink(missing_ok=True)
        (run / "certify.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        problems += _run(["report", str(run), "-o", str(tmp_path / "r.html"), "--quiet"], tmp_path / "r.html",
                         not valid, name + " [report]", capsys)
        count += 1
    print("slowest cases:", *(f"{t:.2f} s {n}" for t, n in sorted(TIMES, reverse=True)[:25]), sep="\n")
    assert not problems, f"{len(problems)} of {count} cases misbehaved:\n" + "\n".join(problems[:40])
    assert count >= 2000, count


# ---- the commands that came with robustness, training and supernets ----------------------------------------------
# Per-flag kinds of value and the bad values each kind derives (a value that parses but is out of range, one that
# does not parse, non-finite numbers, an empty string).
BAD_BY_KIND = {
    "pos_int": ["0", "-1", "2.5", "x", ""],
    "nonneg_int": ["-1", "2.5", "x", ""],
    "pos_float": ["0", "-1", "nan", "inf", "1e400", "x", ""],
    "nonneg_float": ["-1", "nan", "inf", "-inf", "x", ""],
    "unit": ["-0.1", "1.5", "nan", "inf", "x"],
    "bits": ["1", "9", "2.5", "x", ",", "", HUGE],
    "name": ["nope", "", "x" * 100_000],
}


def _flag_cases(base: list[str], flags: list[tuple[str, str]], out: Path | None) -> list[tuple[str, list[str], Path |
                                                                                                  None, bool]]:
    cases = []
    for flag, kind in flags:
        for v in BAD_BY_KIND[kind]:
            cases.append((f"{base[0]}{' ' + base[1] if base[0] == 'supernet' else ''} {flag} {v[:12]!r}",
                          [*base, flag, v], out, True))
    return cases


def _checkpoint_mutations(real: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of broken checkpoints made from a real one: corrupt, truncated, empty, other objects."""
    import io

    import torch

    raw = real.read_bytes()
    rng = random.Random(7)
    flipped = bytearray(raw)
    for _ in range(64):
        i = rng.randrange(len(flipped))
        flipped[i] ^= 0xFF
    out = [("truncated half", raw[: len(raw) // 2]), ("truncated tail", raw[:-100]), ("empty", b""),
           ("text", b"not a checkpoint\n"), ("bit flips", bytes(flipped))]
    for name, obj in (("a list", [1, 2, 3]), ("a dict without format", {"model": {}}),
                      ("another format", {"format": "qpolicy.checkpoint.other", "version": 1}),
                      ("a tensor", torch.zeros(3))):
        buf = io.BytesIO()
        torch.save(obj, buf)
        out.append((name, buf.getvalue()))
    return out


def test_bad_input_corpus_of_the_training_robustness_and_supernet_commands(tmp_path, capsys, quiet_cli, monkeypatch):
    """train, train-noise, finetune (options, resumes from broken or foreign checkpoints), attack, robustness
    configs, certify weights, supernet train/eval, the dmpq/smpq/arq/qfa options, export of odd policies, and
    models that do not fit the data."""
    from qpolicy import data
    from qpolicy.testing import write_cifar_npz

    write_cifar_npz(tmp_path / "datasets", train=96, test=32)
    monkeypatch.setenv("QPOLICY_HOME", str(tmp_path))
    monkeypatch.setenv("QPOLICY_TRAINED", str(tmp_path / "trained"))
    data._CACHE.clear()
    rng = random.Random(20261205)
    R = ["--model", "resnet20", "--random-init"]
    TINY_TRAIN = ["--epochs", "1", "--train-limit", "32", "--train-batch-size", "32"]
    CAL = ["--calib-batches", "1", "--bn-batches", "1"]
    fresh = tmp_path / "fresh"  # every option case writes here; nothing may be left after an error
    cases: list[tuple[str, list[str], Path | None, bool]] = []

    # 1. options, out of range or not parsing: each must fail before any work, leaving nothing behind
    ft = ["finetune", *R, "--uniform", "w4a4", *TINY_TRAIN, *CAL, "--limit", "16", "--out", str(fresh), "--quiet"]
    cases += _flag_cases(ft, [("--epochs", "pos_int"), ("--lr", "pos_float"), ("--weight-decay", "nonneg_float"),
                              ("--train-batch-size", "pos_int"), ("--train-limit", "pos_int"),
                              ("--checkpoint-every", "nonneg_int"), ("--kurtosis-lambda", "nonneg_float"),
                              ("--kurtosis-target", "pos_float"), ("--calib-batches", "pos_int"),
                              ("--bn-batches", "pos_int"), ("--limit", "pos_int"), ("--batch-size", "pos_int"),
                              ("--uniform", "name"), ("--calib", "name"), ("--act-quantizer", "name"),
                              ("--first-last", "bits")], fresh)
    tn = ["train-noise", *R, *TINY_TRAIN, "--out", str(fresh), "--quiet"]
    cases += _flag_cases(tn, [("--sigma", "pos_float"), ("--epochs", "pos_int"), ("--lr", "pos_float"),
                              ("--train-batch-size", "pos_int"), ("--train-limit", "pos_int"),
                              ("--checkpoint-every", "nonneg_int")], fresh)
    tr = ["train", "--model", "resnet8", *TINY_TRAIN, "--out", str(fresh), "--quiet"]
    cases += _flag_cases(tr, [("--epochs", "pos_int"), ("--lr", "pos_float"), ("--train-batch-size", "pos_int"),
                              ("--train-limit", "pos_int"), ("--checkpoint-every", "nonneg_int"),
                              ("--defense", "name"), ("--optimizer", "name")], fresh)
    for opt in ("eps", "eps=", "=1", "eps=x", "eps=-1", "eps=nan", "nope=1", "x" * 5000):
        cases.append((f"train --defense-option {opt[:12]!r}", [*tr, "--defense", "pgd_at", "--defense-option", opt],
                      fresh, True))
    at = ["attack", *R, "--attack", "fgsm", "--images", "2", "-o", str(fresh), "--quiet"]
    cases += _flag_cases(at, [("--attack", "name"), ("--images", "pos_int"), ("--chunk", "pos_int"),
                              ("--defense", "name")], fresh)
    for eps in ("-1", "nan", "inf", "1e400", "x", "", ",", "0.1,,0.2", HUGE):
        cases.append((f"attack --eps {eps[:12]!r}", [*at, "--eps", eps], fresh, True))
    for param in ("eps", "max_iter=0", "max_iter=-3", "max_iter=x", "restarts=2.5", "nope=1", "=", "x" * 5000):
        cases.append((f"attack --param {param[:12]!r}", [*at.copy(), "--attack", "pgd", "--eps", "0.01", "--param",
                                                          param], fresh, True))
    sn = ["supernet", "train", *R, *TINY_TRAIN, "--weight-bits", "2,4", "--act-bits", "4,8", "-o", str(fresh),
          "--quiet"]
    cases += _flag_cases(sn, [("--weight-bits", "bits"), ("--act-bits", "bits"), ("--first-last", "bits"),
                              ("--act-quantizer", "name"), ("--random-subnets", "nonneg_int"), ("--epochs", "pos_int"),
                              ("--lr", "pos_float"), ("--train-batch-size", "pos_int"), ("--train-limit", "pos_int"),
                              ("--checkpoint-every", "nonneg_int")], fresh)
    dm = ["search", *R, "--strategy", "dmpq", "--budget", "bitops=0.3", *TINY_TRAIN, "--bits", "2,4,8", "-o",
          str(fresh), "--quiet"]
    diff_flags = [("--epochs", "pos_int"), ("--lr", "pos_float"), ("--arch-lr", "pos_float"),
                  ("--complexity-weight", "nonneg_float"), ("--temperature", "pos_float"),
                  ("--final-temperature", "pos_float"), ("--train-batch-size", "pos_int"),
                  ("--train-limit", "pos_int"), ("--checkpoint-every", "nonneg_int"), ("--bits", "bits")]
    cases += _flag_cases(dm, diff_flags, fresh)
    sm = [*dm[:4], "smpq", *dm[5:], "--shapley-samples", "2", "--shapley-images", "16"]
    cases += _flag_cases(sm, [("--shapley-samples", "pos_int"), ("--shapley-rounds", "pos_int"),
                              ("--shapley-images", "pos_int"), ("--truncation", "unit"), ("--momentum", "unit")],
                         fresh)
    arq = ["search", *R, "--strategy", "arq", "--budget", "bitops=0.3", "--allow-plain-base", "--episodes", "2",
           "--warmup", "1", "--arq-val-images", "2", "--reference-n", "20", "--n-p", "10", "--test-images", "0", "-o",
           str(fresh), "--quiet"]
    cases += _flag_cases(arq, [("--sigma", "pos_float"), ("--episodes", "pos_int"), ("--warmup", "nonneg_int"),
                               ("--arq-val-images", "pos_int"), ("--reference-n", "pos_int"), ("--n-p", "pos_int"),
                               ("--reward-weight", "unit"), ("--test-images", "nonneg_int"), ("--test-n", "pos_int")],
                         fresh)
    cases.append(("arq warmup > episodes", [*arq, "--warmup", "5"], fresh, True))
    cases.append(("arq noise weights missing", [*arq, "--noise-weights", str(tmp_path / "nowhere.pt")], fresh, True))
    ex = ["export", *R, "--uniform", "w4a4", "--limit", "16", *CAL, "-o", str(fresh / "m.onnx"), "--quiet"]
    cases += _flag_cases(ex, [("--opset", "pos_int"), ("--limit", "pos_int"), ("--calib-batches", "pos_int")],
                         fresh / "m.onnx")
    for opset in ("5", "12", "99", "100000"):
        cases.append((f"export --opset {opset}", [*ex, "--opset", opset], fresh / "m.onnx", True))
    cases.append(("export --int4 --int8-kernels", [*ex, "--int4", "--int8-kernels"], fresh / "m.onnx", True))

    # 2. models that do not fit the data: one line before any work, on every data command
    for shape in ("1,32,32", "3,64,64", "3,16", "0,32,32", "x", "3,32,32,3"):
        for argv in (["evaluate", *R, "--limit", "8"], ["analyze", *R, "-o", str(fresh / "t.json")],
                     ["search", *R, "--budget", "bitops=0.3", "--val-images", "8", "-o", str(fresh / "p.json")],
                     ft[:-3], tn[:-3], ["supernet", "train", *R, *TINY_TRAIN, "-o", str(fresh)],
                     at[:-1], ex[:-1]):
            if argv[0] in ("finetune", "train-noise"):
                argv = [*argv, "--out", str(fresh)]
            cases.append((f"{argv[0]} --input-shape {shape}", [*argv, "--input-shape", shape, "--quiet"], fresh,
                          True))
    for argv in (["evaluate", "--model", "qpolicy.testing:TinyConvNet", "--input-shape", "3,32,32", "--limit", "8"],
                 ["finetune", "--model", "qpolicy.testing:TinyConvNet", "--input-shape", "3,32,32", "--uniform",
                  "w8a8", *TINY_TRAIN, "--out", str(fresh)]):
        cases.append((f"{argv[0]} 4-class model on 10-class data", [*argv, "--quiet"], fresh, True))

    # 2b. --data, --weights and --model-arg on every data command: one line before any work, nothing left behind
    import torch

    from qpolicy.testing import write_digits

    digits = write_digits(tmp_path / "digits", limit=60)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"conv.weight": torch.zeros(3)}}, tmp_path / "foreign.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "empty_dir").mkdir()
    np_bad = tmp_path / "bad.npz"
    np_bad.write_bytes(b"PK\x03\x04 truncated")
    bad_data = ["cifar100", "", ":", "imagefolder", f"imagefolder:{tmp_path / 'nowhere'}",
                f"imagefolder:{tmp_path / 'empty_dir'}", f"npz:{np_bad}", "npz:", "nomodule_q:fn", "qpolicy:nothing",
                f"{tmp_path / 'nofile.py'}:fn", "x" * 5000, "cifar10:extra", digits]  # digits: 1x8x8, not 3x32x32
    bad_weights = [str(tmp_path / "garbage.pt"), str(tmp_path / "foreign.pt"), str(tmp_path / "list.pt"),
                   str(tmp_path / "nowhere.pt"), str(tmp_path), ""]
    bad_args = ["width", "=3", "1x=2", "x" * 5000, "num_classes=3"]  # TinyConvNet takes no num_classes
    data_cmds = [["evaluate", *R, "--limit", "8"], ["analyze", *R, "-o", str(fresh / "t.json")],
                 ["search", *R, "--budget", "bitops=0.3", "--val-images", "8", "-o", str(fresh / "p.json")],
                 [*ft[:-3], "--out", str(fresh)], [*tn[:-3], "--out", str(fresh)],
                 ["supernet", "train", *R, *TINY_TRAIN, "-o", str(fresh)], at[:-1], ex[:-1],
                 ["train", "--model", "resnet8", *TINY_TRAIN, "--out", str(fresh)]]
    for argv in data_cmds:
        for spec in bad_data:
            cases.append((f"{argv[0]} --data {spec[:20]!r}", [*argv, "--data", spec, "--quiet"], fresh, True))
        for w in bad_weights:
            cases.append((f"{argv[0]} --weights {Path(w).name[:20]!r}", [*argv, "--weights", w, "--quiet"], fresh,
                          True))
        for bad_opt in (["--image-size", "0"], ["--image-size", "x"], ["--channels", "2"], ["--mean", "a"],
                        ["--std", "0"], ["--val-fraction", "1.5"], ["--test-fraction", "nan"]):
            cases.append((f"{argv[0]} {' '.join(bad_opt)}", [*argv, "--data", digits, *bad_opt, "--quiet"], fresh,
                          True))
    user = ["evaluate", "--model", "qpolicy.testing:TinyConvNet", "--input-shape", "3,32,32", "--limit", "8"]
    for a in bad_args:
        cases.append((f"--model-arg {a[:12]!r}", [*user, "--model-arg", a, "--quiet"], None, True))
    cases.append(("--model-arg on a zoo model", ["evaluate", *R, "--limit", "8", "--model-arg", "depth=3", "--quiet"],
                  None, True))

    # 3. odd policies for export (valid ones may succeed; none may crash): float layers, 16-bit activations, a policy
    # of another model, one layer missing or extra
    from qpolicy.models import load
    from qpolicy.policy import LayerBits, Policy, uniform_policy

    model = load("resnet20", pretrained=False)
    names = list(uniform_policy(model, "w4a4").layers)
    pol_dir = tmp_path / "policies"
    pol_dir.mkdir()
    odd: list[tuple[str, Policy, bool, list[str]]] = []
    for k in range(4):
        bits = {n: LayerBits(weight_bits=rng.choice([None, 2, 3, 4, 8]), act_bits=rng.choice([None, 4, 8, 16]))
                for n in names}
        odd.append((f"random mixed policy {k}", Policy(layers=bits), False, []))
    odd.append(("all float", Policy(layers={n: LayerBits(weight_bits=None, act_bits=None) for n in names}), False, []))
    odd.append(("16-bit acts as int8 kernels", Policy(layers={n: LayerBits(weight_bits=8, act_bits=16)
                                                               for n in names}), True, ["--int8-kernels"]))
    odd.append(("2-bit weights as int4", Policy(layers={n: LayerBits(weight_bits=2, act_bits=4) for n in names}),
                False, ["--int4"]))
    odd.append(("missing layer", Policy(layers={n: LayerBits(weight_bits=4, act_bits=4) for n in names[1:]}), True,
                []))
    odd.append(("extra layer", Policy(layers={**{n: LayerBits(weight_bits=4, act_bits=4) for n in names},
                                             "ghost": LayerBits(weight_bits=4, act_bits=4)}), True, []))
    for i, (name, pol, must_fail, extra) in enumerate(odd):
        path = pol_dir / f"p{i}.json"
        pol.save(path)
        cases.append((f"export {name}", ["export", *R, "--policy", str(path), "--limit", "8", *CAL, "-o",
                                         str(fresh / "m.onnx"), "--quiet", *extra], fresh / "m.onnx", must_fail))

    # 4. robustness configs: malformed JSON, wrong types, unknown names, out-of-range counts
    good_cfg = {"models": ["resnet8"], "qnns": ["float"], "images": 2, "clean_images": 8,
                "attacks": {"fgsm": [0.01]}, "defenses": [], "defense_attacks": []}
    cfg = tmp_path / "cfg.json"
    cfg_cases = [("cfg truncated", json.dumps(good_cfg)[:30]), ("cfg empty", ""), ("cfg list", "[1]"),
                 ("cfg nested", "[" * 5000 + "]" * 5000), ("cfg unknown key", _set_raw(good_cfg, ["imagez"], "2"))]
    for key, raws in (("models", ['"resnet8"', "[]", '["resnet9"]', "[5]", "null"]),
                      ("qnns", ['"float"', '["int9"]', "[null]", "[]"]),
                      ("attacks", ["[]", '{"pgdd": [0.1]}', '{"fgsm": [-1]}', '{"fgsm": ["x"]}', '{"fgsm": 0.1}',
                                   "{}"]),
                      ("images", ["0", "-1", "2.5", '"2"', "true", HUGE]), ("clean_images", ["0", "-4", "x"]),
                      ("defenses", ['["squeez"]', '"squeeze"', "[3]"]), ("defense_attacks", ['["nope"]', "5"]),
                      ("params", ['{"fgsm": {"nope": 1}}', '{"pgd": 3}', "[]"]), ("seed", ["-1", "1.5", '"0"']),
                      ("transfer", ['"yes"', "2"])):
        for raw in raws:
            cfg_cases.append((f"cfg {key} = {raw[:12]}", _set_raw(good_cfg, [key], raw)))
    rob_out = tmp_path / "rob"
    cfg_texts = dict(cfg_cases)
    for name in cfg_texts:
        cases.append((name, ["robustness", str(cfg), "-o", str(rob_out), "--quiet"], rob_out, True))

    problems: list[str] = []
    count = 0
    for name, argv, out, must_fail in cases:
        if name in cfg_texts:
            cfg.write_text(cfg_texts[name], encoding="utf-8", errors="surrogatepass")
        problems += _run(argv, out, must_fail, name, capsys)
        count += 1

    # 5. resumes from broken and foreign checkpoints, and weights files: a clear error, the file left as it was
    real = tmp_path / "real"
    assert main(["finetune", *R, "--uniform", "w4a4", *TINY_TRAIN, *CAL, "--limit", "16", "--out", str(real / "ft"),
                 "--checkpoint-every", "1", "--quiet"]) == 0
    assert main(["supernet", "train", *R, *TINY_TRAIN, "--weight-bits", "2,4", "--act-bits", "4,8", "-o",
                 str(real / "qfa"), "--quiet"]) == 0
    capsys.readouterr()
    ft_ckpt, qfa_ckpt = real / "ft" / "checkpoint.pt", real / "qfa" / "checkpoint.pt"
    resumes = {
        "finetune": ["finetune", *R, "--uniform", "w4a4", *TINY_TRAIN, *CAL, "--limit", "16", "--resume", "--quiet",
                     "--out"],
        "finetune w2a2 on a w4a4 run": ["finetune", *R, "--uniform", "w2a2", *TINY_TRAIN, *CAL, "--limit", "16",
                                        "--resume", "--quiet", "--out"],
        "finetune resnet32": ["finetune", "--model", "resnet32", "--random-init", "--uniform", "w4a4", *TINY_TRAIN,
                              *CAL, "--limit", "16", "--resume", "--quiet", "--out"],
        "train-noise": ["train-noise", *R, *TINY_TRAIN, "--resume", "--quiet", "--out"],
        "train": ["train", "--model", "resnet8", *TINY_TRAIN, "--resume", "--quiet", "--out"],
        "supernet train": ["supernet", "train", *R, *TINY_TRAIN, "--weight-bits", "2,4", "--act-bits", "4,8",
                           "--resume", "--quiet", "-o"],
        "supernet eval": ["supernet", "eval", "RUN", *R, "--uniform", "w4a4", "--limit", "8", "--quiet"],
        "qfa search": ["search", *R, "--strategy", "qfa", "--budget", "bitops=0.3", "--samples", "4",
                       "--qfa-val-images", "8", "--generations", "2", "--population", "4", "--quiet", "--supernet"],
        "dmpq": [*dm[:-3], "--resume", "--quiet", "-o"],
    }
    broken = _checkpoint_mutations(ft_ckpt) + [("a finetune checkpoint", ft_ckpt.read_bytes()),
                                               ("a supernet checkpoint", qfa_ckpt.read_bytes())]
    run_dir = tmp_path / "resume"
    for cmd, argv in resumes.items():
        for what, raw in broken:
            own = (what == "a finetune checkpoint" and cmd == "finetune") or (
                what == "a supernet checkpoint" and cmd in ("supernet train", "supernet eval", "qfa search"))
            if own:
                continue  # its own kind of checkpoint: not bad input
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir()
            (run_dir / "checkpoint.pt").write_bytes(raw)
            full = [str(run_dir) if a == "RUN" else a for a in argv] + ([] if "RUN" in argv else [str(run_dir)])
            name = f"resume {cmd} from {what}"
            problems += _run(full, None, True, name, capsys)
            if (run_dir / "checkpoint.pt").read_bytes() != raw:
                problems.append(f"{name}: the checkpoint was overwritten")
            count += 1
    # weights files: noise-trained weights for certify, a trained model in the cache for attack
    for what, raw in broken:
        wfile = tmp_path / "w.pt"
        wfile.write_bytes(raw)
        problems += _run(["certify", *R, "--noise-weights", str(wfile), "--images", "1", "--n0", "10", "--n", "20",
                          "-o", str(fresh), "--quiet"], fresh, True, f"certify --noise-weights {what}", capsys)
        count += 1
        cache = tmp_path / "trained" / "resnet8"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "weights.pt").write_bytes(raw)
        problems += _run(["attack", "--model", "resnet8", "--attack", "fgsm", "--eps", "0.01", "--images", "2", "-o",
                          str(fresh), "--quiet"], fresh, True, f"attack resnet8 with trained weights {what}", capsys)
        count += 1
    print("slowest cases:", *(f"{t:.2f} s {n}" for t, n in sorted(TIMES, reverse=True)[:25]), sep="\n")
    print("cases per command (both corpora):", json.dumps(PER_COMMAND, sort_keys=True))
    assert not problems, f"{len(problems)} of {count} cases misbehaved:\n" + "\n".join(problems[:60])
    assert count >= 500, count
