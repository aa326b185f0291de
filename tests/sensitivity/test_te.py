import numpy as np
import pytest
import torch
from torch import nn

from qpolicy.layers import quantizable_layers
from qpolicy.sensitivity.te import (
    TEMetric,
    birth_times,
    birth_times_reference,
    channel_entropy,
    layer_te,
    square_maps,
)

pytest.importorskip("ripser")


def test_birth_time_by_hand():
    # edges by descending weight: (0,1), (0,3), (1,2), (2,3) closes the chordless square 0-1-2-3 at step 4
    u = np.zeros((4, 4))
    for (i, j), w in {(0, 1): 6, (0, 3): 5, (1, 2): 4, (2, 3): 3, (0, 2): 2, (1, 3): 1}.items():
        u[i, j] = w
    assert birth_times(u[None]).tolist() == [4] == birth_times_reference(u[None]).tolist()
    # a triangle closing first is filled at once: no birth until the square closes without a chord
    assert birth_times(np.zeros((1, 3, 3))).tolist() == [0]


@pytest.mark.parametrize("h", [4, 5, 7, 8, 12, 16])
def test_fast_path_equals_persistent_homology_on_random_maps(h):
    rng = np.random.default_rng(h)
    maps = rng.normal(size=(60, h, h))
    assert np.array_equal(birth_times(maps), birth_times_reference(maps))
    ties = rng.integers(0, 3, size=(60, h, h)).astype(float)  # many equal weights
    assert np.array_equal(birth_times(ties), birth_times_reference(ties))


@pytest.mark.parametrize("first", [1, 3, 8])
def test_top_k_passes_and_boundary_ties_are_exact(first):
    # a short first pass forces the 8x passes; coarse values put ties across the top-k boundary; -0.0 == 0.0
    rng = np.random.default_rng(first)
    maps = np.concatenate([rng.normal(size=(40, 9, 9)), rng.integers(0, 2, size=(40, 9, 9)),
                           np.zeros((2, 9, 9)), -np.zeros((2, 9, 9)), np.maximum(rng.normal(size=(40, 9, 9)), 0)])
    maps = maps.astype(np.float32)
    assert np.array_equal(birth_times(maps, first=first), birth_times_reference(maps))
    assert np.array_equal(birth_times(maps, first=first), birth_times(maps, first=10_000))


def test_fast_path_equals_reference_on_real_feature_maps(shared_home):
    import qpolicy as qp

    model = qp.models.load("resnet20")
    x = next(iter(qp.data.loader("cifar10", "test", batch_size=8)))[0]
    outs = {}
    for name in ("layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: outs.setdefault(n, o))
    with torch.no_grad():
        model(x)
    for out in outs.values():
        maps = square_maps(out)[:, :6].reshape(-1, out.shape[-1], out.shape[-1])  # 8 images x 6 channels
        assert np.array_equal(birth_times(maps), birth_times_reference(maps))


def test_square_maps_for_linear_and_non_square():
    lin = square_maps(torch.arange(10.0).reshape(1, 10))
    assert lin.shape == (1, 1, 4, 4) and lin[0, 0, 2, 2] < 0  # padded below every entry
    rect = square_maps(torch.ones(2, 3, 4, 6))
    assert rect.shape == (2, 3, 6, 6) and rect[0, 0, 5, 5] == 0.0


def test_channel_entropy_rules():
    births = np.array([[1, 0, 5], [2, 0, 5], [1, 0, 5], [2, 3, 5]] * 5)  # 20 images, 3 channels
    h = channel_entropy(births, n_edges=28, min_rate=0.1, eps=0.01)
    assert h[0] == pytest.approx(np.log(2))  # two equally likely birth times
    assert h[1] == pytest.approx(0.0)  # births at 25% of images, all at step 3
    assert h[2] == pytest.approx(0.0)  # always the same step
    rare = channel_entropy(np.array([[0]] * 19 + [[4]]), n_edges=28, min_rate=0.1, eps=0.01)
    assert rare[0] == pytest.approx(0.01 * np.log(28))  # selective rate 5% < 10%
    assert layer_te(np.array([1.0, 3.0])) == pytest.approx((1 + 9) / 4)
    assert layer_te(np.array([1.0, 3.0]), "uniform") == pytest.approx(2.0)


def test_planted_structure_ranks_first():
    """A layer with input-dependent maps has high TE; a layer whose maps are constant has almost none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[1].weight.zero_()  # constant output: every image has the same (tied) filtration
    model.input_shape = (3, 8, 8)
    x = torch.randn(64, 3, 8, 8)
    te = TEMetric(label=0, batch_size=64).layer_scores(model, [(x, torch.zeros(64, dtype=torch.long))],
                                                        quantizable_layers(model))
    assert te["0"] > 10 * te["1"]


def test_te_score_table_is_linear_in_bits():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    model.input_shape = (3, 8, 8)
    calib = [(torch.randn(32, 3, 8, 8), torch.zeros(32, dtype=torch.long))]
    w, a = TEMetric(batch_size=32).score(model, calib, layers=quantizable_layers(model), bits=(2, 4, 8), seed=0)
    assert w["0"][8] == 0 and w["0"][2] == pytest.approx(1.5 * w["0"][4]) and w == a  # TE * (8 - b)
