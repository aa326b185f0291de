import pytest
import torch

from qpolicy.errors import ConfigError
from qpolicy.qat import FinetuneConfig, finetune
from qpolicy.testing import TinyConvNet, random_loader
from qpolicy.train.kurtosis import KurtosisConfig, KurtosisTerm, kure_layers, kurtosis, layer_kurtosis


@pytest.mark.parametrize("sample, expected", [
    (lambda g, n: torch.rand(n, generator=g), 1.8),  # uniform: 9/5
    (lambda g, n: torch.randn(n, generator=g), 3.0),  # normal
    (lambda g, n: torch.distributions.Laplace(0.0, 1.0).sample((n,)), 6.0),  # Laplace
])
def test_kurtosis_of_known_distributions(sample, expected):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    assert float(kurtosis(sample(g, 400_000))) == pytest.approx(expected, rel=0.03)
    assert float(kurtosis(torch.tensor([-1.0, 1.0]))) == pytest.approx(1.0)  # two points: the minimum


def test_gradient_pushes_kurtosis_towards_the_target():
    g = torch.Generator().manual_seed(1)
    for start, target in ((torch.randn(2000, generator=g), 1.8), (torch.rand(2000, generator=g), 3.0)):
        w = start.clone().requires_grad_(True)
        before = float(kurtosis(w.detach()))
        loss = (kurtosis(w) - target) ** 2
        loss.backward()
        with torch.no_grad():
            w -= 0.5 * w.grad / w.grad.norm() * w.norm() * 0.01
        after = float(kurtosis(w.detach()))
        assert abs(after - target) < abs(before - target)


def test_term_covers_convs_but_the_first_and_trains_kurtosis_down():
    model = TinyConvNet()
    assert kure_layers(model) == ["dw", "pw"]  # conv1 (first) and fc (linear) are left out
    term = KurtosisTerm(model, KurtosisConfig(lam=1.0))
    assert term.names == ["dw", "pw"]
    expected = sum((float(kurtosis(model.get_submodule(n).weight.detach())) - 1.8) ** 2 for n in ("dw", "pw")) / 2
    assert float(term(model, None, None, None).detach()) == pytest.approx(expected, rel=1e-5)
    before = layer_kurtosis(model, ["dw", "pw"])
    res = finetune(model, random_loader(64, batch_size=16), config=FinetuneConfig(
        epochs=3, lr=0.05, kurtosis_lambda=10.0, checkpoint_every=0))
    after = layer_kurtosis(model, ["dw", "pw"])
    assert sum(abs(v - 1.8) for v in after.values()) < sum(abs(v - 1.8) for v in before.values())
    assert "kurtosis_mean" in res.history[-1]


@pytest.mark.parametrize("kw, msg", [({"lam": -1.0}, "lam"), ({"target": 0}, "target"), ({"layers": ["x"]}, "tuple")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        KurtosisConfig(**kw)
    with pytest.raises(ConfigError, match="not in the model"):
        KurtosisTerm(TinyConvNet(), KurtosisConfig(layers=("nope",)))
    with pytest.raises(ConfigError, match="kurtosis_lambda must be a finite number >= 0"):
        FinetuneConfig(kurtosis_lambda=-0.5)


def test_bn_folded_term_regularizes_the_folded_weights():
    # dw -> bn2 folds; pw has no BatchNorm after it. With per-channel BatchNorm scales far from 1 the folded weight's
    # kurtosis is not the raw weight's.
    model = TinyConvNet()
    with torch.no_grad():
        model.bn2.weight.copy_(torch.linspace(0.2, 3.0, 8))
        model.bn2.running_var.copy_(torch.linspace(4.0, 0.5, 8))
    folded = KurtosisTerm(model, KurtosisConfig(bn_folded=True))
    plain = KurtosisTerm(model, KurtosisConfig(bn_folded=False))
    assert set(folded.bn) == {"dw"} and folded.bn["dw"] is model.bn2
    w = model.dw.weight.detach()
    by_hand = w * (model.bn2.weight / torch.sqrt(model.bn2.running_var + model.bn2.eps)).detach().view(-1, 1, 1, 1)
    got, raw = folded.values(model), plain.values(model)
    assert got["dw"] == pytest.approx(float(kurtosis(by_hand)), rel=1e-6)
    assert abs(got["dw"] - raw["dw"]) > 0.1
    assert got["pw"] == raw["pw"]
    # the term's gradient reaches the BatchNorm scale it folds in, and only in the folded term
    plain(model, None, None, None).backward()
    assert model.bn2.weight.grad is None
    folded(model, None, None, None).backward()
    gamma = model.bn2.weight.detach().clone().requires_grad_(True)
    scale = gamma / torch.sqrt(model.bn2.running_var + model.bn2.eps)
    pw = model.pw.weight.detach()
    by_hand = ((kurtosis(w * scale.view(-1, 1, 1, 1)) - 1.8) ** 2 + (kurtosis(pw) - 1.8) ** 2) / 2
    by_hand.backward()
    assert torch.allclose(model.bn2.weight.grad, gamma.grad, rtol=1e-4, atol=1e-8)
