import pytest
import torch
from torch import nn

from qpolicy.errors import CheckpointError, ConfigError
from qpolicy.quant.fake_quant import ActQuantizer, CalibConfig, QuantConv2d, QuantLinear, WeightQuantizer


def test_calib_config_validation():
    with pytest.raises(ConfigError, match="minmax, percentile, mse"):
        CalibConfig(weight_method="max")
    with pytest.raises(ConfigError, match="percentile"):
        CalibConfig(percentile=0)
    with pytest.raises(ConfigError, match="batches"):
        CalibConfig(batches=0)
    c = CalibConfig(act_method="percentile")
    assert CalibConfig(**c.to_dict()) == c


def test_weight_quantizer_minmax_per_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    q = WeightQuantizer(3, 2)
    q.calibrate_(w, CalibConfig(weight_method="minmax"))
    assert torch.allclose(q.scale, torch.tensor([1.0, 0.5 / 3]))
    assert torch.allclose(q(w), torch.tensor([[1.0, -3.0], [0.5, 1 / 3]]))


def test_act_quantizer_signedness_from_calibration():
    for data, signed in ((torch.rand(4, 10), False), (torch.randn(4, 10), True)):
        q = ActQuantizer(4)
        q.start_calibration_(CalibConfig(act_method="minmax"))
        assert torch.equal(q(data), data)  # observing passes through
        q.finish_calibration_()
        assert q.signed == signed
        top = data.abs().max() if signed else data.max()
        assert q.scale.item() == pytest.approx(float(top) / (7 if signed else 15), rel=1e-6)


def test_act_quantizer_subsamples_deterministically():
    cfg = CalibConfig(samples_per_batch=100, act_method="mse", seed=3)
    x = torch.randn(10, 1000)
    scales = []
    for _ in range(2):
        q = ActQuantizer(3)
        q.start_calibration_(cfg)
        q(x)
        q.finish_calibration_()
        scales.append(q.scale.item())
    assert scales[0] == scales[1]


def test_extra_state_guards_bits():
    q = WeightQuantizer(4, 3)
    sd = q.state_dict()
    q8 = WeightQuantizer(8, 3)
    with pytest.raises(CheckpointError, match="4-bit"):
        q8.load_state_dict(sd)


def test_quant_layers_keep_names_and_outputs_at_8_bits():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    qc = QuantConv2d.from_float(conv, weight_bits=8, act_bits=None)
    assert set(qc.state_dict()) >= {"weight", "bias", "weight_quant.scale"}
    qc.weight_quant.calibrate_(qc.weight, CalibConfig())
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(qc(x), conv(x), atol=0.05)
    lin = nn.Linear(4, 2)
    ql = QuantLinear.from_float(lin, weight_bits=None, act_bits=None)
    assert torch.equal(ql(torch.ones(1, 4)), lin(torch.ones(1, 4)))
    assert isinstance(qc, nn.Conv2d) and isinstance(ql, nn.Linear)
