"""Preflight: one batch through the model before any work; each misfit is one PreflightError naming both sides."""

import pytest
import torch
from torch import nn

from qpolicy.errors import PreflightError
from qpolicy.preflight import preflight
from qpolicy.testing import TinyConvNet, random_loader


def test_a_model_that_fits_its_data_passes_and_is_not_changed():
    model = TinyConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preflight(model, random_loader(32, batch_size=16))  # 3x8x8 images, labels 0..3, 4 classes
    assert model.training and all(v.equal(before[k]) for k, v in model.state_dict().items())


def test_declared_input_shape_against_the_data():
    model = TinyConvNet()
    model.input_shape = (3, 16, 16)
    with pytest.raises(PreflightError, match="input shape is 3x16x16.*the data has 3x8x8"):
        preflight(model, random_loader(32, batch_size=16))


def test_channels_the_model_cannot_take():
    model = TinyConvNet()
    model.input_shape = None  # nothing declared: the forward pass finds it
    loader = [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(PreflightError, match=r"does not take the data's inputs \(1x8x8 per sample\): RuntimeError"):
        preflight(model, loader)


def test_labels_beyond_the_model_classes():
    with pytest.raises(PreflightError, match=r"labels \d+..[4-9], the model outputs 4 classes \(labels 0..3\)"):
        preflight(TinyConvNet(), random_loader(64, batch_size=16, num_classes=10))


def test_outputs_that_are_not_logits_and_batches_that_are_not_pairs():
    class Flat(nn.Module):
        def forward(self, x):
            return x.mean()

    with pytest.raises(PreflightError, match="expected \\(batch, classes\\) logits"):
        preflight(Flat(), random_loader(16, batch_size=8))
    with pytest.raises(PreflightError, match="yielded no batch"):
        preflight(TinyConvNet(), [])
    with pytest.raises(PreflightError, match="must yield \\(inputs, labels\\)"):
        preflight(TinyConvNet(), [torch.zeros(2, 3, 8, 8)])
