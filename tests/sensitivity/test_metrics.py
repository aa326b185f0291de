import pytest
import torch

from qpolicy.data import ArrayDataset, ArrayLoader
from qpolicy.datasets import cifar10
from qpolicy.errors import PolicyError, UnknownNameError
from qpolicy.sensitivity import METRICS, SensitivityTable, analyze, monotone
from qpolicy.testing import TinyConvNet, random_dataset

BITS = (2, 3, 4, 8)


def _calib():
    ds = random_dataset(64)
    balanced = ArrayDataset(images=ds.images, labels=torch.arange(64) % 4, classes=ds.classes, source="test")
    return ArrayLoader(balanced, batch_size=32, mean=cifar10.MEAN, std=cifar10.STD)


def _fragile_model():
    """TinyConvNet whose 1x1 conv ``pw`` is fragile on purpose: each output channel has one huge weight on an input
    channel that is always zero (dead after the ReLU). The outlier sets the quantization range but carries no
    signal, so at low bits the small weights that do carry the signal round away. The classifier ``fc`` gets
    ternary weights (exactly representable at every width), so the layer next to the loss, which gradient-based
    metrics weigh most, is not fragile by accident."""
    m = TinyConvNet(seed=1)
    with torch.no_grad():
        m.bn2.bias[0] = -100.0  # input channel 0 of pw is dead
        m.pw.weight[:, 0] = 30.0
        m.fc.weight.copy_(torch.sign(m.fc.weight) * 0.5)
    return m


def test_monotone():
    assert monotone({2: 1.0, 4: 3.0, 8: 0.5}) == {2: 3.0, 4: 3.0, 8: 0.5}


@pytest.mark.parametrize("metric", METRICS.names())
def test_contract(metric):
    model = TinyConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = [p.requires_grad for p in model.parameters()]
    table = analyze(model, _calib(), metric=metric, bits=BITS, seed=0, model_name="tiny")
    # the model is untouched: parameters, buffers, mode, requires_grad, no hooks left
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and [p.requires_grad for p in model.parameters()] == grads_before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert table.names == ["conv1", "dw", "pw", "fc"] and table.bits == BITS and table.metric == metric
    for scores in (table.weight, table.act):
        for n in table.names:
            vals = [scores[n][b] for b in BITS]
            assert all(v >= 0 for v in vals) and vals == sorted(vals, reverse=True)
    again = analyze(model, _calib(), metric=metric, bits=BITS, seed=0)
    assert again.weight == table.weight and again.act == table.act


# te scores feature-map topology, not quantization error: planted fragile weights do not change it (its own
# planted case is in test_te.py).
@pytest.mark.parametrize("metric", [m for m in METRICS.names() if m != "te"])
def test_planted_fragile_layer_ranks_first(metric):
    table = analyze(_fragile_model(), _calib(), metric=metric, bits=BITS)
    for b in (2, 3):
        worst = max(table.names, key=lambda n: table.weight[n][b])
        assert worst == "pw", (b, {n: table.weight[n][b] for n in table.names})


def test_table_round_trip_and_errors(tmp_path):
    table = analyze(TinyConvNet(), _calib(), metric="qerror", bits=BITS)
    path = tmp_path / "t.json"
    table.save(path)
    back = SensitivityTable.load(path)
    assert back.weight == table.weight and back.act == table.act and back.layers == table.layers
    assert back.bits == table.bits and back.metric == "qerror"
    path.write_text('{"format": "qpolicy.policy"}')
    with pytest.raises(PolicyError, match="not a qpolicy sensitivity table"):
        SensitivityTable.load(path)
    with pytest.raises(PolicyError, match="not found"):
        SensitivityTable.load(tmp_path / "none.json")
    with pytest.raises(UnknownNameError, match="did you mean 'hessian'"):
        analyze(TinyConvNet(), _calib(), metric="hesian")
