import pytest
import torch
from torch import nn

from qpolicy.errors import ConfigError
from qpolicy.layers import quantizable_layers, quantizable_modules
from qpolicy.testing import TinyConvNet


def test_kinds_shapes_macs_order():
    layers = quantizable_layers(TinyConvNet())
    assert [(li.name, li.kind) for li in layers] == [("conv1", "conv"), ("dw", "depthwise"), ("pw", "conv"),
                                                     ("fc", "linear")]
    dw = layers[1]
    assert dw.params == 8 * 9 and dw.macs == 8 * 8 * 8 * 9
    assert dw.in_shape == (8, 8, 8) and dw.out_shape == (8, 8, 8)
    assert layers[3].macs == 16 * 4 and layers[3].in_shape == (16,)


def test_grouped_and_unreached_and_reused():
    class M(nn.Module):
        input_shape = (4, 2, 2)

        def __init__(self):
            super().__init__()
            self.g = nn.Conv2d(4, 4, 1, groups=2)
            self.unused = nn.Linear(3, 3)
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            x = self.g(x).flatten(1)
            return self.fc(self.fc(x))  # called twice: MACs add up

    layers = {li.name: li for li in quantizable_layers(M())}
    assert layers["g"].kind == "grouped" and layers["g"].macs == 16 * 2
    assert layers["fc"].macs == 2 * 256
    assert layers["unused"].macs == 0 and layers["unused"].in_shape is None and layers["unused"].order == 2


def test_does_not_touch_the_model():
    model = TinyConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantizable_layers(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.conv1._forward_hooks


def test_input_shape_required_for_plain_models():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="input shape"):
        quantizable_layers(model)
    assert quantizable_layers(model, (3,))[0].macs == 6
    assert [n for n, _ in quantizable_modules(model)] == ["0"]


class Branches(nn.Module):
    """Two convolutions read one tensor; a third reads it after an in-place change (a new value: no tie)."""

    input_shape = (2, 4, 4)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 3, padding=1)
        self.after = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.left(x) + self.right(x)
        x.relu_()
        return self.after(x) + y


def test_layers_reading_one_tensor_are_marked():
    layers = {li.name: li for li in quantizable_layers(Branches())}
    assert layers["right"].shares_input_with == "left"
    assert layers["left"].shares_input_with is None and layers["after"].shares_input_with is None
    assert layers["stem"].shares_input_with is None
    assert all(li.shares_input_with is None for li in quantizable_layers(TinyConvNet()))
