"""End to end on the real pretrained ResNet-20 and the full CIFAR-10 test set."""

import pytest

import qpolicy as qp

pytestmark = pytest.mark.e2e


def test_resnet20_float_and_w8a8(shared_home):
    model = qp.models.load("resnet20")
    test = qp.data.loader("cifar10", "test", batch_size=500)
    assert test.num_samples == 10_000
    fp = qp.evaluate(model, test)
    assert fp.correct == 9173 and fp.top1 == pytest.approx(91.73)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = qp.uniform_policy(model, "w8a8", model_name="resnet20")
    qmodel = qp.apply_policy(model, policy, calib=qp.data.calib_loader("cifar10"))
    q8 = qp.evaluate(qmodel, test)
    assert abs(q8.top1 - fp.top1) <= 0.3
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    assert qp.evaluate(model, test).correct == 9173
