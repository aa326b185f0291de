import torch

from qpolicy.layers import quantizable_layers
from qpolicy.sensitivity import analyze
from qpolicy.sensitivity._common import bn_after, bn_matched
from qpolicy.testing import TinyConvNet, random_loader


def test_bn_matched_absorbs_per_channel_scale_and_shift():
    y = torch.randn(16, 3, 4, 4)
    scale, shift = torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1), torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(bn_matched(y * scale + shift, y), y, atol=1e-4)
    noisy = y + 0.1 * torch.randn_like(y)
    assert (bn_matched(noisy, y) - y).abs().max() > 0.01  # noise is not absorbed


def test_bn_after_finds_conv_bn_pairs_only():
    m = TinyConvNet()
    found = bn_after(m, quantizable_layers(m), torch.randn(2, 3, 8, 8))
    assert found == {"conv1": m.bn1, "dw": m.bn2}  # pw goes into a mean, fc into nothing


def test_metrics_follow_bn_reestimate_setting():
    m = TinyConvNet()
    data = random_loader(32, batch_size=16)
    for name in ("qerror", "fisher", "kl"):
        from qpolicy.sensitivity import METRICS

        on = analyze(m, data, metric=METRICS.get(name)(bn_reestimate=True), bits=(2, 8))
        off = analyze(m, data, metric=METRICS.get(name)(bn_reestimate=False), bits=(2, 8))
        assert on.weight["conv1"][2] != off.weight["conv1"][2], name
        if name != "kl":  # kl sees the whole network: the same layer's error reaches the output differently
            assert on.weight["fc"][2] == off.weight["fc"][2], name
