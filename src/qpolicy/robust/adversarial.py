"""Adversarial robustness of float and quantized networks: one attack on one model (``qpolicy attack``) and the
whole suite of models x defenses x QNNs x attacks x eps (``qpolicy robustness``), after Costa and Pinto (2024).

**QNNs** (:func:`qnn_policy`): ``float``; ``int8`` (W8A8, every layer); ``int16x8`` (8-bit weights, 16-bit
activations, every layer: TFLite's 16x8 mode); ``w4a4`` (uniform, first and last layer 8 bits); ``mixed`` (fisher +
ILP at the BitOPs of that W4A4 policy, searched once per model on training images); or a policy file. A defended
model is quantized under the same policies as its undefended base.

**Settings.** Direct: the attack runs on the QNN itself (white-box ones through its straight-through gradients).
Transfer: examples crafted on the float model (of the same defense) are classified by the QNN. A pre-processing
defense sits in front of the classifier when it classifies; the attacker crafts on the undefended model (the
oblivious setting of Xu et al. and Song et al.).

:func:`attack_model` checkpoints after every chunk of images (``attack.json``, atomic) and resumes;
:func:`run_robustness` runs its items through :func:`qpolicy.runner.run_many` (serial, or Ray with ``workers`` /
``address``), resumable from ``items.json``, and writes ``robustness.json`` with every result, the clean accuracy of
every model and QNN, the gradient cosine float vs QNN, the boundary distance (DeepFool), the detection rate of
feature squeezing, and the findings table (:func:`findings`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import read_json, write_json
from ..errors import ConfigError, close_matches, shorten
from ..progress import progress
from .attacks import ATTACKS, AttackConfig, craft, distortions, predict, run_attack, summarize
from .certify import split_size

__all__ = ["QNNS", "qnn_policy", "attack_model", "load_attack", "RobustnessConfig", "load_robustness_config",
           "run_robustness", "findings", "layer_perturbation", "ATTACK_FORMAT", "ROBUSTNESS_FORMAT"]

log = logging.getLogger(__name__)
ATTACK_FORMAT = "qpolicy.attack"
ROBUSTNESS_FORMAT = "qpolicy.robustness"
QNNS = ("float", "int8", "int16x8", "w4a4", "mixed")


def _eps_key(eps: float | None) -> str:
    return "none" if eps is None else f"{eps:g}"


def qnn_policy(model: nn.Module, qnn: str, *, model_name: str | None = None, table: Any = None):
    """The policy of a QNN name (None for "float"); "mixed" needs a sensitivity ``table`` of the model."""
    from ..policy import Policy, uniform_policy

    if qnn == "float":
        return None
    if qnn == "int8":
        return uniform_policy(model, "w8a8", first_last="same", model_name=model_name)
    if qnn == "int16x8":
        return uniform_policy(model, "w8a16", first_last="same", model_name=model_name)
    if qnn == "w4a4":
        return uniform_policy(model, "w4a4", first_last=8, model_name=model_name)
    if qnn == "mixed":
        from ..budget import Budget
        from ..costs import policy_cost
        from ..layers import quantizable_layers
        from ..search import search

        if table is None:
            raise ConfigError("the mixed QNN needs a sensitivity table of the model (fisher)")
        rel = policy_cost(quantizable_layers(model), uniform_policy(model, "w4a4", first_last=8)).bitops_rel_w8a8
        return search(table, Budget(bitops=rel), first_last=8, model_name=model_name).policy.with_provenance(
            qnn="mixed: fisher + ILP at the BitOPs of uniform W4A4 (first/last 8)")
    if qnn.endswith(".json"):
        policy = Policy.load(qnn)
        policy.validate(model)
        return policy
    near = close_matches(qnn, QNNS)
    raise ConfigError(f"unknown QNN {qnn!r}: use {', '.join(QNNS)} or a policy .json file"
                      + (f"; did you mean {', '.join(map(repr, near))}?" if near else ""))


# ---- one attack on one model -------------------------------------------------------------------------------------
def load_attack(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``attack.json`` (ConfigError if it is not one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "attack.json"
    obj = read_json(p, "attack result")
    if not isinstance(obj, dict) or obj.get("format") != ATTACK_FORMAT or not isinstance(obj.get("runs"), dict):
        raise ConfigError(f"{p} is not a qpolicy attack result")
    return obj


def attack_model(model: nn.Module, policy: Any = None, *, attack: str, eps: Sequence[float | None],
                 params: Mapping[str, Any] | None = None, out_dir: str | os.PathLike, images: int = 100,
                 split: str = "test", transfer: bool = False, preprocess: nn.Module | None = None,
                 defense: str | None = None, chunk: int = 50, resume: bool = False, calib: Any = None,
                 calib_config: Any = None, seed: int = 0, device: str | torch.device | None = None,
                 model_name: str | None = None, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Attack ``model`` (under ``policy`` when given: PTQ on ``calib``) on ``images`` images of ``split`` at each
    ``eps``; ``attack.json`` in ``out_dir`` is rewritten after every chunk of images, and ``resume`` continues it.

    Args:
        transfer: Craft on the float model, classify with the quantized one.
        preprocess: A pixel-space defense in front of the classifier (oblivious attacker).
        defense: Its name (recorded).
    """
    from .certify import pixel_images, spaced_indices

    configs = [AttackConfig(attack=attack, eps=e, params=dict(params or {}), seed=seed) for e in eps]
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    if transfer and policy is None:
        raise ConfigError("transfer crafts on the float model and evaluates a quantized one: give a policy")
    out = Path(out_dir)
    path = out / "attack.json"
    if path.exists() and not resume:
        raise ConfigError(f"{path} exists: resume it (--resume) or choose another output folder")
    size = split_size(split, data_dir)
    x, y, file_idx = pixel_images(split, spaced_indices(size, images), data_dir=data_dir)
    settings = {"model": model_name, "policy": policy.to_dict() if policy is not None else None, "attack": attack,
                "params": configs[0].resolved, "split": split, "images": images, "transfer": transfer,
                "defense": defense, "seed": seed, "chunk": chunk}
    result: dict[str, Any] = {"format": ATTACK_FORMAT, "version": 1, "settings": settings, "runs": {}}
    if resume and path.exists():
        old = load_attack(path)
        def same(a: Mapping[str, Any]) -> Any:  # the policy's provenance (time, versions) may differ
            return {**a, "policy": (a.get("policy") or {}).get("layers")}

        if same(old.get("settings", {})) != same(json_roundtrip(settings)):
            raise ConfigError(f"{path} was made with other settings; resume with the same ones or start a new folder")
        result = old
    target = model
    if policy is not None:
        from ..quant import apply_policy

        policy.validate(model)
        target = apply_policy(model, policy, calib=calib, config=calib_config)
    source = model if transfer else None
    t0 = time.perf_counter()
    for cfg in configs:
        run = result["runs"].setdefault(_eps_key(cfg.eps), {"eps": cfg.eps, "records": [], "seconds": 0.0})
        starts = range(len(run["records"]), len(x), chunk)
        for c in progress(starts, desc=f"{attack} eps {_eps_key(cfg.eps)}", total=len(starts)):
            t = time.perf_counter()
            recs = run_attack(target, x[c:c + chunk], y[c:c + chunk], cfg, source=source, device=device,
                              preprocess=preprocess, chunk=c // chunk)
            for r, i in zip(recs, file_idx[c:c + chunk], strict=True):
                r["index"] = i
            run["records"].extend(recs)
            run["seconds"] += time.perf_counter() - t
            run["summary"] = summarize(run["records"])
            write_json(path, result)
        run["summary"] = summarize(run["records"])
    write_json(path, result)
    log.info("attack %s done in %.0f s", attack, time.perf_counter() - t0)
    return result


def json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


# ---- the suite ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RobustnessConfig:
    """What ``qpolicy robustness`` runs (a JSON file with these keys).

    Args:
        models: Zoo model names (e.g. ["resnet8", "resnet20"]).
        qnns: QNN names (:data:`QNNS`) or policy files.
        attacks: Attack name -> list of eps (``[null]`` for minimal-perturbation attacks).
        params: Attack name -> parameter overrides.
        transfer: Attacks also run in the transfer setting (crafted on the float model).
        defenses: Defense names to evaluate besides the undefended model ("none" is always included).
        defense_attacks: The attacks run on defended models (default: all).
        images: Test images attacked (evenly spaced).
        attack_images: Attack name -> fewer images for that attack (an evenly spaced subset of ``images``), for
            the slow ones on a CPU.
        clean_images: Test images for the clean accuracy of every model and QNN.
        seed: Seeds the attacks and calibration.
    """

    models: tuple[str, ...] = ("resnet8",)
    qnns: tuple[str, ...] = QNNS
    attacks: Mapping[str, tuple[float | None, ...]] = field(default_factory=lambda: {"pgd": (0.002, 0.008)})
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    transfer: bool = True
    defenses: tuple[str, ...] = ()
    defense_attacks: tuple[str, ...] | None = None
    images: int = 100
    attack_images: Mapping[str, int] = field(default_factory=dict)
    clean_images: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        from .. import models
        from .defenses import DEFENSES

        for key in ("models", "qnns", "defenses", "defense_attacks"):
            v = getattr(self, key)
            if v is None and key == "defense_attacks":
                continue
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"{key} must be a list of names, got {shorten(v)}")
            if not v and key in ("models", "qnns"):
                raise ConfigError(f"{key} must name at least one")
        if not isinstance(self.attacks, Mapping) or not self.attacks:
            raise ConfigError(f"attacks must map at least one attack name to its list of eps, got "
                              f"{shorten(self.attacks)}")
        if not isinstance(self.params, Mapping) or not all(isinstance(v, Mapping) for v in self.params.values()):
            raise ConfigError(f"params must map attack names to objects of parameters, got {shorten(self.params)}")
        if not isinstance(self.attack_images, Mapping):
            raise ConfigError(f"attack_images must map attack names to image counts, got {shorten(self.attack_images)}")
        for m in self.models:
            models.spec(m)
        for q in self.qnns:
            if q not in QNNS and not str(q).endswith(".json"):
                qnn_policy(None, q)  # raises with suggestions
        for name, eps in self.attacks.items():
            ATTACKS.get(name)
            if not isinstance(eps, (list, tuple)) or not eps:
                raise ConfigError(f"attacks[{name!r}] must be a non-empty list of eps (null for none)")
            for e in eps:
                AttackConfig(attack=name, eps=e, params=dict(self.params.get(name, {})))
        for name in self.params:
            if name not in self.attacks:
                raise ConfigError(f"params given for {name!r}, which is not in attacks")
        for d in self.defenses:
            DEFENSES.get(d)
        for a in self.defense_attacks or ():
            if a not in self.attacks:
                raise ConfigError(f"defense_attacks names {a!r}, which is not in attacks")
        for a, v in dict(self.attack_images).items():
            if a not in self.attacks:
                raise ConfigError(f"attack_images names {a!r}, which is not in attacks")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"attack_images[{a!r}] must be a positive integer, got {v!r}")
        for k in ("images", "clean_images"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be a positive integer, got {v!r}")
        if not isinstance(self.transfer, bool):
            raise ConfigError(f"transfer must be true or false, got {shorten(self.transfer)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {shorten(self.seed)}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["attacks"] = {k: list(v) for k, v in self.attacks.items()}
        d["params"] = {k: dict(v) for k, v in self.params.items()}
        d["attack_images"] = dict(self.attack_images)
        return json_roundtrip(d)


def load_robustness_config(path: str | os.PathLike) -> RobustnessConfig:
    """Read a robustness config (JSON); unknown keys get suggestions."""
    obj = read_json(path, "robustness config")
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a robustness config is a JSON object")
    known = {f.name for f in fields(RobustnessConfig)}
    for k in obj:
        if k not in known:
            near = close_matches(k, known)
            raise ConfigError(f"{path}: unknown key {k!r} (allowed: {', '.join(sorted(known))})"
                              + (f"; did you mean {', '.join(map(repr, near))}?" if near else ""))
    for k in ("models", "qnns", "defenses", "defense_attacks"):
        if k in obj and obj[k] is not None:
            if not isinstance(obj[k], list):
                raise ConfigError(f"{path}: {k} must be a list")
            obj[k] = tuple(obj[k])
    if "attacks" in obj:
        if not isinstance(obj["attacks"], dict):
            raise ConfigError(f"{path}: attacks must map attack names to lists of eps")
        obj["attacks"] = {k: tuple(v) if isinstance(v, list) else v for k, v in obj["attacks"].items()}
    return RobustnessConfig(**obj)


class _Context:
    """Per-process cache of models, QNNs, pre-processing defenses and images (built once per worker)."""

    def __init__(self, shared: Mapping[str, Any]):
        self.shared = shared
        self.models: dict[Any, nn.Module] = {}
        self.pre: dict[Any, Any] = {}
        self.thresholds: dict[Any, float] = {}
        self.preds: dict[Any, np.ndarray] = {}
        from .certify import pixel_images, spaced_indices

        self.x, self.y, self.idx = pixel_images("test", spaced_indices(split_size("test", shared.get("data_dir")),
                                                                       shared["config"]["images"]),
                                                data_dir=shared.get("data_dir"))

    def float_model(self, name: str, defense: str) -> nn.Module:
        key = (name, defense, "float")
        if key not in self.models:
            from .. import models
            from .defenses import DEFENSES

            m = models.load(name, trained_dir=self.shared.get("trained_dir"))
            if defense != "none" and DEFENSES.get(defense).kind == "train":
                from ..train.trained import load_trained, trained_model_dir

                folder = trained_model_dir(name, defense, self.shared.get("trained_dir"))
                if not (folder / "weights.pt").is_file():
                    from ..errors import WeightsError

                    raise WeightsError(f"no {defense} model of {name} in {folder}: train it with `qpolicy train "
                                       f"--model {name} --defense {defense}`")
                m = load_trained(m, folder)
            self.models[key] = m.eval()
        return self.models[key]

    def qnn(self, name: str, defense: str, qnn: str) -> nn.Module:
        key = (name, defense, qnn)
        if key not in self.models:
            from ..data import calib_loader
            from ..policy import Policy
            from ..quant import apply_policy

            base = self.float_model(name, defense)
            policy = Policy.from_dict(self.shared["policies"][name][qnn])
            torch.manual_seed(self.shared["config"]["seed"])
            calib = calib_loader(self.shared.get("data"), seed=self.shared["config"]["seed"],
                                 data_dir=self.shared.get("data_dir"))
            self.models[key] = apply_policy(base, policy, calib=calib).eval()
        return self.models[key]

    def target(self, name: str, defense: str, qnn: str) -> nn.Module:
        return self.float_model(name, defense) if qnn == "float" else self.qnn(name, defense, qnn)

    def adversarial(self, key: tuple, make) -> np.ndarray:
        """Adversarial examples by key, stored in ``<out>/adv/`` so that transfer items, pre-processing defenses
        and resumed runs reuse them instead of crafting again."""
        import hashlib
        import io

        from .._io import atomic_write

        folder = Path(self.shared["out_dir"]) / "adv"
        path = folder / (hashlib.sha256(repr(key).encode()).hexdigest()[:20] + ".npy")
        if path.is_file():
            return np.load(path)
        adv = make()
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, adv)
        with atomic_write(path, "wb", encoding=None) as f:
            f.write(buf.getvalue())
        return adv

    def cached_predict(self, model: nn.Module, key: tuple, x: torch.Tensor, pre: Any) -> np.ndarray:
        if key not in self.preds:
            self.preds[key] = predict(model, x, preprocess=pre)
        return self.preds[key]

    def preprocess(self, name: str, defense: str):
        from .defenses import DEFENSES

        if defense == "none" or DEFENSES.get(defense).kind != "preprocess":
            return None
        if defense not in self.pre:
            spec = DEFENSES.get(defense)
            self.pre[defense] = spec.build(None, spec.make_config(), trained_dir=self.shared.get("trained_dir"))
        return self.pre[defense]

    def squeeze_threshold(self, name: str, qnn: str, model: nn.Module) -> float:
        key = (name, qnn)
        if key not in self.thresholds:
            from .certify import pixel_images, spaced_indices
            from .defenses import DEFENSES
            from .defenses.squeeze import calibrate_threshold, detection_scores

            opts = DEFENSES.get("squeeze").make_config()
            size = split_size("val", self.shared.get("data_dir"))
            xv, _, _ = pixel_images("val", spaced_indices(size, min(opts.calib_images, size)),
                                    data_dir=self.shared.get("data_dir"))
            self.thresholds[key] = calibrate_threshold(detection_scores(model, xv, opts), opts.fpr)
        return self.thresholds[key]


_CONTEXT: dict[str, _Context] = {}


def _context(shared: Mapping[str, Any]) -> _Context:
    key = shared["token"]
    if key not in _CONTEXT:
        _CONTEXT.clear()
        _CONTEXT[key] = _Context(shared)
    return _CONTEXT[key]


def _item_key(item: Mapping[str, Any]) -> str:
    return "|".join(str(item.get(k)) for k in ("kind", "model", "defense", "qnn", "attack", "eps", "mode"))


def _evaluate_item(shared: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    """One item of the suite (runs in a worker)."""
    ctx = _context(shared)
    t = time.perf_counter()
    name, defense, qnn = item["model"], item["defense"], item["qnn"]
    target = ctx.target(name, defense, qnn)
    pre = ctx.preprocess(name, defense)
    if item["kind"] == "clean":
        from ..data import loader
        from ..evaluate import evaluate

        if pre is None:
            test = loader(shared.get("data"), "test", batch_size=500, limit=shared["config"]["clean_images"],
                          data_dir=shared.get("data_dir"))
            ev = evaluate(target, test)
            return {"top1": ev.top1, "images": ev.total, "seconds": time.perf_counter() - t}
        if defense == "pixeldefend":  # purification costs one PixelCNN pass per pixel: the attacked images only
            xs, ys = ctx.x, ctx.y
        else:
            from .certify import pixel_images, spaced_indices

            size = split_size("test", shared.get("data_dir"))
            xs, ys, _ = pixel_images("test", spaced_indices(size, min(shared["config"]["clean_images"], size)),
                                     data_dir=shared.get("data_dir"))
        pred = predict(target, xs, preprocess=pre)
        return {"top1": 100.0 * float((pred == ys.numpy()).mean()), "images": len(xs),
                "seconds": time.perf_counter() - t}
    if item["kind"] == "gradcos":
        from .attacks import gradient_cosine

        cos = gradient_cosine(ctx.float_model(name, defense), target, ctx.x, ctx.y)
        return {"mean": float(cos.mean()), "median": float(np.median(cos)), "min": float(cos.min()),
                "images": len(cos), "cosines": [round(float(c), 6) for c in cos], "seconds": time.perf_counter() - t}
    cfg = AttackConfig(attack=item["attack"], eps=item["eps"], params=dict(shared["config"]["params"].get(
        item["attack"], {})), seed=shared["config"]["seed"])
    from .defenses import DEFENSES

    # who the attacker crafts on: the QNN itself (direct) or the float model (transfer), of the same trained
    # defense; a pre-processing defense is not seen by the attacker (oblivious), so it crafts on the undefended model
    crafted_defense = defense if defense == "none" or DEFENSES.get(defense).kind == "train" else "none"
    src_qnn = "float" if item["mode"] == "transfer" else qnn
    k = shared["config"].get("attack_images", {}).get(item["attack"], len(ctx.x))
    sel = np.linspace(0, len(ctx.x) - 1, num=min(k, len(ctx.x))).round().astype(int) if k < len(ctx.x) else \
        np.arange(len(ctx.x))
    x, y = ctx.x[sel], ctx.y[sel].numpy()
    adv = ctx.adversarial((name, crafted_defense, src_qnn, item["attack"], item["eps"], len(sel)),
                          lambda: craft(ctx.target(name, crafted_defense, src_qnn), x, torch.from_numpy(y), cfg))
    clean = ctx.cached_predict(target, (name, defense, qnn, "clean", len(sel)), x, pre)
    advp = predict(target, torch.from_numpy(adv), preprocess=pre)
    dist = distortions(x.numpy(), adv)
    recs = [{"label": int(y[i]), "clean": int(clean[i]), "adv": int(advp[i]), **{k: float(v[i]) for k, v in
                                                                                   dist.items()}}
            for i in range(len(y))]
    out: dict[str, Any] = {"summary": summarize(recs), "records": recs}
    if defense == "squeeze":
        from .defenses import DEFENSES
        from .defenses.squeeze import detection_scores

        opts = DEFENSES.get("squeeze").make_config()
        thr = ctx.squeeze_threshold(name, qnn, target)
        undefended = predict(target, torch.from_numpy(adv))
        plain = predict(target, x)
        fooled = (plain == y) & (undefended != y)
        flagged = detection_scores(target, torch.from_numpy(adv), opts) > thr
        out["detection"] = {"threshold": thr, "fooled": int(fooled.sum()),
                            "detected": int((flagged & fooled).sum()),
                            "rate": 100.0 * float((flagged & fooled).sum()) / max(int(fooled.sum()), 1)}
    out["seconds"] = time.perf_counter() - t
    return out


def _items(config: RobustnessConfig) -> list[dict[str, Any]]:
    items = []
    for name in config.models:
        for defense in ("none", *config.defenses):
            for qnn in config.qnns:
                base = {"model": name, "defense": defense, "qnn": qnn}
                items.append({**base, "kind": "clean"})
                if qnn != "float" and defense == "none":
                    items.append({**base, "kind": "gradcos"})
                attacks = config.attacks if defense == "none" or config.defense_attacks is None else {
                    a: config.attacks[a] for a in config.defense_attacks}
                for attack, eps_list in attacks.items():
                    modes = ["direct"] + (["transfer"] if config.transfer and qnn != "float" else [])
                    for mode in modes:
                        for eps in eps_list:
                            items.append({**base, "kind": "attack", "attack": attack, "eps": eps, "mode": mode})
    return items


def run_robustness(config: RobustnessConfig, *, out_dir: str | os.PathLike, workers: int | None = None,
                   address: str | None = None, trained_dir: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None, stats: Any = None) -> dict[str, Any]:
    """Run the suite (module docs); resumable from ``out_dir/items.json``. Returns the written ``robustness.json``."""
    from .. import models
    from ..data import calib_loader
    from ..runner import RunManyError, run_many
    from ..sensitivity import analyze

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists() and read_json(cfg_path, "robustness config") != config.to_dict():
        raise ConfigError(f"{out} holds a run of another config: use the same config or another folder")
    write_json(cfg_path, config.to_dict())
    policies: dict[str, dict[str, Any]] = {}
    for name in config.models:
        model = models.load(name, trained_dir=trained_dir)
        pol_path = out / f"policies_{name}.json"
        if pol_path.exists():
            policies[name] = read_json(pol_path, "policies")
            continue
        table = None
        if "mixed" in config.qnns:
            table = analyze(model, calib_loader(None, seed=config.seed, data_dir=data_dir), metric="fisher",
                            bits=(2, 3, 4, 5, 6, 8), model_name=name)
        policies[name] = {q: qnn_policy(model, q, model_name=name, table=table).to_dict() for q in config.qnns
                          if q != "float"}
        write_json(pol_path, policies[name])
    shared = {"config": config.to_dict(), "policies": policies, "out_dir": str(out.resolve()),
              "trained_dir": str(trained_dir) if trained_dir else None,
              "data_dir": str(data_dir) if data_dir else None, "token": str(out.resolve())}
    items = _items(config)
    failures: list[tuple[str, str]] = []
    try:
        values = run_many(_evaluate_item, items, shared=shared, workers=workers, address=address,
                          results=out / "items.json", key=_item_key, desc="robustness", stats=stats)
    except RunManyError as e:
        values, failures = e.results, e.failures
    results = [{**it, "result": v} for it, v in zip(items, values, strict=True) if v is not None]
    doc = {"format": ROBUSTNESS_FORMAT, "version": 1, "config": config.to_dict(), "policies": policies,
           "results": results, "failures": [{"item": k, "error": m} for k, m in failures],
           "findings": findings(results, config)}
    write_json(out / "robustness.json", doc)
    if failures:
        raise RunManyError(failures, values)
    return doc


def _get(results: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r["result"]
    return None


def _outcomes(result: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per attacked image: classified correctly, still correct after the attack, and its L2 distortion."""
    recs = result["records"]
    label = np.array([r["label"] for r in recs])
    return (np.array([r["clean"] for r in recs]) == label, np.array([r["adv"] for r in recs]) == label,
            np.array([r["l2"] for r in recs], dtype=float))


def _median_success_l2(res: tuple[np.ndarray, np.ndarray, np.ndarray], idx: np.ndarray) -> float:
    correct, robust, l2 = (a[idx] for a in res)
    won = correct & ~robust
    return float(np.median(l2[won])) if won.any() else float("nan")


def _success(res: tuple[np.ndarray, np.ndarray, np.ndarray], idx: np.ndarray) -> float:
    correct, robust = res[0][idx], res[1][idx]
    return float((correct & ~robust).sum() / correct.sum()) if correct.any() else float("nan")


def _paired(*results: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The outcomes of results on the same images (None when they were not: no paired interval)."""
    outs = [_outcomes(r) for r in results if r.get("records")]
    if len(outs) != len(results) or len({len(o[0]) for o in outs}) != 1:
        return None
    return outs


def _interval(v: tuple[float, float] | None) -> list[float] | None:
    return None if v is None else [round(v[0], 6), round(v[1], 6)]


def findings(results: Sequence[Mapping[str, Any]], config: RobustnessConfig | Mapping[str, Any]) -> list[dict]:
    """The paper's four findings re-checked on these results. The rules (thresholds) are fixed here, before looking
    at the numbers; each row gets a 95% percentile-bootstrap interval over the attacked images (both models'
    outcomes resampled together: they saw the same images) and a verdict, held or not held only when the whole
    interval is on one side of the threshold, else undecided (:mod:`qpolicy.stats`); each finding's verdict sums
    up its rows.

    1. Quantization increases the boundary distance: the median DeepFool L2 of successful examples is larger on the
       QNN than on the float model (interval of the difference QNN - float > 0).
    2. Quantization misaligns the gradients: the mean cosine between float and QNN input gradients is below 0.9.
    3. Pre-processing defenses work for small perturbations, not large ones: of the accuracy PGD takes from the
       undefended model, feature squeezing or PixelDefend recovers at least half at the smallest eps that costs at
       least 10 points, and less than half at the largest eps.
    4. Transferability persists after train-based defenses: transfer examples (crafted on the defended float model)
       still fool the defended QNN (success rate >= 50% of the direct one at the largest PGD eps: interval of
       transfer - 0.5 direct >= 0).
    """
    from ..stats import HELD, NOT_HELD, UNDECIDED, bootstrap_interval, overall_verdict, verdict

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    seed = int(cfg.get("seed", 0))
    out = []
    models_, qnns = cfg["models"], [q for q in cfg["qnns"] if q != "float"]
    # 1. boundary distance
    rows = []
    for m in models_:
        f = _get(results, kind="attack", model=m, defense="none", qnn="float", attack="deepfool", mode="direct")
        for q in qnns:
            r = _get(results, kind="attack", model=m, defense="none", qnn=q, attack="deepfool", mode="direct")
            if f and r and f["summary"]["median_distortion"]["l2"] is not None and r["summary"][
                    "median_distortion"]["l2"] is not None:
                pair = _paired(f, r)
                ci = None if pair is None else bootstrap_interval(
                    lambda i, p=pair: _median_success_l2(p[1], i) - _median_success_l2(p[0], i), len(pair[0][0]),
                    seed=seed)
                rows.append({"model": m, "qnn": q, "float_l2": f["summary"]["median_distortion"]["l2"],
                             "qnn_l2": r["summary"]["median_distortion"]["l2"], "images": f["summary"]["images"],
                             "difference_interval": _interval(ci), "verdict": verdict(ci, 0.0)})
    out.append({"finding": "quantization increases the distance to the decision boundary (DeepFool median L2)",
                "rows": rows, "verdict": overall_verdict([r["verdict"] for r in rows])})
    # 2. gradient misalignment
    rows = []
    for m in models_:
        for q in qnns:
            r = _get(results, kind="gradcos", model=m, defense="none", qnn=q)
            if r is None:
                continue
            cos = np.asarray(r.get("cosines", []), dtype=float)
            ci = bootstrap_interval(lambda i, c=cos: float(c[i].mean()), len(cos), seed=seed)
            rows.append({"model": m, "qnn": q, "cosine_mean": r["mean"], "cosine_median": r["median"],
                         "images": r.get("images"), "mean_interval": _interval(ci),
                         "verdict": verdict(ci, 0.9, held_above=False)})
    out.append({"finding": "quantization misaligns input gradients (mean cosine float vs QNN < 0.9)", "rows": rows,
                "verdict": overall_verdict([r["verdict"] for r in rows])})
    # 3. pre-processing defenses: small vs large eps
    eps = sorted(e for e in cfg["attacks"].get("pgd", []) if e is not None)
    rows = []
    for m in models_:
        for d in [d for d in cfg.get("defenses", ()) if d in ("squeeze", "pixeldefend")]:
            for q in cfg["qnns"]:
                base = {e: _get(results, kind="attack", model=m, defense="none", qnn=q, attack="pgd", eps=e,
                                mode="direct") for e in eps}
                dfd = {e: _get(results, kind="attack", model=m, defense=d, qnn=q, attack="pgd", eps=e,
                               mode="direct") for e in eps}
                if not eps or not all(base.values()) or not all(dfd.values()):
                    continue
                lost = {e: base[e]["summary"]["clean_accuracy"] - base[e]["summary"]["robust_accuracy"] for e in eps}
                small = next((e for e in eps if lost[e] >= 10), None)  # the smallest eps the attack bites at
                if small is None or small == eps[-1] or lost[eps[-1]] <= 0:
                    continue
                rec = {e: (dfd[e]["summary"]["robust_accuracy"] - base[e]["summary"]["robust_accuracy"]) / lost[e]
                       for e in (small, eps[-1])}
                cis = {}
                for e in (small, eps[-1]):
                    pair = _paired(base[e], dfd[e])

                    def share(i, p=pair):
                        (bc, br, _), (_, dr, _) = p
                        taken = bc[i].mean() - br[i].mean()
                        return float((dr[i].mean() - br[i].mean()) / taken) if taken > 0 else float("nan")

                    cis[e] = None if pair is None else bootstrap_interval(share, len(pair[0][0]), seed=seed)
                v_small = verdict(cis[small], 0.5, inclusive=True)
                v_large = verdict(cis[eps[-1]], 0.5, held_above=False)
                v = HELD if v_small == v_large == HELD else NOT_HELD if NOT_HELD in (v_small, v_large) else UNDECIDED
                rows.append({"model": m, "defense": d, "qnn": q, "eps_small": small, "recovered_small": rec[small],
                             "recovered_small_interval": _interval(cis[small]), "eps_large": eps[-1],
                             "recovered_large": rec[eps[-1]], "recovered_large_interval": _interval(cis[eps[-1]]),
                             "verdict": v})
    out.append({"finding": "pre-processing defenses help at small eps, not at large eps (share of PGD's accuracy loss "
                           "recovered: >= 0.5 at the smallest eps that costs >= 10 points, < 0.5 at the largest)",
                "rows": rows, "verdict": overall_verdict([r["verdict"] for r in rows])})
    # 4. transfer after train-based defenses
    rows = []
    big = eps[-1] if eps else None
    for m in models_:
        for d in [d for d in cfg.get("defenses", ()) if d not in ("squeeze", "pixeldefend")]:
            for q in qnns:
                direct = _get(results, kind="attack", model=m, defense=d, qnn=q, attack="pgd", eps=big, mode="direct")
                trans = _get(results, kind="attack", model=m, defense=d, qnn=q, attack="pgd", eps=big,
                             mode="transfer")
                if direct and trans:
                    pair = _paired(direct, trans)
                    ci = None if pair is None else bootstrap_interval(
                        lambda i, p=pair: _success(p[1], i) - 0.5 * _success(p[0], i), len(pair[0][0]), seed=seed)
                    v = verdict(ci, 0.0, inclusive=True) if direct["summary"]["success_rate"] > 0 else UNDECIDED
                    rows.append({"model": m, "defense": d, "qnn": q, "eps": big,
                                 "direct_success": direct["summary"]["success_rate"],
                                 "transfer_success": trans["summary"]["success_rate"],
                                 "images": direct["summary"]["images"],
                                 "transfer_minus_half_direct_interval": _interval(
                                     None if ci is None else (100 * ci[0], 100 * ci[1])), "verdict": v})
    out.append({"finding": "transferability persists after train-based defenses (transfer success >= half of "
                           "direct, PGD at the largest eps)", "rows": rows,
                "verdict": overall_verdict([r["verdict"] for r in rows])})
    return out


def layer_perturbation(model: nn.Module, images: torch.Tensor, adversarial: torch.Tensor, *,
                       device: str | torch.device | None = None) -> dict[str, float]:
    """Where an attack bites: per quantizable layer of ``model`` (float, normalized inputs), the relative change of
    its output between clean and adversarial pixel-space images, ``||f_l(x_adv) - f_l(x)|| / ||f_l(x)||`` averaged
    over the images (module docs of :mod:`qpolicy.layers` for the layer names)."""
    from ..evaluate import resolve_device
    from ..layers import quantizable_layers
    from .attacks import PixelModel

    dev = resolve_device(device)
    names = [li.name for li in quantizable_layers(model)]
    mods = dict(model.named_modules())
    net = PixelModel(model).to(dev).eval()
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs[n].append(o.detach().flatten(1).double()))
               for n in names]
    try:
        with torch.no_grad():
            net(torch.as_tensor(images).float().to(dev))
            net(torch.as_tensor(adversarial).float().to(dev))
    finally:
        for h in handles:
            h.remove()
    return {n: float(((outs[n][1] - outs[n][0]).norm(dim=1) / outs[n][0].norm(dim=1).clamp_min(1e-12)).mean())
            for n in names}
