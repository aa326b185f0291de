import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qpolicy.budget import Budget
from qpolicy.errors import ConfigError, InfeasibleBudgetError
from qpolicy.layers import LayerInfo
from qpolicy.rl.ddpg import DDPG, DDPGConfig
from qpolicy.rl.env import STATE_DIM, BitEnv


def _layers(n=5):
    out = []
    for i in range(n):
        c = 16 * (1 + i // 2)
        out.append(LayerInfo(name=f"l{i}", kind="conv" if i < n - 1 else "linear", params=c * c * 9 + i,
                             macs=c * c * 9 * 64 * (4 - i // 2), in_shape=(c, 8, 8), out_shape=(c, 8, 8), order=i))
    return out


def test_ddpg_learns_a_bandit():
    """One-step episodes, reward peaked at a = 0.7: after training the actor's action is near 0.7."""
    agent = DDPG(3, DDPGConfig(hidden1=32, hidden2=32, actor_lr=3e-3, critic_lr=3e-3, warmup=30, noise=0.3,
                               noise_decay=0.99, batch_size=32, seed=1))
    s = [0.5, 0.1, 0.9]
    for ep in range(250):
        a = agent.act(s, ep)
        agent.remember([(s, a, s, True)], 1.0 - 4 * (a - 0.7) ** 2)
        if ep >= agent.config.warmup:
            for _ in range(4):
                agent.update()
    assert abs(agent.greedy(s) - 0.7) < 0.1


def test_ddpg_state_round_trip_continues_identically():
    cfg = DDPGConfig(hidden1=8, hidden2=8, warmup=2, batch_size=4, seed=3)
    a, s = DDPG(2, cfg), [0.2, 0.3]
    for ep in range(4):
        a.remember([(s, a.act(s, ep), s, True)], float(ep))
        a.update()
    b = DDPG(2, cfg)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as a checkpoint would: no shared tensors
    for ep in range(4, 7):
        x, y = a.act(s, ep), b.act(s, ep)
        assert x == y
        a.remember([(s, x, s, True)], 1.0)
        b.remember([(s, y, s, True)], 1.0)
        assert a.update() == b.update()


def test_env_steps_state_and_action_mapping():
    env = BitEnv(_layers(), Budget(bitops=1.0).limits(_layers()), weight_bits=(2, 4, 8), act_bits=(4, 8))
    assert len(env.steps) == 3 * 2  # first/last fixed, weight and act steps for the 3 middle layers
    s = env.reset()
    assert len(s) == STATE_DIM and all(0 <= v <= 1 for v in s)
    assert [env.bits_of(0, a) for a in (0.0, 0.33, 0.34, 0.67, 1.0)] == [2, 2, 4, 8, 8]
    done = False
    while not done:
        s, done = env.step(1.0)
    pol, lowered = env.finish()
    assert lowered == 0 and pol["l0"] == (8, 8) and pol["l2"] == (8, 8)
    env = BitEnv(_layers(), Budget(bitops=1.0).limits(_layers()), weight_bits=(2, 4, 8), act_bits=4)
    assert all(st.side == 0 for st in env.steps) and len(env.steps) == 3


@settings(max_examples=60, deadline=None)
@given(actions=st.lists(st.floats(0, 1), min_size=8, max_size=8), rel=st.floats(0.05, 1.2),
       key=st.sampled_from(["bitops", "size", "wbits"]))
def test_action_wall_always_meets_the_budget(actions, rel, key):
    layers = _layers()
    budget = Budget(**{key: rel * (8 if key == "wbits" else 1)})
    try:
        env = BitEnv(layers, budget.limits(layers), weight_bits=(2, 3, 4, 6, 8), act_bits=(2, 4, 8))
    except InfeasibleBudgetError:
        return
    env.reset()
    for a in actions[:len(env.steps)]:
        env.step(a)
    pol, _ = env.finish()
    assert env.fits(pol)


def test_env_rejects_impossible_budgets_and_bad_bits():
    layers = _layers()
    with pytest.raises(InfeasibleBudgetError, match="lowest bits"):
        BitEnv(layers, Budget(bitops=0.01).limits(layers), weight_bits=(2, 8), act_bits=(2, 8))
    with pytest.raises(ConfigError, match="bit"):
        BitEnv(layers, Budget(bitops=1).limits(layers), weight_bits=(1, 8), act_bits=8)
