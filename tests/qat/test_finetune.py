import pytest
import torch

from qpolicy.errors import CheckpointError, ConfigError
from qpolicy.policy import uniform_policy
from qpolicy.qat import FinetuneConfig, finetune, load_checkpoint
from qpolicy.quant import apply_policy
from qpolicy.testing import TinyConvNet, random_loader


def _qmodel():
    m = TinyConvNet()
    return apply_policy(m, uniform_policy(m, "w3a4"), calib=random_loader(64))


class Interrupting:
    """A loader that raises KeyboardInterrupt when it reaches global batch ``at`` (a simulated kill)."""

    def __init__(self, inner, at):
        self.inner, self.at, self.count = inner, at, 0

    def __len__(self):
        return len(self.inner)

    def batches(self, epoch, start=0):
        for b in self.inner.batches(epoch, start):
            if self.count == self.at:
                raise KeyboardInterrupt
            self.count += 1
            yield b


def test_config_validation_and_round_trip():
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"lr": 0}, {"checkpoint_every": -1}, {"momentum": float("nan")}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**bad)
    c = FinetuneConfig(epochs=3, lr=0.1)
    assert FinetuneConfig(**c.to_dict()) == c


def test_training_reduces_loss_and_updates_quantizer_scales():
    q = _qmodel()
    scale0 = q.dw.act_quant.scale.detach().clone()
    data = random_loader(128, batch_size=16, shuffle=True)
    res = finetune(q, data, config=FinetuneConfig(epochs=4, lr=0.05, checkpoint_every=0), device="cpu")
    assert res.epochs == 4 and res.steps == 32 and len(res.history) == 4 and res.checkpoint is None
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert not torch.equal(q.dw.act_quant.scale, scale0)
    assert res.history[-1]["lr_end"] < 0.05 * 0.2  # cosine decays towards 0
    assert not q.training


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    data = random_loader(96, batch_size=16, shuffle=True, augment=True)
    cfg = FinetuneConfig(epochs=2, lr=0.05, checkpoint_every=2)
    ref = _qmodel()
    finetune(ref, data, config=cfg, out_dir=tmp_path / "ref", device="cpu")

    q = _qmodel()
    with pytest.raises(KeyboardInterrupt):
        finetune(q, Interrupting(data, at=9), config=cfg, out_dir=tmp_path / "run", device="cpu")
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (1, 2)  # 6 steps per epoch; last checkpoint at global step 8
    fresh = _qmodel()
    res = finetune(fresh, data, config=cfg, out_dir=tmp_path / "run", resume=True, device="cpu")
    assert res.resumed_from == {"epoch": 1, "step": 2} and res.epochs == 2
    for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.allclose(a, b, atol=1e-6), k


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    data = random_loader(32, batch_size=16)
    finetune(_qmodel(), data, config=FinetuneConfig(epochs=1), out_dir=tmp_path, device="cpu")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        finetune(_qmodel(), data, config=FinetuneConfig(epochs=1), out_dir=tmp_path, device="cpu")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_errors(tmp_path):
    data = random_loader(32, batch_size=16)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        finetune(_qmodel(), data, out_dir=tmp_path / "none", resume=True, device="cpu")
    finetune(_qmodel(), data, config=FinetuneConfig(epochs=1), out_dir=tmp_path / "a", device="cpu")
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        finetune(_qmodel(), data, config=FinetuneConfig(epochs=1, lr=0.5), out_dir=tmp_path / "a", resume=True,
                 device="cpu")
    m = TinyConvNet()
    other = apply_policy(m, uniform_policy(m, "w4a4"), calib=random_loader(64))
    with pytest.raises(CheckpointError, match="does not fit"):
        finetune(other, data, config=FinetuneConfig(epochs=1), out_dir=tmp_path / "a", resume=True, device="cpu")
    path = tmp_path / "a" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        finetune(_qmodel(), data, config=FinetuneConfig(epochs=1), out_dir=tmp_path / "a", resume=True,
                 device="cpu")



def test_noise_sigma_trains_under_gaussian_noise_and_is_checked():
    with pytest.raises(ConfigError, match="noise_sigma must be a positive number"):
        FinetuneConfig(noise_sigma=0.0)
    losses = {}
    for sigma in (None, 0.5):
        model = TinyConvNet()
        res = finetune(model, random_loader(32, batch_size=16), config=FinetuneConfig(epochs=1, noise_sigma=sigma))
        losses[sigma] = res.history[0]["loss"]
    assert losses[None] != losses[0.5]
