"""Read a run folder's result files (never a model): sensitivity tables, policies, Pareto fronts, evaluations and
fine-tuning results, recognized by their ``format`` field (evaluations and fine-tuning results by their keys)."""

from __future__ import annotations

import json
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
    skipped: list[str] = field(default_factory=list)

    @property
    def layers(self):
        """The layer list (names, sizes) of the first table, if any."""
        return self.tables[0][1].layers if self.tables else None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"cannot read {path}: {type(e).__name__}: {e}") from None


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
            elif fmt == "qpolicy.policy":
                out.policies.append((rel, Policy.from_dict(data, source=rel)))
            elif fmt == "qpolicy.pareto":
                for pt in data["points"]:
                    Policy.from_dict(pt["policy"], source=rel)
                    float(pt["cost"]["bitops_rel_w8a8"])
                out.fronts.append((rel, data))
            elif isinstance(data, dict) and isinstance(data.get("policy"), dict) and "top1" in data:
                out.evaluations.append((rel, {"policy": Policy.from_dict(data["policy"], source=rel),
                                              "top1": float(data["top1"]), "cost": dict(data["cost"])}))
            elif isinstance(data, dict) and isinstance(data.get("policy"), dict) and "after" in data:
                out.evaluations.append((rel, {"policy": Policy.from_dict(data["policy"], source=rel),
                                              "top1": float(data["after"]["top1"]), "cost": dict(data["cost"]),
                                              "finetuned": True, "before": float(data["before"]["top1"])}))
            else:
                out.skipped.append(rel)
        except PolicyError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{rel}: malformed {fmt or 'result'} file ({type(e).__name__}: {e})") from None
    if not (out.tables or out.policies or out.fronts or out.evaluations):
        raise PolicyError(f"{root} holds no qpolicy result file (sensitivity tables, policies, Pareto fronts, "
                          "evaluations)")
    return out
