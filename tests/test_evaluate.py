import pytest
import torch

from qpolicy.errors import ConfigError
from qpolicy.evaluate import evaluate, resolve_device
from qpolicy.testing import TinyConvNet, random_loader


def test_top1_and_loss_by_hand():
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0]]).repeat(x.shape[0], 1)

    data = [(torch.zeros(3, 1), torch.tensor([0, 0, 1])), (torch.zeros(1, 1), torch.tensor([1]))]
    r = evaluate(Const(), data, device="cpu")
    assert (r.correct, r.total, r.top1) == (2, 4, 50.0)
    lp = torch.log_softmax(torch.tensor([2.0, 0.0]), 0)
    assert r.loss == pytest.approx(float(-(2 * lp[0] + 2 * lp[1]) / 4))
    assert r.per_sample is None and "per_sample" not in r.to_dict()
    each = evaluate(Const(), data, device="cpu", per_sample=True).per_sample
    assert each.tolist() == [1.0, 1.0, 0.0, 0.0]  # in data order, across batches


def test_restores_mode_and_does_not_change_weights():
    m = TinyConvNet().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    evaluate(m, random_loader(32), device="cpu")
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_bad_device_and_empty_data():
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="no samples"):
        evaluate(TinyConvNet(), [], device="cpu")
