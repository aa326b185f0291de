"""The task as a callback (qpolicy.task): a model that is not a classifier, and a model fed by dict batches, each
taken through every model-in-the-loop path from Python."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qpolicy as qp
from qpolicy.budget import Budget
from qpolicy.errors import ConfigError, PreflightError
from qpolicy.select import SelectConfig
from qpolicy.testing import digits_arrays


def _digits(seed=0):
    imgs, labels = digits_arrays()
    x = torch.from_numpy(imgs).float().unsqueeze(1) / 255.0
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], torch.from_numpy(labels)[perm]


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dec = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.dec(self.enc(x)))


def _mse(out, batch):
    return (out - batch["clean"]).pow(2).flatten(1).mean(1)


def _batches(x, bs, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"noisy": (xb + 0.3 * torch.randn(xb.shape, generator=g)).clamp(0, 1), "clean": xb}
            for xb in x.split(bs)]


@pytest.fixture(scope="module")
def denoiser():
    x, _ = _digits()
    train, val, test = _batches(x[:1200], 64, 1), _batches(x[1200:1500], 100, 2), _batches(x[1500:], 100, 3)
    torch.manual_seed(0)
    model = Denoiser()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(6):
        for b in train:
            opt.zero_grad()
            _mse(model(b["noisy"]), b).mean().backward()
            opt.step()
    model.eval().input_shape = (1, 8, 8)

    def wrap(batches):
        return qp.Data(batches, transform=lambda b: b["noisy"], loss_fn=_mse)
    return model, wrap(train), wrap(val), wrap(test)


def test_a_denoiser_is_evaluated_calibrated_searched_and_finetuned_by_its_own_loss(denoiser):
    model, train, val, test = denoiser
    res = qp.evaluate(model, test)
    with torch.no_grad():  # the figure by hand: mean per-pixel MSE over the test images
        want = torch.cat([_mse(model(b["noisy"]), b) for b in test]).mean().item()
    assert res.top1 is None and res.metric_name == "neg_loss" and res.total == 297
    assert res.loss == pytest.approx(want, rel=1e-6) and res.metric == pytest.approx(-want, rel=1e-6)
    qp.preflight(model, val)

    table = qp.analyze(model, train, metric="fisher")  # per-sample gradients of the user's loss
    assert set(table.names) == {"enc.0", "enc.3", "dec"} and table.weight["enc.0"][2] > table.weight["enc.0"][8]

    budget = Budget(bitops=3 * 4 / 64)
    found = qp.search_validated(model, budget, calib=train, val=val, metric_data=train,
                                config=SelectConfig(val_images=150, confirm_images=150, refine_evaluations=4))
    assert found.cost.bitops <= budget.limits(qp.quantizable_layers(model)).bitops * (1 + 1e-9)
    chosen = qp.evaluate(qp.apply_policy(model, found.policy, calib=train), val)
    w8 = qp.evaluate(qp.apply_policy(model, qp.uniform_policy(model, "w8a8"), calib=train), val)
    w2 = qp.evaluate(qp.apply_policy(model, qp.uniform_policy(model, "w2a2", first_last="same"), calib=train), val)
    assert w8.loss < chosen.loss < w2.loss  # it quantizes (costs something) but far less than 2 bits everywhere

    qmodel = qp.apply_policy(model, qp.uniform_policy(model, "w2a2", first_last="same"), calib=train)
    before = qp.evaluate(qmodel, val).loss
    qp.finetune(qmodel, train, config=qp.FinetuneConfig(epochs=4, lr=0.5))
    after = qp.evaluate(qmodel, val).loss
    float_loss = qp.evaluate(model, val).loss  # 0.0223; W2A2 PTQ 0.0296; after QAT 0.0267 when written
    assert after < before - 0.25 * (before - float_loss)  # QAT on the user's loss repairs part of the 2-bit damage


def test_classifier_only_paths_say_so_for_another_task(denoiser):
    model, train, _, _ = denoiser
    for metric in ("kl", "te"):
        with pytest.raises(ConfigError, match="classifier"):
            qp.analyze(model, train, metric=metric)


class TwoInputNet(nn.Module):
    """Takes a dict batch: an image and a per-sample brightness scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 64 + 1, 10)

    def forward(self, image, scale):
        h = torch.relu(self.bn(self.conv(image * scale[:, :, None, None]))).flatten(1)
        return self.fc(torch.cat([h, scale], 1))


def test_a_model_fed_by_dict_batches(tmp_path):
    x, y = _digits(1)
    batches = [{"image": xb, "scale": torch.ones(len(xb), 1), "label": yb}
               for xb, yb in zip(x.split(50), y.split(50), strict=True)]
    torch.manual_seed(0)
    model = TwoInputNet()
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    for _ in range(8):
        for b in batches[:24]:
            opt.zero_grad()
            F.cross_entropy(model(b["image"], b["scale"]), b["label"]).backward()
            opt.step()
    model.eval().example_inputs = {"image": torch.zeros(1, 1, 8, 8), "scale": torch.ones(1, 1)}

    def wrap(bs, **kw):
        return qp.Data(bs, transform=lambda b: {"image": b["image"], "scale": b["scale"]},
                       loss_fn=lambda out, b: F.cross_entropy(out, b["label"], reduction="none"),
                       metric_fn=lambda out, b: (out.argmax(1) == b["label"]).float(), metric_name="top1", **kw)

    train, val, test = wrap(batches[:24]), wrap(batches[24:30]), wrap(batches[30:])
    layers = qp.quantizable_layers(model)  # costs from the example inputs
    assert [li.name for li in layers] == ["conv", "fc"] and layers[0].macs == 8 * 8 * 8 * 9
    res = qp.evaluate(model, test)
    with torch.no_grad():
        hand = sum(int((model(b["image"], b["scale"]).argmax(1) == b["label"]).sum()) for b in batches[30:])
    assert res.metric == pytest.approx(hand / res.total) and res.metric > 0.8
    qp.preflight(model, val)
    found = qp.search_validated(model, Budget(bitops=4 * 8 / 64), calib=train, val=val, metric_data=train,
                                act_bits=8, first_last=None, config=SelectConfig(val_images=200, confirm_images=100))
    ev = qp.evaluate_policy(model, found.policy, test=test, calib=train)
    assert ev.accuracy.metric > res.metric - 0.1
    rec = qp.write_evaluation(tmp_path / "eval.json", ev, model="two-input")
    assert rec["metric_name"] == "top1" and rec["top1"] is None and rec["metric"] == ev.accuracy.metric

    bad = qp.Data(batches, transform=lambda b: {"image": b["image"], "scale": b["scale"]},
                  loss_fn=lambda out, b: F.cross_entropy(out, b["label"]))  # a mean, not one loss per sample
    with pytest.raises(PreflightError, match=r"loss_fn failed on two samples.*one value per sample"):
        qp.preflight(model, bad)
    with pytest.raises(PreflightError, match="transform failed"):
        qp.preflight(model, qp.Data(batches, transform=lambda b: b["nope"], loss_fn=lambda o, b: o[:, 0]))


def test_data_survives_pickling_as_ray_ships_it():
    import pickle

    d = qp.Data([torch.zeros(2, 3)], transform=abs)  # a module-level function: plain pickle can ship it
    e = pickle.loads(pickle.dumps(d))
    assert len(e) == 1 and torch.equal(next(iter(e)), torch.zeros(2, 3)) and e.task.transform is abs
