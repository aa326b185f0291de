"""Adversarial attacks on float and quantized models, through the Adversarial Robustness Toolbox (ART 1.20).

Costa and Pinto's "David and Goliath" (2024) protocol in PyTorch. Attacks work on **pixel-space** images in [0, 1]
(N x C x H x W); the model's input normalization goes inside the wrapped model (:class:`PixelModel`), so ``eps``
means the same for every model. A quantized model (from :func:`qpolicy.apply_policy`) is attacked white-box through
its straight-through gradients; the black-box attacks (Boundary, GeoDA, Square, ZOO) query its outputs only. In
the transfer setting the examples are crafted on a source model (the float one) and evaluated on the target.

Each attack is a registered :class:`AttackSpec` with the paper's CIFAR-10 parameters as defaults
(``qpolicy list attacks``); :class:`AttackConfig` overrides them, type-checked. Two documented deviations from
ART's defaults that the paper's numbers need: C&W L2 and EAD start from ``initial_const`` 1.0 (with ART's 0.01 /
0.001 they move no image in 10 iterations), and GeoDA needs ``np.mat``, which numpy 2 removed (aliased to
``np.asmatrix`` while it runs). ``apgd_square`` is ART's AutoAttack composition (the worst case over its
sub-attacks per image) with the sub-attacks built here so that their iterations and restarts are settings:
untargeted APGD-CE and APGD-DLR with 100 iterations and 5 restarts, and Square with 5000 queries. It is **not**
standard AutoAttack (Croce and Hein 2020: APGD-CE, targeted APGD-T, targeted FAB-T, Square), whose targeted
attacks it lacks, so its robust accuracy can be higher than standard AutoAttack's.

Per image the result keeps the clean and adversarial predictions of the target and the distortion of the
adversarial example (:func:`distortions`: L0, L1, L2, Linf of ``x_adv - x``); :func:`summarize` turns them into
robust accuracy and the median distortion of successful examples.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from ..datasets import normalization
from ..errors import ConfigError, close_matches, shorten
from ..registry import Registry

__all__ = ["PixelModel", "AttackSpec", "AttackConfig", "ATTACKS", "art_classifier", "craft", "run_attack",
           "distortions", "summarize", "check_images", "gradient_cosine", "predict", "attack_names"]

log = logging.getLogger(__name__)
ATTACKS: Registry[AttackSpec] = Registry("attack")


class PixelModel(nn.Module):
    """``model`` on pixel-space images in [0, 1]: an optional pixel-space pre-processing (a defense), then the
    model's input normalization, then the model. Inputs of any float dtype are cast to float32 (ART's Boundary,
    HopSkipJump and pre-processing pass float64)."""

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 preprocess: nn.Module | None = None):
        super().__init__()
        if mean is None or std is None:  # the default data set's normalization
            mean, std = normalization()
        self.model = model
        self.preprocess = preprocess
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.model((x - self.mean) / self.std)


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: Registry name.
        build: ``build(classifier, eps, params) -> ART evasion attack``.
        defaults: The paper's parameters (names and types of the settings a config may override).
        norm: The norm the attack bounds or minimizes ("linf", "l2", "l1", "l0").
        uses_eps: Whether the attack takes an ``eps`` budget (minimal-perturbation attacks do not).
        black_box: Queries outputs only (no gradients).
        description: One line for ``qpolicy list attacks``.
    """

    name: str
    build: Callable[[Any, float | None, dict[str, Any]], Any]
    defaults: Mapping[str, Any]
    norm: str
    uses_eps: bool
    black_box: bool
    description: str


def attack_names() -> list[str]:
    return ATTACKS.names()


def _register(name: str, *, defaults: dict[str, Any], norm: str, uses_eps: bool, black_box: bool, description: str):
    def deco(fn):
        ATTACKS.add(name, AttackSpec(name=name, build=fn, defaults=defaults, norm=norm, uses_eps=uses_eps,
                                     black_box=black_box, description=description))
        return fn

    return deco


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """One attack at one budget.

    Args:
        attack: A registered attack name (``qpolicy list attacks``).
        eps: The perturbation budget in pixel units (images in [0, 1]) for attacks that take one; None for
            minimal-perturbation attacks (C&W, DeepFool, EAD, JSMA, ZOO, Boundary, GeoDA).
        params: Overrides of the attack's paper parameters (same names and types).
        batch_size: Images per ART call.
        seed: Seeds numpy and torch before each chunk of images (a resumed run draws the same).
    """

    attack: str
    eps: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        spec = ATTACKS.get(self.attack)  # unknown name: "did you mean"
        if self.eps is not None:
            if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps):
                raise ConfigError(f"eps must be a number (pixel units, images in [0, 1]), got {self.eps!r}")
            if self.eps < 0:
                raise ConfigError(f"eps must be >= 0 (pixel units, images in [0, 1]), got {self.eps!r}")
        if spec.uses_eps and self.eps is None:
            raise ConfigError(f"attack {self.attack!r} needs eps (a {spec.norm} budget in pixel units, e.g. 0.004)")
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"attack params must be a mapping of names to values, got {self.params!r}")
        for k, v in self.params.items():
            if k not in spec.defaults:
                near = close_matches(str(k), spec.defaults)
                hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
                raise ConfigError(f"attack {self.attack!r} has no parameter {k!r} (it has: "
                                  f"{', '.join(sorted(spec.defaults))}){hint}")
            d = spec.defaults[k]
            if not _type_ok(v, d):
                raise ConfigError(f"attack {self.attack!r} parameter {k!r} must be {type(d).__name__} (like "
                                  f"{d!r}), got {shorten(v)}")
            # every integer parameter is a count (iterations, steps, trials; restarts may be 0: start at the image)
            # and every real one a rate, a step or a threshold: ART takes 0 iterations or a negative rate and
            # attacks nothing, or fails deep inside
            least = 0 if k == "restarts" else 1
            if isinstance(d, int) and not isinstance(d, bool) and v < least:
                raise ConfigError(f"attack {self.attack!r} parameter {k!r} is a count: it must be >= {least}, got "
                                  f"{v!r}")
            if isinstance(d, float) and v < 0:
                raise ConfigError(f"attack {self.attack!r} parameter {k!r} must be >= 0, got {v!r}")
        for name in ("batch_size",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def spec(self) -> AttackSpec:
        return ATTACKS.get(self.attack)

    @property
    def resolved(self) -> dict[str, Any]:
        """The attack's parameters: the paper's, with the overrides."""
        return {**self.spec.defaults, **dict(self.params)}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["params"] = self.resolved
        return d


def check_images(images: Any) -> torch.Tensor:
    """Pixel-space images: a float tensor/array N x C x H x W with values in [0, 1]."""
    x = torch.as_tensor(images)
    if x.dim() != 4 or not torch.is_floating_point(x):
        raise ConfigError(f"images must be float N x C x H x W in [0, 1], got {tuple(x.shape)} {x.dtype}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ConfigError(f"images must lie in [0, 1] (pixel space, before normalization); got values in "
                          f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x.float()


def art_classifier(model: nn.Module, *, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10,
                   device: str | torch.device | None = None, preprocess: nn.Module | None = None,
                   pixel: bool = False):
    """An ART ``PyTorchClassifier`` around ``model`` (normalized inputs; ``pixel`` when it already takes [0, 1]
    images) taking pixel-space images clipped to [0, 1]."""
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"attacks need the Adversarial Robustness Toolbox: pip install 'qpolicy[attacks]' ({e})"
                          ) from None

    from ..evaluate import resolve_device

    dev = resolve_device(device)
    net = model if pixel else PixelModel(model, preprocess=preprocess)
    return PyTorchClassifier(model=net.eval(), loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if dev.type == "cuda" else "cpu")


@contextlib.contextmanager
def _numpy_mat() -> Iterator[None]:
    """ART's GeoDA calls ``np.mat``, removed in numpy 2: alias it to ``np.asmatrix`` while it runs. It also caches
    its DCT basis (23 MB) as a file in the working directory: run it from a temporary cache folder instead."""
    import os
    import tempfile
    from pathlib import Path

    had = hasattr(np, "mat")
    if not had:
        np.mat = np.asmatrix  # type: ignore[attr-defined]
    cache = Path(tempfile.gettempdir()) / "qpolicy-art-cache"
    cache.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(cache)
    try:
        yield
    finally:
        os.chdir(cwd)
        if not had:
            del np.mat  # type: ignore[attr-defined]


# ---- the attacks (the paper's CIFAR-10 parameters) --------------------------------------------------------------
@_register("apgd_square", defaults={"iterations": 100, "restarts": 5, "square_queries": 5000}, norm="linf",
           uses_eps=True, black_box=False,
           description="APGD-CE + APGD-DLR (untargeted) + Square, worst case per image (ART's AutoAttack "
                       "composition; not standard AutoAttack, which adds targeted APGD-T and FAB-T); paper eps 0.004")
def _apgd_square(clf, eps, p):
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    step = 2 * eps / 10 if eps else 0.0
    subs = [AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=step, max_iter=p["iterations"],
                                         nb_random_init=p["restarts"], loss_type=loss, verbose=False)
            for loss in ("cross_entropy", "difference_logits_ratio")]
    subs.append(SquareAttack(clf, norm=np.inf, eps=eps, max_iter=p["square_queries"], nb_restarts=1, verbose=False))
    return AutoAttack(clf, norm=np.inf, eps=eps, eps_step=step, attacks=subs)


@_register("boundary", defaults={"delta": 0.1, "epsilon": 1.0, "max_iter": 500, "num_trial": 25, "init_size": 100},
           norm="l2", uses_eps=False, black_box=True,
           description="Boundary attack (Brendel et al. 2018), decision-based; delta 0.1, eps 1.0, 500 iterations")
def _boundary(clf, eps, p):
    from art.attacks.evasion import BoundaryAttack

    return BoundaryAttack(clf, targeted=False, delta=p["delta"], epsilon=p["epsilon"], max_iter=p["max_iter"],
                          num_trial=p["num_trial"], init_size=p["init_size"], verbose=False)


@_register("cw_l2", defaults={"max_iter": 10, "binary_search_steps": 10, "learning_rate": 0.01,
                              "initial_const": 1.0, "confidence": 0.0},
           norm="l2", uses_eps=False, black_box=False,
           description="Carlini-Wagner L2: 10 iterations, 10 binary-search steps (initial const 1.0)")
def _cw_l2(clf, eps, p):
    from art.attacks.evasion import CarliniL2Method

    return CarliniL2Method(clf, confidence=p["confidence"], learning_rate=p["learning_rate"],
                           binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                           initial_const=p["initial_const"], batch_size=32, verbose=False)


@_register("cw_linf", defaults={"max_iter": 10, "learning_rate": 0.01, "confidence": 0.0}, norm="linf",
           uses_eps=False, black_box=False, description="Carlini-Wagner Linf: 10 iterations, learning rate 0.01")
def _cw_linf(clf, eps, p):
    from art.attacks.evasion import CarliniLInfMethod

    return CarliniLInfMethod(clf, confidence=p["confidence"], learning_rate=p["learning_rate"],
                             max_iter=p["max_iter"], batch_size=32, verbose=False)


@_register("deepfool", defaults={"max_iter": 100, "overshoot": 0.008, "nb_grads": 10}, norm="l2", uses_eps=False,
           black_box=False,
           description="DeepFool (minimal L2 perturbation: the boundary distance); 100 iterations, overshoot 0.008")
def _deepfool(clf, eps, p):
    from art.attacks.evasion import DeepFool

    return DeepFool(clf, max_iter=p["max_iter"], epsilon=p["overshoot"], nb_grads=p["nb_grads"], batch_size=32,
                    verbose=False)


@_register("ead", defaults={"max_iter": 10, "binary_search_steps": 10, "beta": 0.001, "learning_rate": 0.01,
                            "initial_const": 1.0},
           norm="l1", uses_eps=False, black_box=False,
           description="Elastic-net attack (EAD): 10 iterations, 10 binary-search steps (initial const 1.0)")
def _ead(clf, eps, p):
    from art.attacks.evasion import ElasticNet

    return ElasticNet(clf, learning_rate=p["learning_rate"], binary_search_steps=p["binary_search_steps"],
                      max_iter=p["max_iter"], beta=p["beta"], initial_const=p["initial_const"], batch_size=32,
                      verbose=False)


@_register("geoda", defaults={"sub_dim": 75, "bin_search_tol": 1e-4, "max_iter": 500}, norm="l2", uses_eps=False,
           black_box=True, description="GeoDA (decision-based, geometric): sub_dim 75, tolerance 1e-4, 500 queries")
def _geoda(clf, eps, p):
    from art.attacks.evasion import GeoDA

    if round(p["max_iter"] / 500) < 1:  # ART splits the queries into round(max_iter / 500) rounds
        raise ConfigError(f"geoda needs max_iter > 250 (ART's GeoDA splits its queries into rounds of about 500), "
                          f"got {p['max_iter']}")
    with _numpy_mat():
        return GeoDA(clf, norm=2, sub_dim=p["sub_dim"], max_iter=p["max_iter"], bin_search_tol=p["bin_search_tol"],
                     batch_size=32, verbose=False)


@_register("jsma", defaults={"theta": 0.08, "gamma": 1.0}, norm="l0", uses_eps=False, black_box=False,
           description="Jacobian saliency-map attack (L0): gamma 1.0, theta 0.08")
def _jsma(clf, eps, p):
    from art.attacks.evasion import SaliencyMapMethod

    return SaliencyMapMethod(clf, theta=p["theta"], gamma=p["gamma"], batch_size=32, verbose=False)


@_register("pgd", defaults={"max_iter": 20, "restarts": 20, "step_fraction": 0.1}, norm="linf", uses_eps=True,
           black_box=False,
           description="PGD Linf: 20 restarts x 20 iterations, step eps/10; paper eps 0.0002..0.008")
def _pgd(clf, eps, p):
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=eps * p["step_fraction"],
                                    max_iter=p["max_iter"], num_random_init=p["restarts"], batch_size=32,
                                    verbose=False)


@_register("square_l2", defaults={"max_iter": 2000, "p_init": 0.8}, norm="l2", uses_eps=True, black_box=True,
           description="Square attack L2 (score-based): paper eps 1.0, 2000 iterations")
def _square_l2(clf, eps, p):
    from art.attacks.evasion import SquareAttack

    return SquareAttack(clf, norm=2, eps=eps, max_iter=p["max_iter"], p_init=p["p_init"], verbose=False)


@_register("square_linf", defaults={"max_iter": 1000, "p_init": 0.8}, norm="linf", uses_eps=True, black_box=True,
           description="Square attack Linf (score-based): paper eps 0.015, 1000 iterations")
def _square_linf(clf, eps, p):
    from art.attacks.evasion import SquareAttack

    return SquareAttack(clf, norm=np.inf, eps=eps, max_iter=p["max_iter"], p_init=p["p_init"], verbose=False)


@_register("zoo", defaults={"max_iter": 10, "binary_search_steps": 5, "learning_rate": 0.01, "initial_const": 0.001,
                            "nb_parallel": 128},
           norm="l2", uses_eps=False, black_box=True,
           description="ZOO (zeroth-order, score-based): 10 iterations, 5 binary-search steps, batch size 1")
def _zoo(clf, eps, p):
    from art.attacks.evasion import ZooAttack

    return ZooAttack(clf, max_iter=p["max_iter"], binary_search_steps=p["binary_search_steps"],
                     learning_rate=p["learning_rate"], initial_const=p["initial_const"],
                     nb_parallel=p["nb_parallel"], batch_size=1, use_resize=False, use_importance=False,
                     verbose=False)


# ---- running ----------------------------------------------------------------------------------------------------
def predict(model: nn.Module, images: torch.Tensor, *, device: str | torch.device | None = None,
            preprocess: nn.Module | None = None, batch: int = 500, pixel: bool = False) -> np.ndarray:
    """Predicted classes of ``model`` (normalized inputs, or ``pixel``) on pixel-space ``images``."""
    from ..evaluate import resolve_device

    dev = resolve_device(device)
    net = (model if pixel else PixelModel(model, preprocess=preprocess)).to(dev).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(net(torch.as_tensor(images[i:i + batch]).to(dev)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _seed(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def craft(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig, *,
          device: str | torch.device | None = None, preprocess: nn.Module | None = None, chunk: int = 0,
          pixel: bool = False) -> np.ndarray:
    """Adversarial examples of ``images`` (pixel space) for ``model`` under ``config`` (untargeted, on the true
    labels); seeded by (config.seed, chunk)."""
    x = check_images(images).numpy()
    y = np.asarray(labels, dtype=np.int64)
    clf = art_classifier(model, device=device, preprocess=preprocess, pixel=pixel,
                         input_shape=tuple(x.shape[1:]), num_classes=_classes(model, x, device, pixel))
    spec = config.spec
    attack = spec.build(clf, float(config.eps) if config.eps is not None else None, config.resolved)
    if hasattr(attack, "set_params") and "batch_size" in getattr(attack, "attack_params", ()) and spec.name != "zoo":
        attack.set_params(batch_size=config.batch_size)
    _seed(config.seed * 1_000_003 + chunk)
    # untargeted attacks take the true labels; JSMA is targeted in ART: without y it draws a random target class
    # other than the prediction (from the seeded numpy RNG)
    onehot = None if spec.name == "jsma" else np.eye(clf.nb_classes, dtype=np.float32)[y]
    ctx = _numpy_mat() if spec.name == "geoda" else contextlib.nullcontext()
    with ctx:
        adv = attack.generate(x=x, y=onehot)
    return np.clip(np.asarray(adv, dtype=np.float32), 0.0, 1.0)


def _classes(model: nn.Module, x: np.ndarray, device, pixel: bool) -> int:
    with torch.no_grad():
        net = model if pixel else PixelModel(model)
        p = next(net.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        return int(net.eval()(torch.as_tensor(x[:1]).to(dev)).shape[1])


def distortions(x: np.ndarray | torch.Tensor, x_adv: np.ndarray | torch.Tensor, tol: float = 1e-6
                ) -> dict[str, np.ndarray]:
    """Per image, the norms of ``x_adv - x``: L0 (entries changed by more than ``tol``), L1, L2, Linf."""
    d = (np.asarray(x_adv, dtype=np.float64) - np.asarray(x, dtype=np.float64)).reshape(len(x), -1)
    a = np.abs(d)
    return {"l0": (a > tol).sum(1).astype(np.float64), "l1": a.sum(1), "l2": np.sqrt((d * d).sum(1)),
            "linf": a.max(1) if d.shape[1] else np.zeros(len(x))}


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig, *,
               source: nn.Module | None = None, device: str | torch.device | None = None,
               preprocess: nn.Module | None = None, craft_preprocess: nn.Module | None = None, chunk: int = 0
               ) -> list[dict[str, Any]]:
    """Attack ``model`` on ``images`` and return one record per image.

    Args:
        model: The target (normalized inputs; a float model or a quantized copy).
        images, labels: Pixel-space images in [0, 1] and their labels.
        config: The attack and its budget.
        source: Craft on this model instead (transfer setting); the target only classifies the result.
        preprocess: A pixel-space defense in front of the target when it classifies (clean and adversarial).
        craft_preprocess: A pixel-space defense the attacker sees while crafting (adaptive setting; its
            non-differentiable parts pass gradients straight through). Default: none (oblivious attacker).
        chunk: Index of this chunk of images (seeds the attack).

    Returns:
        Records ``{"label", "clean", "adv", "l0", "l1", "l2", "linf"}``: the target's predictions and the
        distortion of the adversarial example.
    """
    x = check_images(images)
    y = torch.as_tensor(labels).long()
    adv = craft(source if source is not None else model, x, y, config, device=device, preprocess=craft_preprocess,
                chunk=chunk)
    clean = predict(model, x, device=device, preprocess=preprocess)
    advp = predict(model, torch.from_numpy(adv), device=device, preprocess=preprocess)
    dist = distortions(x.numpy(), adv)
    return [{"label": int(y[i]), "clean": int(clean[i]), "adv": int(advp[i]),
             **{k: float(v[i]) for k, v in dist.items()}} for i in range(len(x))]


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Clean and robust accuracy (%) over all images, the attack success rate on the correctly classified ones,
    and the median distortion (L0, L1, L2, Linf) of the successful examples (None when none succeeded)."""
    n = len(records)
    correct = [r for r in records if r["clean"] == r["label"]]
    success = [r for r in correct if r["adv"] != r["label"]]
    med = {k: (float(np.median([r[k] for r in success])) if success else None) for k in ("l0", "l1", "l2", "linf")}
    return {"images": n, "clean_accuracy": 100.0 * len(correct) / n if n else 0.0,
            "robust_accuracy": 100.0 * sum(r["adv"] == r["label"] for r in records) / n if n else 0.0,
            "success_rate": 100.0 * len(success) / len(correct) if correct else 0.0,
            "successful": len(success), "median_distortion": med}


def gradient_cosine(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                    device: str | torch.device | None = None, batch: int = 100) -> np.ndarray:
    """Per image, the cosine similarity of the input gradients of the cross-entropy of two models (pixel space;
    a quantized model's are its straight-through ones): the paper's gradient misalignment. A zero gradient gives
    a cosine of 0."""
    from ..evaluate import resolve_device

    dev = resolve_device(device)
    x = check_images(images)
    y = torch.as_tensor(labels).long()

    def grads(m: nn.Module) -> torch.Tensor:
        net = PixelModel(m).to(dev).eval()
        out = []
        for i in range(0, len(x), batch):
            xi = x[i:i + batch].to(dev).requires_grad_(True)
            loss = nn.functional.cross_entropy(net(xi), y[i:i + batch].to(dev), reduction="sum")
            (g,) = torch.autograd.grad(loss, xi)
            out.append(g.flatten(1).double().cpu())
        return torch.cat(out)

    ga, gb = grads(model_a), grads(model_b)
    denom = ga.norm(dim=1) * gb.norm(dim=1)
    cos = torch.where(denom > 0, (ga * gb).sum(1) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return cos.numpy()
