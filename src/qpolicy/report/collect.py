"""Read a run folder's result files (never a model): sensitivity tables, policies, Pareto fronts, evaluations and
fine-tuning results, recognized by their ``format`` field (evaluations and fine-tuning results by their keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PolicyError
from ..policy import Policy
from ..sensitivity.base import SensitivityTable

__all__ = ["RunContents", "collect"]


@dataclass(kw_only=True)
class RunContents:
    """What a run folder holds, each item with the file it came from."""

    root: Path
    tables: list[tuple[str, SensitivityTable]] = field(default_factory=list)
    policies: list[tuple[str, Policy]] = field(default_factory=list)
    fronts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    evaluations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # policy, top1, cost
    certificates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # randomized-smoothing runs
    kurtosis: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # layer -> weight kurtosis
    # adversarial attacks: curves (label, attack, [(eps, robust accuracy %)]) and the suite's findings
    attack_curves: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    findings: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    latency: list[tuple[str, Any]] = field(default_factory=list)  # latency tables (qpolicy profile)
    latency_measures: list[tuple[str, Any]] = field(default_factory=list)  # end-to-end times (qpolicy measure)
    skipped: list[str] = field(default_factory=list)

    @property
    def layers(self):
        """The layer list (names, sizes) of the first table, if any."""
        return self.tables[0][1].layers if self.tables else None


def _read(path: Path) -> Any:
    from .._io import read_json

    return read_json(path, "result file")


def _number(value: Any, what: str, *, optional: bool = False) -> float | None:
    """A finite real number (not a bool) from a result file, or a ValueError naming the field."""
    import math

    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _cost(d: Any) -> dict[str, float | None]:
    """The cost fields the report reads, checked: relative BitOPs and size (required, >= 0), absolute ones
    (optional)."""
    if not isinstance(d, dict):
        raise ValueError(f"'cost' must be an object, got {type(d).__name__}")
    out = {k: _number(d.get(k), f"cost.{k}", optional=k in ("size_bytes", "bitops"))
           for k in ("bitops_rel_w8a8", "size_rel_w8a8", "size_bytes", "bitops")}
    if any(v is not None and v < 0 for v in out.values()):
        raise ValueError("cost fields must not be negative")
    return out


def _top1(v: Any, what: str = "top1") -> float:
    t = _number(v, what)
    if not 0.0 <= t <= 100.0:
        raise ValueError(f"{what} must be a percentage in [0, 100], got {t}")
    return t


def _certify(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A certify result (``qpolicy certify``), checked as ``certify --incremental`` checks it: its policy (None:
    float), sigma, and per-image radii and correctness."""
    from ..robust.smoothing import check_certify

    check_certify(data, source)
    pol = Policy.from_dict(data["policy"], source=source) if data.get("policy") is not None else None
    records = data["records"]
    return {"policy": pol, "sigma": float(data["settings"]["config"]["sigma"]),
            "n": int(data["settings"]["config"]["n"]), "method": str(data.get("method", "rs")),
            "radii": [float(r["radius"]) for r in records], "correct": [r["prediction"] == r["label"] for r in records],
            "complete": bool(data.get("complete")), "split": str(data.get("split", "test")),
            "samples": sum(int(_number(r.get("samples", 0), "records[].samples")) for r in records),
            "seconds": sum(_number(r.get("seconds", 0.0), "records[].seconds") for r in records)}


def _eps(v: Any) -> float | None:
    return None if v is None else _number(v, "eps")


def _attack_curves(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``qpolicy attack`` result -> one curve: robust accuracy per eps."""
    st = data["settings"]
    pol = data["settings"].get("policy")
    qnn = "float" if pol is None else str((pol.get("provenance") or {}).get("spec") or "policy")
    pts = sorted((_eps(r["eps"]) or 0.0, _top1(r["summary"]["robust_accuracy"], "robust_accuracy"))
                 for r in data["runs"].values() if "summary" in r)
    label = f"{st.get('model')} {qnn}" + (" transfer" if st.get("transfer") else "") + (
        f" + {st['defense']}" if st.get("defense") else "")
    return [{"label": label, "attack": str(st["attack"]), "points": pts}]


def _suite_curves(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``qpolicy robustness`` result -> curves per (model, defense, QNN, attack, setting) with eps."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in data["results"]:
        if r.get("kind") != "attack" or r.get("eps") is None:
            continue
        key = (r["model"], r["defense"], r["qnn"], r["attack"], r["mode"])
        groups.setdefault(key, []).append((_eps(r["eps"]), _top1(r["result"]["summary"]["robust_accuracy"],
                                                                 "robust_accuracy")))
    return [{"label": f"{m}{'' if d == 'none' else ' + ' + d} {q}{' transfer' if mode == 'transfer' else ''}",
             "attack": a, "points": sorted(pts)} for (m, d, q, a, mode), pts in groups.items() if len(pts) > 1]


def collect(root: str | Path) -> RunContents:
    """Every result file under ``root`` (recursively). A JSON file that is corrupt, or that claims a qpolicy
    format and does not parse as one, is an error naming it; other JSON files are skipped (listed)."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyError(f"run folder not found: {root}")
    out = RunContents(root=root)
    for path in sorted(root.rglob("*.json")):
        rel = str(path.relative_to(root))
        data = _read(path)
        fmt = data.get("format") if isinstance(data, dict) else None
        try:
            if fmt == "qpolicy.sensitivity":
                out.tables.append((rel, SensitivityTable.from_dict(data, source=rel)))
            elif fmt == "qpolicy.latency":
                from ..latency import LatencyTable

                out.latency.append((rel, LatencyTable.from_dict(data, source=rel)))
            elif fmt == "qpolicy.latency-measure":
                from ..latency import LatencyMeasurement

                out.latency_measures.append((rel, LatencyMeasurement.from_dict(data, source=rel)))
            elif fmt == "qpolicy.policy":
                out.policies.append((rel, Policy.from_dict(data, source=rel)))
            elif fmt == "qpolicy.pareto":
                if not isinstance(data.get("points"), list):
                    raise ValueError("'points' must be a list")
                for pt in data["points"]:
                    if not isinstance(pt, dict):
                        raise ValueError("every point must be an object")
                    Policy.from_dict(pt["policy"], source=rel)
                    pt["cost"] = {**pt["cost"], **{k: v for k, v in _cost(pt["cost"]).items() if v is not None}}
                    if "top1" in pt:
                        pt["top1"] = _top1(pt["top1"])
                if not isinstance(data.get("metric"), str):
                    raise ValueError("'metric' must be a string (the metric the front was solved on)")
                out.fronts.append((rel, data))
            elif fmt == "qpolicy.layers":
                out.kurtosis.append((rel, {str(li["name"]): _number(li["kurtosis"], "layers[].kurtosis")
                                           for li in data["layers"]}))
            elif fmt == "qpolicy.certify":
                out.certificates.append((rel, _certify(data, rel)))
            elif fmt == "qpolicy.attack":
                out.attack_curves.extend((rel, c) for c in _attack_curves(data))
            elif fmt == "qpolicy.robustness":
                out.attack_curves.extend((rel, c) for c in _suite_curves(data))
                if not isinstance(data.get("findings"), list):
                    raise ValueError("'findings' must be a list")
                out.findings.append((rel, data["findings"]))
            elif isinstance(data, dict) and isinstance(data.get("policy"), dict) and "top1" in data:
                score = (_top1(data["top1"]) if data["top1"] is not None  # another task: its metric, as it is
                         else _number(data.get("metric"), "metric"))
                out.evaluations.append((rel, {"policy": Policy.from_dict(data["policy"], source=rel),
                                              "top1": score, "cost": _cost(data.get("cost")),
                                              "metric_name": data.get("metric_name", "top1")}))
            elif isinstance(data, dict) and isinstance(data.get("policy"), dict) and "after" in data:
                out.evaluations.append((rel, {"policy": Policy.from_dict(data["policy"], source=rel),
                                              "top1": _top1(data["after"]["top1"], "after.top1"),
                                              "cost": _cost(data.get("cost")), "finetuned": True,
                                              "before": _top1(data["before"]["top1"], "before.top1")}))
            else:
                out.skipped.append(rel)
        except PolicyError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{rel}: malformed {fmt or 'result'} file ({type(e).__name__}: {e})") from None
    if not (out.tables or out.policies or out.fronts or out.evaluations or out.certificates or out.kurtosis
            or out.attack_curves or out.findings or out.latency or out.latency_measures):
        raise PolicyError(f"{root} holds no qpolicy result file (sensitivity tables, policies, Pareto fronts, "
                          "evaluations, certify results, layer tables, latency tables or measurements)")
    return out
