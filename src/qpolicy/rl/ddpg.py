"""DDPG (Lillicrap et al. 2016) as HAQ uses it for bit allocation (and ARQ after it).

* Actor ``mu(s) -> a in [0, 1]`` (two hidden ReLU layers, sigmoid output), critic ``Q(s, a)``, and slowly tracking
  target copies of both (soft update with rate ``tau``).
* Every transition of an episode is stored with the **episode's final reward** (HAQ: the reward only exists once
  the whole policy is known); the critic regresses ``r - b + discount * Q'(s', mu'(s'))`` (0 after the last step)
  where ``b`` is a moving average of rewards (HAQ's baseline), the actor ascends ``Q(s, mu(s))``.
* Exploration: ``warmup`` episodes of uniform random actions, then the actor's action plus truncated normal noise
  on [0, 1] whose standard deviation starts at ``noise`` and decays by ``noise_decay`` each episode.

All randomness comes from one numpy generator (saved in :meth:`state_dict`) and the networks' seeded
initialization, so a resumed search continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validate import require_ints, require_numbers
from ..errors import ConfigError

__all__ = ["DDPGConfig", "DDPG"]


@dataclass(frozen=True, kw_only=True)
class DDPGConfig:
    """Agent hyper-parameters (HAQ's defaults, except a smaller replay buffer and warm-up for short searches).

    Args:
        hidden1, hidden2: Hidden widths of actor and critic (HAQ: 400, 300).
        actor_lr, critic_lr: Adam learning rates (HAQ: 1e-4, 1e-3).
        tau: Soft target update rate (HAQ: 0.01).
        discount: Discount between steps of an episode (HAQ: 1.0).
        batch_size: Transitions per update (HAQ: 64).
        buffer: Replay buffer capacity in transitions.
        warmup: Episodes of random actions before the actor acts and learns (HAQ: 100 of 600).
        noise: Initial exploration standard deviation (HAQ: 0.5).
        noise_decay: Its factor per episode after warm-up (HAQ: 0.99).
        baseline_decay: Moving-average factor of the reward baseline (HAQ: 0.95).
        seed: Seeds initialization, exploration and replay sampling.
    """

    hidden1: int = 400
    hidden2: int = 300
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    buffer: int = 5000
    warmup: int = 10
    noise: float = 0.5
    noise_decay: float = 0.99
    baseline_decay: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        require_ints(self, ("hidden1", "hidden2", "batch_size", "buffer"), minimum=1)
        require_ints(self, ("warmup", "seed"), minimum=0)
        require_numbers(self, ("actor_lr", "critic_lr", "tau", "noise_decay"), positive=True)
        require_numbers(self, ("discount", "noise", "baseline_decay"), positive=False)
        for k in ("tau", "discount", "noise_decay", "baseline_decay"):
            if getattr(self, k) > 1:
                raise ConfigError(f"{k} must be at most 1, got {getattr(self, k)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _mlp(inp: int, h1: int, h2: int, out: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(inp, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1)]
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


class DDPG:
    """The agent (module docs). ``act`` for one state, ``remember`` for an episode, ``update`` for one step."""

    def __init__(self, state_dim: int, config: DDPGConfig | None = None):
        self.config = c = config or DDPGConfig()
        self.state_dim = int(state_dim)
        with torch.random.fork_rng(devices=[]):  # seeded initialization, the caller's RNG untouched
            torch.manual_seed(c.seed)
            self.actor = _mlp(state_dim, c.hidden1, c.hidden2, nn.Sigmoid())
            self.critic = _mlp(state_dim + 1, c.hidden1, c.hidden2, None)
            self.actor_target = _mlp(state_dim, c.hidden1, c.hidden2, nn.Sigmoid())
            self.critic_target = _mlp(state_dim + 1, c.hidden1, c.hidden2, None)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.rng = np.random.default_rng(c.seed)
        self.buffer = np.zeros((c.buffer, 2 * state_dim + 3), dtype=np.float32)  # s, a, r, s', done
        self.size = self.pos = 0
        self.baseline: float | None = None

    def act(self, state: list[float], episode: int) -> float:
        """The exploring action of ``episode`` (0-based): random during warm-up, then actor + decaying noise."""
        c = self.config
        if episode < c.warmup:
            return float(self.rng.uniform(0.0, 1.0))
        with torch.no_grad():
            mu = float(self.actor(torch.tensor([state], dtype=torch.float32))[0, 0])
        sd = c.noise * c.noise_decay ** (episode - c.warmup)
        if sd <= 0:
            return mu
        for _ in range(100):  # truncated normal on [0, 1] by rejection
            a = self.rng.normal(mu, sd)
            if 0.0 <= a <= 1.0:
                return float(a)
        return float(min(max(mu, 0.0), 1.0))

    def greedy(self, state: list[float]) -> float:
        with torch.no_grad():
            return float(self.actor(torch.tensor([state], dtype=torch.float32))[0, 0])

    def remember(self, transitions: list[tuple[list[float], float, list[float], bool]], reward: float) -> None:
        """Store an episode's transitions ``(s, a, s', done)``, each with the episode's final ``reward``."""
        d = self.state_dim
        for s, a, s2, done in transitions:
            row = self.buffer[self.pos]
            row[:d], row[d], row[d + 1], row[d + 2:2 * d + 2], row[2 * d + 2] = s, a, reward, s2, float(done)
            self.pos = (self.pos + 1) % len(self.buffer)
            self.size = min(self.size + 1, len(self.buffer))

    def update(self) -> tuple[float, float]:
        """One critic and actor step on a replay minibatch; returns (critic loss, actor objective)."""
        c, d = self.config, self.state_dim
        if self.size == 0:
            return 0.0, 0.0
        idx = self.rng.integers(0, self.size, size=min(c.batch_size, self.size))
        b = torch.from_numpy(self.buffer[idx])
        s, a, r, s2, done = b[:, :d], b[:, d:d + 1], b[:, d + 1:d + 2], b[:, d + 2:2 * d + 2], b[:, 2 * d + 2:]
        mean_r = float(r.mean())
        self.baseline = mean_r if self.baseline is None else \
            c.baseline_decay * self.baseline + (1 - c.baseline_decay) * mean_r
        with torch.no_grad():
            target = (r - self.baseline) + c.discount * (1 - done) * self.critic_target(
                torch.cat([s2, self.actor_target(s2)], 1))
        q = self.critic(torch.cat([s, a], 1))
        critic_loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_obj = self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_opt.zero_grad()
        (-actor_obj).backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, pt in zip(net.parameters(), tgt.parameters(), strict=True):
                    pt.mul_(1 - c.tau).add_(p, alpha=c.tau)
        return float(critic_loss.detach()), float(actor_obj.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "buffer": torch.from_numpy(self.buffer.copy()), "size": self.size, "pos": self.pos,
                "baseline": self.baseline, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("actor", "critic", "actor_target", "critic_target"):
            getattr(self, k).load_state_dict(state[k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.buffer = state["buffer"].numpy().copy()
        self.size, self.pos, self.baseline = int(state["size"]), int(state["pos"]), state["baseline"]
        self.rng = _rng_from(state["rng"])


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state  # PCG64: 128-bit ints, kept as decimal text for a weights-only checkpoint
    return {"state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]), "has_uint32": st["has_uint32"],
            "uinteger": st["uinteger"]}


def _rng_from(saved: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": int(saved["state"]),
                                                                   "inc": int(saved["inc"])},
                               "has_uint32": saved["has_uint32"], "uinteger": saved["uinteger"]}
    return rng
