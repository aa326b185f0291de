"""ARQ (Yang, Ugare, Zhao, Singh and Misailovic): a mixed-precision search that keeps the clean accuracy and the
certified robustness of a randomized-smoothing classifier, by reinforcement learning as in HAQ.

An episode walks the layers (:class:`~qpolicy.rl.env.BitEnv`), the DDPG agent (:class:`~qpolicy.rl.ddpg.DDPG`)
picks each searched side's bits, the action wall brings the policy within the BitOPs (or any) budget, and the policy
is rewarded by its smoothed classifier on ``val_images`` validation images (never test; ``select_on="select"``:
the 'select' half of the test split, for a base trained on the validation images, and the final certificate on the
'report' half):

* the noise-trained float model is certified once on those images (:mod:`qpolicy.robust.smoothing`, ``reference_n``
  samples, recording its classes on the first ``n_p``): its smoothed clean accuracy ``acc_fp`` and ACR ``acr_fp``;
* each policy's PTQ copy (calibrated on noisy training images, as the base was trained) is certified incrementally
  from that reference (:mod:`qpolicy.robust.irs`, ``n_p`` shared-noise samples per image, no fallback: an image IRS
  cannot certify counts as abstained), giving ``acc_q`` and ``acr_q``;
* **reward** ``R = w * (acc_q - acc_fp) / acc_fp + (1 - w) * (acr_q - acr_fp) / acr_fp`` with ``w = reward_weight``
  (0.5): the relative loss of clean accuracy and of ACR, weighted equally. The paper does not state its formula;
  this is our documented choice (0 = as good as full precision; IRS makes ``acr_q <= acr_fp``).

The best-rewarded policy of all episodes is returned. The search is checkpointed after every episode (agent,
replay buffer, random state, history, measured policies) and ``resume`` continues it exactly.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_torch_save, write_json
from .._validate import require_ints, require_probability
from ..budget import Budget
from ..costs import policy_cost
from ..errors import CheckpointError, ConfigError
from ..layers import quantizable_layers
from ..policy import LayerBits, Policy, versions
from ..progress import progress
from ..quant.apply import apply_policy
from ..quant.fake_quant import CalibConfig
from ..search.base import SearchResult
from ..train import CHECKPOINT_NAME, load_checkpoint
from .ddpg import DDPG, DDPGConfig
from .env import BitEnv

__all__ = ["ARQConfig", "search_arq", "arq_reward", "REWARD"]

log = logging.getLogger(__name__)
REWARD = ("R = w * (acc_q - acc_fp) / acc_fp + (1 - w) * (acr_q - acr_fp) / acr_fp; acc: smoothed clean accuracy, "
          "acr: average certified radius, on the validation images; q: the policy by incremental smoothing from "
          "the float model's certificates (no fallback), fp: the noise-trained float model")
_FORMAT = "qpolicy.checkpoint.arq"


SELECT_SPLITS = {"val": "test", "select": "report"}  # where ARQ rewards policies -> where it certifies the result


def arq_reward(acc: float, acr: float, acc_fp: float, acr_fp: float, weight: float) -> float:
    """The reward of :data:`REWARD`: the weighted relative losses of smoothed clean accuracy and ACR."""
    return weight * (acc - acc_fp) / acc_fp + (1 - weight) * (acr - acr_fp) / acr_fp


@dataclass(frozen=True, kw_only=True)
class ARQConfig:
    """ARQ settings (module docs). Defaults are sized for a CPU; the paper's scale is far larger.

    Args:
        episodes: Episodes in total, warm-up included.
        val_images: Validation images rewarding each policy.
        select_on: Where those images come from: "val" (the validation split; the final certificate on "test") or
            "select" (half of the test split, for a base whose training set held the validation images: the
            published CIFAR ResNets; the final certificate on the other half, "report").
        reference_n: Samples certifying the float model on them (n0 = 100).
        n_p: Shared-noise samples per image for a policy's incremental certificate.
        alpha: Failure probability of each bound.
        reward_weight: ``w`` of the reward (clean accuracy vs ACR).
        calib_batches, bn_batches: Calibration batches (128 noisy training images) for each policy's PTQ: the
            same PTQ in the search and in the final policy's test certificate (:meth:`calib_config`).
        test_images: Test images certifying the final policy (0: none), with ``test_n`` samples.
        test_n: Samples per test image for that certificate (n0 = 100).
        ddpg: Agent hyper-parameters (its ``seed`` is this config's ``seed``).
        seed: Seeds the agent and the noise.
    """

    episodes: int = 30
    val_images: int = 40
    select_on: str = "val"
    reference_n: int = 2000
    n_p: int = 300
    alpha: float = 0.001
    reward_weight: float = 0.5
    calib_batches: int = 8
    bn_batches: int = 32
    test_images: int = 100
    test_n: int = 1000
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("episodes", "val_images", "reference_n", "n_p", "calib_batches", "bn_batches"),
                     minimum=1)
        require_ints(self, ("test_images", "seed"), minimum=0)
        if self.select_on not in SELECT_SPLITS:
            raise ConfigError(f"select_on must be one of {', '.join(SELECT_SPLITS)} (the images ARQ rewards "
                              f"policies on), got {self.select_on!r}")
        require_ints(self, ("test_n",), minimum=100)
        require_probability(self, ("alpha",))
        if isinstance(self.reward_weight, bool) or not isinstance(self.reward_weight, (int, float)) or \
                not 0 <= self.reward_weight <= 1:
            raise ConfigError(f"reward_weight must be in [0, 1], got {self.reward_weight!r}")
        if self.n_p > self.reference_n:
            raise ConfigError(f"n_p ({self.n_p}) must not exceed reference_n ({self.reference_n})")
        if not isinstance(self.ddpg, DDPGConfig):
            raise ConfigError("ddpg must be a DDPGConfig")

    def calib_config(self) -> CalibConfig:
        """The PTQ of every policy ARQ measures, and of the policy it returns."""
        return CalibConfig(batches=self.calib_batches, bn_batches=self.bn_batches, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ddpg"}
        d["ddpg"] = self.ddpg.to_dict()
        return d


def _resumable(settings: dict[str, Any]) -> dict[str, Any]:
    """What must match to resume: everything but the number of episodes (a search may be extended)."""
    return {**settings, "config": {k: v for k, v in settings.get("config", {}).items() if k != "episodes"}}


def _key(assignment: dict[str, tuple[int, int]]) -> str:
    return hashlib.sha1(json.dumps(sorted(assignment.items())).encode()).hexdigest()[:16]


def search_arq(model: nn.Module, budget: Budget, *, calib: Iterable[Any], out_dir: str | os.PathLike,
               sigma: float | None = None, config: ARQConfig | None = None,
               act_bits: Sequence[int] | int | None = None, weight_bits: Sequence[int] | None = None,
               first_last: int | None = 8, tie: str = "act", resume: bool = False, device: str | None = None,
               model_name: str | None = None, data_dir: str | os.PathLike | None = None,
               workers: int | None = None, address: str | None = None) -> SearchResult:
    """ARQ's search (module docs) on a noise-trained float ``model`` (not modified).

    Args:
        model: The noise-trained float model (``model.noise_sigma`` gives ``sigma`` when not passed).
        budget: Limits the policy must meet (ARQ: BitOPs).
        calib: Clean calibration batches (:func:`qpolicy.data.calib_loader`); noise is added here.
        out_dir: Run folder: ``checkpoint.pt``, ``reference/`` (float certificates), ``test/`` (the final
            policy's test certificate), ``policy.json``, ``search.json``.
        sigma: Smoothing noise (pixel units).
        config: :class:`ARQConfig`.
        act_bits, weight_bits: Candidate bits (default 2, 3, 4, 5, 6, 8; one integer holds that side fixed).
        first_last: Bits of the first and last layer (None: searched).
        tie: "act" or "none".
        resume: Continue the run in ``out_dir``.
        workers, address: Certify images on a local Ray with this many CPUs or on the Ray cluster at this address
            (:func:`qpolicy.runner.run_many`): the float reference, every episode's policy and the final test
            certificate. Episodes stay in order (the agent learns from each before the next), and the results
            equal the serial ones.
    """
    from ..robust.certify import certify_model, pixel_images, spaced_indices, split_size
    from ..robust.irs import IncrementalCertifier, IRSConfig
    from ..robust.noise import NoisyBatches, check_sigma
    from ..robust.smoothing import Smooth, SmoothConfig, certify_dataset, certify_records, summarize
    from ..runner import check_address, check_workers, ray_session

    config = config or ARQConfig()
    workers, address = check_workers(workers), check_address(address)
    sigma = check_sigma(sigma if sigma is not None else getattr(model, "noise_sigma", None) or 0.0,
                        "sigma (the model carries no noise_sigma: pass sigma)")
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path} exists: resume it (--resume) or choose another output folder")
    with ray_session(workers, address):  # one Ray runtime for every episode
        t0 = time.perf_counter()
        layers = quantizable_layers(model)
        bits = (2, 3, 4, 5, 6, 8)
        env = BitEnv(layers, budget.limits(layers, without_latency="arq"), weight_bits=weight_bits or bits,
                     act_bits=act_bits if act_bits is not None else bits, first_last=first_last, tie=tie)
        settings = {"config": config.to_dict(), "budget": budget.to_dict(), "sigma": sigma,
                    "weight_bits": list(env.bits[0]), "act_bits": list(env.bits[1]), "first_last": first_last,
                    "tie": tie}
        settings = json.loads(json.dumps(settings))
        noisy_calib = NoisyBatches(calib, sigma, seed=config.seed)
        calib_config = config.calib_config()

        # the float model's certificates on the validation images (resumable on its own)
        n_val = split_size(config.select_on, data_dir)
        positions = spaced_indices(n_val, config.val_images)
        imgs, labels, file_idx = pixel_images(config.select_on, positions, data_dir=data_dir)
        ref_cfg = SmoothConfig(sigma=sigma, n0=100, n=config.reference_n, alpha=config.alpha, seed=config.seed)
        smooth_fp = Smooth(model, 10, sigma, device=device)
        ref_dir = out / "reference"
        reference = certify_dataset(smooth_fp, imgs, labels, file_idx, ref_cfg, out_dir=ref_dir,
                                    resume=(ref_dir / "certify.json").exists(), record=config.n_p,
                                    meta={"model": model_name, "split": config.select_on, "method": "rs",
                                          "policy": None},
                                    workers=workers, address=address)
        fp = reference["summary"]
        acc_fp, acr_fp = fp["clean_accuracy"], fp["acr"]
        if acc_fp <= 0 or acr_fp <= 0:
            raise ConfigError(f"the float model's smoothed classifier certifies nothing on the validation images "
                              f"(clean accuracy {acc_fp:.1f}%, ACR {acr_fp:.3f}): is it noise-trained at "
                              f"sigma={sigma:g}?")
        irs_cfg = IRSConfig(n_p=config.n_p, alpha=config.alpha, fallback=False)

        def to_policy(assignment: dict[str, tuple[int, int]], **prov: Any) -> Policy:
            return Policy(layers={n: LayerBits(weight_bits=w, act_bits=a) for n, (w, a) in assignment.items()},
                          model=model_name, provenance=prov)

        def measure(assignment: dict[str, tuple[int, int]]) -> dict[str, Any]:
            t = time.perf_counter()
            q = apply_policy(model, to_policy(assignment), calib=noisy_calib, config=calib_config)
            smooth = Smooth(q, 10, sigma, device=device)
            smooth.base.to(smooth.device)
            irs = IncrementalCertifier(smooth, reference, irs_cfg)
            s = summarize(certify_records(imgs, labels, file_idx, certify_one=irs.certify, workers=workers,
                                          address=address))
            reward = arq_reward(s["clean_accuracy"], s["acr"], acc_fp, acr_fp, config.reward_weight)
            return {"reward": reward, "val_clean_accuracy": s["clean_accuracy"], "val_acr": s["acr"],
                    "samples": s["samples"], "seconds": time.perf_counter() - t}

        agent = DDPG(env.state_dim, DDPGConfig(**{**config.ddpg.to_dict(), "seed": config.seed}))
        episode, history, measured, best = 0, [], {}, None
        if resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path, fmt=_FORMAT, what="ARQ search")
            if _resumable(ckpt.get("settings", {})) != _resumable(settings):
                raise CheckpointError(f"{ckpt_path} was made with other settings; resume with the same settings or "
                                      "choose another output folder")
            agent.load_state_dict(ckpt["agent"])
            episode, history, measured, best = int(ckpt["episode"]), list(ckpt["history"]), dict(ckpt["measured"]), \
                ckpt["best"]
            log.info("resuming ARQ at episode %d of %d", episode, config.episodes)

        for ep in progress(range(episode, config.episodes), desc="arq episodes", total=config.episodes - episode):
            s, transitions, done = env.reset(), [], not env.steps
            while not done:
                a = agent.act(s, ep)
                s2, done = env.step(a)
                transitions.append((s, a, s2, done))
                s = s2
            assignment, lowered = env.finish()
            key = _key(assignment)
            cached = key in measured
            if not cached:
                measured[key] = measure(assignment)
            m = measured[key]
            agent.remember(transitions, m["reward"])
            if ep >= config.ddpg.warmup:
                for _ in range(len(transitions)):
                    agent.update()
            cost = policy_cost(layers, to_policy(assignment))
            rec = {"episode": ep + 1, "reward": m["reward"], "val_clean_accuracy": m["val_clean_accuracy"],
                   "val_acr": m["val_acr"], "bitops_rel_w8a8": cost.bitops_rel_w8a8,
                   "size_rel_w8a8": cost.size_rel_w8a8,
                   "wall_lowered": lowered, "cached": cached, "seconds": m["seconds"],
                   "policy": {n: list(v) for n, v in assignment.items()}}
            history.append(rec)
            if best is None or m["reward"] > best["reward"]:
                best = rec
            log.info("episode %d: reward %.4f (val smoothed accuracy %.1f%%, ACR %.3f), BitOPs %.3f of W8A8%s",
                     ep + 1, m["reward"], m["val_clean_accuracy"], m["val_acr"], cost.bitops_rel_w8a8,
                     f", wall lowered {lowered}" if lowered else "")
            atomic_torch_save({"format": _FORMAT, "version": 1, "settings": settings, "agent": agent.state_dict(),
                               "episode": ep + 1, "history": history, "measured": measured, "best": best}, ckpt_path)
        if best is None:
            raise ConfigError("episodes must be at least 1")
        assignment = {n: tuple(v) for n, v in best["policy"].items()}
        cost = policy_cost(layers, to_policy(assignment))
        seconds = time.perf_counter() - t0
        provenance = {
            "method": "search", "metric": "smoothed-accuracy+acr", "strategy": "arq", "budget": budget.to_dict(),
            "candidates": {"weight_bits": list(env.bits[0]), "act_bits": list(env.bits[1])}, "first_last": first_last,
            "tie": tie, "seed": config.seed, "cost": cost.to_dict(per_layer=False),
            "arq": {"reward": REWARD, "reward_weight": config.reward_weight, "sigma": sigma,
                    "episodes": config.episodes, "best_episode": best["episode"], "best_reward": best["reward"],
                    "val_images": config.val_images, "select_on": config.select_on,
                    "val_clean_accuracy": best["val_clean_accuracy"],
                    "val_acr": best["val_acr"], "fp_val_clean_accuracy": acc_fp, "fp_val_acr": acr_fp,
                    "reference_n": config.reference_n, "n_p": config.n_p, "alpha": config.alpha,
                    "calib": calib_config.to_dict(),
                    "distinct_policies_measured": len(measured),
                    "noise_weights": getattr(model, "noise_weights", None)},
            "search_seconds": seconds,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "versions": versions()}
        policy = to_policy(assignment, **provenance)
        test = None
        if config.test_images:
            tcfg = SmoothConfig(sigma=sigma, n0=100, n=config.test_n, alpha=config.alpha, seed=config.seed)
            test_dir = out / "test"
            test = certify_model(model, policy, config=tcfg, out_dir=test_dir, split=SELECT_SPLITS[config.select_on],
                                 images=config.test_images,
                                 resume=(test_dir / "certify.json").exists(), calib=calib,
                                 calib_config=calib_config, device=device, model_name=model_name,
                                 workers=workers, address=address)
        policy.save(out / "policy.json")
        result = SearchResult(policy=policy, cost=cost, predicted_damage=-best["reward"], strategy="arq",
                              seconds=seconds, extra={"history": history, "reference": fp,
                                                      "test": test["summary"] if test else None,
                                                      "settings": settings})
        write_json(out / "search.json", {"format": "qpolicy.arq", "version": 1, **result.to_dict()})
        return result
