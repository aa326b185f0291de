import pytest
import torch

from qpolicy.errors import CalibrationError, PolicyMismatchError
from qpolicy.policy import LayerBits, uniform_policy
from qpolicy.quant import CalibConfig, QuantConv2d, QuantLinear, apply_policy, quantizers
from qpolicy.testing import ThreeLayerNet, TinyConvNet, random_loader


def _calib():
    return random_loader(64, batch_size=16)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_input_model_is_bit_identical_and_untouched():
    model = TinyConvNet().train()
    before = _snapshot(model)
    q = apply_policy(model, uniform_policy(model, "w3a4"), calib=_calib())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.conv1) is torch.nn.Conv2d and model.training
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc, QuantLinear) and q.training
    assert q.conv1.weight is not model.conv1.weight


def test_layer_bits_are_applied_and_float_layers_stay_float():
    model = TinyConvNet()
    p = uniform_policy(model, "w4a4", first_last="float").replace_layers(
        {"pw": LayerBits(weight_bits=6, act_bits=None)})
    q = apply_policy(model, p, calib=_calib())
    assert type(q.conv1) is torch.nn.Conv2d and type(q.fc) is torch.nn.Linear
    assert q.dw.weight_quant.bits == 4 and q.dw.act_quant.bits == 4
    assert q.pw.weight_quant.bits == 6 and q.pw.act_quant is None
    assert len(quantizers(q)) == 3


def test_quantized_weights_lie_on_the_grid():
    model = TinyConvNet()
    q = apply_policy(model, uniform_policy(model, "w3a8", first_last="same"), calib=_calib())
    w = q.dw.weight_quant(q.dw.weight)
    levels = w / q.dw.weight_quant.scale.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 3 + 1e-4


def test_w8a8_is_close_to_float_and_lower_bits_are_further():
    model = TinyConvNet()
    x = next(iter(_calib()))[0]
    ref = model(x)
    errs = {}
    for spec in ("w8a8", "w4a4", "w2a2"):
        q = apply_policy(model, uniform_policy(model, spec, first_last="same"), calib=_calib(),
                         config=CalibConfig(bn_reestimate=False))
        errs[spec] = (q(x) - ref).pow(2).mean().item()
    assert errs["w8a8"] < errs["w4a4"] < errs["w2a2"]
    assert errs["w8a8"] < 1e-3 * ref.pow(2).mean().item()


def test_bn_reestimation_changes_only_the_copy_and_is_deterministic():
    model = TinyConvNet()
    p = uniform_policy(model, "w2a8", first_last="same")
    q1 = apply_policy(model, p, calib=_calib())
    q2 = apply_policy(model, p, calib=_calib())
    q0 = apply_policy(model, p, calib=_calib(), config=CalibConfig(bn_reestimate=False))
    assert torch.equal(q0.bn1.running_mean, model.bn1.running_mean)
    assert not torch.equal(q1.bn2.running_var, model.bn2.running_var)
    s1, s2 = q1.state_dict(), q2.state_dict()
    assert all(torch.equal(v, s2[k]) if isinstance(v, torch.Tensor) else v == s2[k] for k, v in s1.items())


def test_calibration_accepts_a_one_shot_iterator():
    model = TinyConvNet()
    gen = (x for x, _ in _calib())
    q = apply_policy(model, uniform_policy(model, "w4a4"), calib=gen)
    assert q.dw.act_quant.scale.item() != 1.0


def test_activation_policy_without_calibration_data_fails_clearly():
    model = TinyConvNet()
    with pytest.raises(CalibrationError, match="calibration data"):
        apply_policy(model, uniform_policy(model, "w4a4"))
    apply_policy(model, uniform_policy(model, "w4"))  # weights only: fine without data


def test_policy_of_another_model():
    with pytest.raises(PolicyMismatchError):
        apply_policy(ThreeLayerNet(), uniform_policy(TinyConvNet(), "w4a4"), calib=_calib())


def test_model_with_dropout_keeps_its_eval_mode_during_calibration():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    model.input_shape = (8,)
    x = torch.randn(32, 8)
    q = apply_policy(model.eval(), uniform_policy(model, "w4a4", first_last="same"), calib=[x])
    assert torch.equal(q(x), q(x))  # dropout inactive: deterministic
