import pytest
import torch

from qpolicy.errors import CheckpointError
from qpolicy.testing import TinyConvNet, random_loader
from qpolicy.train import Hook, TrainSpec, load_checkpoint, train


class Counter(Hook):
    """A hook with state: counts steps, asks for a checkpoint at step 3, records its count per epoch."""

    name = "counter"

    def __init__(self):
        self.count, self.calls = 0, []

    def start_epoch(self, epoch, step):
        self.calls.append(("start", epoch, step))

    def after_step(self, epoch, step):
        self.count += 1
        return step == 3

    def end_epoch(self, epoch):
        return {"count": self.count}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _spec(model, hook, **kw):
    return TrainSpec(epochs=2, lr=0.05, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     hooks=(hook,), settings={"lr": 0.05}, **kw)


def test_loss_terms_and_transforms_take_part():
    seen = []
    model = TinyConvNet()
    data = random_loader(32, batch_size=8)

    def term(m, x, y, logits):
        seen.append("term")
        return 0.0 * logits.sum() + 1.0  # a constant: the recorded loss is 1 higher

    def noise(x, y, step):
        seen.append(step)
        return x + 0.01 * torch.randn_like(x), y

    out = train(model, data, TrainSpec(epochs=1, lr=0.01, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                       loss_terms=(term,), transforms=(noise,)))
    assert seen.count("term") == 4 and [s for s in seen if s != "term"] == [0, 1, 2, 3]
    assert out.history[0]["loss"] > 1.0 and out.steps == 4


def test_resume_equals_an_uninterrupted_run_and_keeps_hook_state(tmp_path):
    data = random_loader(64, batch_size=8, shuffle=True, augment=True)
    ref_model, ref_hook = TinyConvNet(), Counter()
    ref = train(ref_model, data, _spec(ref_model, ref_hook), out_dir=tmp_path / "ref")
    # a run killed during epoch 2: the hook's step-3 checkpoint of epoch 2 is the last one
    model = TinyConvNet()

    class Kill(Counter):
        def after_step(self, epoch, step):
            wanted = super().after_step(epoch, step)
            if epoch == 1 and step == 5:
                raise KeyboardInterrupt
            return wanted

    killer = Kill()
    with pytest.raises(KeyboardInterrupt):
        train(model, data, _spec(model, killer), out_dir=tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt", fmt="qpolicy.checkpoint")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3) and ckpt["hooks"]["counter"]["count"] == 8 + 3
    model2, hook2 = TinyConvNet(), Counter()
    out = train(model2, data, _spec(model2, hook2), out_dir=tmp_path / "run", resume=True)
    assert out.resumed_from == {"epoch": 1, "step": 3} and hook2.count == ref_hook.count == 16
    assert hook2.calls == [("start", 1, 3)]
    for a, b in zip(ref_model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h["count"] for h in out.history] == [h["count"] for h in ref.history] == [8, 16]


def test_resume_refuses_other_settings(tmp_path):
    data = random_loader(16, batch_size=8)
    model = TinyConvNet()
    train(model, data, _spec(model, Counter()), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="exists"):
        train(model, data, _spec(model, Counter()), out_dir=tmp_path)
    spec = _spec(model, Counter())
    spec.settings = {"lr": 0.1}
    with pytest.raises(CheckpointError, match="other settings"):
        train(model, data, spec, out_dir=tmp_path, resume=True)


def _run(precision, terms=()):
    torch.manual_seed(0)
    model = TinyConvNet()
    seen = []

    def probe(m, x, y, logits):  # what the loss terms get: channels-last batches and float32 logits under bf16
        seen.append((x.is_contiguous(memory_format=torch.channels_last), logits.dtype))
        return 0.0 * logits.sum()

    out = train(model, random_loader(32, batch_size=8),
                TrainSpec(epochs=1, lr=0.05, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          loss_terms=(probe, *terms), precision=precision))
    return model, out, seen


def test_bf16_training_autocasts_and_returns_a_float32_contiguous_model():
    ref, ref_out, ref_seen = _run("fp32")
    model, out, seen = _run("bf16")
    assert ref_seen == [(False, torch.float32)] * 4 and seen == [(True, torch.float32)] * 4
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.is_contiguous()
    # bfloat16 rounding (8 bits of mantissa) changes the run, but only by a small relative amount
    assert ref_out.history[0]["loss"] != out.history[0]["loss"]
    assert abs(ref_out.history[0]["loss"] - out.history[0]["loss"]) < 0.05 * ref_out.history[0]["loss"]
    diff = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), model.parameters(), strict=True))
    assert 0 < diff < 0.05


def test_unknown_precision_is_refused():
    from qpolicy.errors import ConfigError
    from qpolicy.train.trained import FloatTrainConfig

    model = TinyConvNet()
    with pytest.raises(ConfigError, match="fp32, bf16"):
        TrainSpec(epochs=1, lr=0.1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")
    with pytest.raises(ConfigError, match="fp32, bf16"):
        FloatTrainConfig(precision="half")
