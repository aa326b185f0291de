import random

import pytest
import torch

from qpolicy.errors import CheckpointError, ConfigError, UnknownNameError
from qpolicy.policy import LayerBits, Policy
from qpolicy.quant import CalibConfig, apply_policy
from qpolicy.quant.batchquant import BatchQuantizer, batch_range
from qpolicy.supernet.mixed import build_supernet
from qpolicy.supernet.shared import QFAConfig, load_qfa, sandwich, subnet_model, train_qfa
from qpolicy.testing import TinyConvNet, random_loader

CFG = dict(weight_bits=(2, 4, 8), act_bits=(4, 8), calib_batches=1, bn_batches=1, checkpoint_every=2)


def test_sandwich_covers_the_extremes_and_draws_within_candidates():
    cands = {"a": ((8,), (8,)), "b": ((2, 4, 8), (4, 8)), "c": ((2, 3), (2, 8))}
    rng = random.Random(0)
    seen = {"b": set(), "c": set()}
    for _ in range(50):
        largest, smallest, *drawn = sandwich(rng, cands, 2)
        assert largest == {"a": (8, 8), "b": (8, 8), "c": (3, 8)}
        assert smallest == {"a": (8, 8), "b": (2, 4), "c": (2, 2)}
        assert len(drawn) == 2
        for d in drawn:
            for n in ("b", "c"):
                assert d[n][0] in cands[n][0] and d[n][1] in cands[n][1]
                seen[n].add(d[n])
    assert len(seen["b"]) == 6 and len(seen["c"]) == 4  # every pair drawn


class DiesAfter:
    """A loader that raises KeyboardInterrupt after ``n`` batches in total (a killed run)."""

    def __init__(self, data, n):
        self.data, self.n = data, n

    def __len__(self):
        return len(self.data)

    def batches(self, epoch, start=0):
        for b in self.data.batches(epoch, start):
            if self.n == 0:
                raise KeyboardInterrupt
            self.n -= 1
            yield b


def test_train_resume_equals_an_uninterrupted_run_and_subnets_work(tmp_path):
    model = TinyConvNet()
    data = random_loader(64, batch_size=16, shuffle=True)
    calib = random_loader(32, batch_size=16)
    cfg = QFAConfig(epochs=2, **CFG)
    ref = train_qfa(model, data, calib=calib, config=cfg, out_dir=tmp_path / "ref", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_qfa(model, DiesAfter(data, 5), calib=calib, config=cfg, out_dir=tmp_path / "run", device="cpu")
    res = train_qfa(model, data, calib=calib, config=cfg, out_dir=tmp_path / "run", resume=True, device="cpu")
    assert res.train.resumed_from == {"epoch": 1, "step": 0}  # the step-4 checkpoint (of 4 per epoch) is epoch 1's
    for a, b in zip(ref.supernet.state_dict().values(), res.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b  # tensors, and quantizers' extra state
    assert [h["loss"] for h in res.train.history] == [h["loss"] for h in ref.train.history]

    net, config = load_qfa(model, tmp_path / "run")
    assert config == cfg
    policy = Policy(layers={"conv1": LayerBits(weight_bits=8, act_bits=8), "dw": LayerBits(weight_bits=2, act_bits=4),
                            "pw": LayerBits(weight_bits=4, act_bits=8), "fc": LayerBits(weight_bits=8, act_bits=8)})
    x = next(iter(calib))[0]
    plain = subnet_model(net, policy, calib, config)
    assert sum(isinstance(m, BatchQuantizer) for m in plain.modules()) == 4
    # the subnet is apply_policy's model of the policy with the supernet's state
    applied = apply_policy(model, policy, calib=calib,
                           config=CalibConfig(act_quantizer="batchquant", batches=1, bn_batches=1))
    applied.load_state_dict(plain.state_dict())
    assert torch.equal(applied.eval()(x), plain(x))
    # with the same statistics, the supernet with one-hot masks computes the same as the subnet
    net.set_policy_masks(policy)
    sub = net.subnet(policy)
    assert torch.allclose(net.eval()(x), sub(x), atol=1e-6)
    net.reset_masks()
    with pytest.raises(ConfigError, match="not trained for"):
        bad = policy.replace_layers({"dw": LayerBits(weight_bits=3, act_bits=4)})
        subnet_model(net, bad, calib, config)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_qfa(model, tmp_path / "bad")


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        QFAConfig(weight_bits=(1, 8))
    with pytest.raises(ConfigError):
        QFAConfig(weight_bits=())
    with pytest.raises(UnknownNameError, match="did you mean"):
        QFAConfig(act_quantizer="batchquat")


def test_a_subnet_is_recalibrated_quantized_as_it_was_trained():
    # A subnet's BatchNorm statistics and BatchQuant ranges are those of the quantized subnet (quantizers on, as in
    # training), not of a float network: with one calibration batch, each BatchNorm's running mean/var is the
    # statistics of what reaches it in the quantized forward pass, and each BatchQuant range is its input's range.
    model = TinyConvNet()
    calib = random_loader(16, batch_size=16)
    config = QFAConfig(weight_bits=(2, 8), act_bits=(2, 8), first_last=None, calib_batches=1, bn_batches=1)
    net = build_supernet(model, weight_bits=config.weight_bits, act_bits=config.act_bits, first_last=None,
                         calib=calib, calib_config=config.calib_config())
    policy = Policy(layers={n: LayerBits(weight_bits=2, act_bits=2) for n in ("conv1", "dw", "pw", "fc")})
    plain = subnet_model(net, policy, calib, config)
    seen = {}
    watched = [m for m in plain.modules() if isinstance(m, (torch.nn.BatchNorm2d, BatchQuantizer))]
    hooks = [m.register_forward_pre_hook(lambda m, i: seen.__setitem__(m, i[0].detach())) for m in watched]
    plain(next(iter(calib))[0])
    for h in hooks:
        h.remove()
    assert len(seen) == 6  # 2 BatchNorms, 4 BatchQuant quantizers
    for m, x in seen.items():
        if isinstance(m, BatchQuantizer):
            lo, hi = batch_range(x)
            # (eval-mode BatchNorm divides by the unbiased variance, training mode by the biased one: 5e-4 here)
            assert torch.allclose(m.running_min, lo, rtol=2e-3, atol=1e-5)
            assert torch.allclose(m.running_max, hi, rtol=2e-3, atol=1e-5)
        else:
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
            assert torch.allclose(m.running_mean, mean, atol=1e-3 * float(var.max().sqrt()))
            assert torch.allclose(m.running_var, var, rtol=1e-3)  # a float network's: off by 10-28% here
