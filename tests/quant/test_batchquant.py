import math

import pytest
import torch

from qpolicy.errors import CheckpointError, UnknownNameError
from qpolicy.policy import uniform_policy
from qpolicy.quant import CalibConfig, apply_policy
from qpolicy.quant.batchquant import BatchQuantizer, batch_range
from qpolicy.quant.fake_quant import ActQuantizer
from qpolicy.testing import TinyConvNet, random_loader


def test_batch_range_is_the_channel_mean_of_min_and_max():
    x = torch.tensor([[[1.0, 3.0]], [[-1.0, 2.0]]]).reshape(2, 1, 2)  # one channel
    x = torch.cat([x, x * 2], dim=1)  # channel 2 doubles: min -2, max 6
    lo, hi = batch_range(x)
    assert float(lo) == pytest.approx((-1 - 2) / 2) and float(hi) == pytest.approx((3 + 6) / 2)


def test_hand_computed_case():
    """2 bits, range [-1, 2] from one channel: s = 3 / 3 = 1, z = 1; alpha = 0 (a = 1), offset 0.
    x = 0.4 -> q = round(0.4 + 1) = 1 -> 0.0; x = 1.6 -> round(2.6) = 3 -> 2.0; x = 5 -> clamp(6) = 3 -> 2.0;
    x = -3 -> clamp(-2) = 0 -> -1.0."""
    bq = BatchQuantizer(2)
    assert float(torch.nn.functional.softplus(bq.scale.detach(), beta=math.log(2))) == pytest.approx(1.0)
    with torch.no_grad():
        bq.running_min.fill_(-1.0)
        bq.running_max.fill_(2.0)
    bq.eval()
    out = bq(torch.tensor([[0.4, 1.6, 5.0, -3.0]]))
    assert out.tolist() == [[0.0, 2.0, 2.0, -1.0]]
    with torch.no_grad():  # a learned scale a = 2 halves the step: s / a = 0.5, z unchanged
        bq.scale.fill_(math.log(2 ** 2 - 1) / math.log(2))  # softplus_{ln2}(t) = log2(1 + 2^t) = 2
    assert bq(torch.tensor([[0.4, 0.74]]))[0].tolist() == pytest.approx([0.5, 0.5])
    with torch.no_grad():  # a range that excludes 0 is widened to include it: [0.5, 3] -> [0, 3]
        bq.scale.zero_()
        bq.running_min.fill_(0.5)
        bq.running_max.fill_(3.0)
    s, z = bq.qparams(bq.running_min, bq.running_max)
    assert float(s) == pytest.approx(1.0) and float(z) == 0.0


def test_train_uses_the_batch_and_eval_the_running_statistics():
    bq = BatchQuantizer(8, momentum=0.5)
    x = torch.randn(4, 3, 5, 5) * 4
    bq.train()
    y_train = bq(x)
    lo, hi = batch_range(x)
    assert float(bq.running_min) == pytest.approx(0.5 * float(lo))  # lerp from 0 with momentum 0.5
    bq.eval()
    with torch.no_grad():
        bq.running_min.copy_(lo)
        bq.running_max.copy_(hi)
    assert torch.equal(bq(x), y_train)  # same range: same output
    with torch.no_grad():
        bq.running_max.mul_(0.5)
    assert not torch.equal(bq(x), y_train)
    x.requires_grad_(True)
    bq.train()
    bq(x).sum().backward()
    assert bq.scale.grad is not None and bq.offset.grad is not None and x.grad.abs().sum() > 0


def test_apply_policy_calibrates_running_statistics_on_calibration_batches():
    model = TinyConvNet().eval()
    cfg = CalibConfig(act_quantizer="batchquant", batches=2, bn_batches=2)
    calib = random_loader(64, batch_size=16)
    q = apply_policy(model, uniform_policy(model, "w8a8"), calib=calib, config=cfg)
    quants = {n.removesuffix(".act_quant"): m for n, m in q.named_modules() if isinstance(m, BatchQuantizer)}
    assert set(quants) == {"conv1", "dw", "pw", "fc"}
    # the first layer reads the images: its running range is the mean batch range of the 2 calibration batches
    ranges = [batch_range(x) for x, _ in list(calib)[:2]]
    assert float(quants["conv1"].running_min) == pytest.approx(sum(float(r[0]) for r in ranges) / 2, rel=1e-5)
    assert float(quants["conv1"].running_max) == pytest.approx(sum(float(r[1]) for r in ranges) / 2, rel=1e-5)
    plain = apply_policy(model, uniform_policy(model, "w8a8"), calib=calib, config=CalibConfig(batches=2,
                                                                                                bn_batches=2))
    assert all(type(m) is ActQuantizer for m in plain.modules() if isinstance(m, ActQuantizer))
    with pytest.raises(CheckpointError, match="batchquant quantizer"):
        plain.load_state_dict(q.state_dict(), strict=False)
    with pytest.raises(UnknownNameError, match="did you mean"):
        CalibConfig(act_quantizer="batchquat")


@pytest.mark.e2e
@pytest.mark.slow  # a real-model check beside the one end-to-end test (tests/test_e2e_resnet20.py)
def test_batchquant_ptq_of_the_real_resnet20(shared_home):
    from qpolicy import data, evaluate, models

    model = models.load("resnet20")
    test = data.loader("cifar10", "test", limit=1000, batch_size=500)
    q = apply_policy(model, uniform_policy(model, "w8a8"), calib=data.calib_loader("cifar10", batches=8),
                     config=CalibConfig(act_quantizer="batchquant", batches=8, bn_batches=8))
    assert evaluate(q, test).top1 > 91.0  # float: 93.0 on these 1,000 images


def test_export_refuses_batchquant_models(tmp_path):
    pytest.importorskip("onnx")
    from qpolicy.errors import ConfigError
    from qpolicy.export import export_onnx

    model = TinyConvNet().eval()
    q = apply_policy(model, uniform_policy(model, "w8a8"), calib=random_loader(32, batch_size=16),
                     config=CalibConfig(act_quantizer="batchquant", batches=1, bn_batches=1))
    with pytest.raises(ConfigError, match="batchquant activation quantizers"):
        export_onnx(q, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
