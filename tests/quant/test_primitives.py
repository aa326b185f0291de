import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qpolicy.errors import BitWidthError
from qpolicy.quant.primitives import fake_quantize, fake_quantize_reference, mse_scale, percentile_absmax, qrange

bits_st = st.integers(2, 8)
values = arrays("float32", st.integers(1, 64), elements=st.floats(-100, 100, width=32))


def test_qrange():
    assert qrange(2, True) == (-1, 1) and qrange(8, True) == (-127, 127)
    assert qrange(2, False) == (0, 3) and qrange(8, False) == (0, 255)
    with pytest.raises(BitWidthError):
        qrange(9, True)


@settings(max_examples=150, deadline=None)
@given(x=values, bits=bits_st, signed=st.booleans(), scale=st.floats(1e-3, 10))
def test_error_at_most_half_step_inside_range_and_levels(x, bits, signed, scale):
    x = torch.from_numpy(x)
    s = torch.tensor([scale])
    y = fake_quantize(x, s, bits, signed)
    q_min, q_max = qrange(bits, signed)
    lo, hi = q_min * scale, q_max * scale
    inside = (x >= lo) & (x <= hi)
    assert torch.all((y - x).abs()[inside] <= scale / 2 * (1 + 1e-5) + 1e-6)
    levels = torch.round(y / scale)
    assert torch.all((levels >= q_min) & (levels <= q_max))
    assert torch.unique(levels).numel() <= 2**bits
    assert torch.allclose(y, fake_quantize_reference(x, s, bits, signed))


@settings(max_examples=100, deadline=None)
@given(x=values, bits=bits_st, signed=st.booleans(), scale=st.floats(1e-3, 10))
def test_idempotent(x, bits, signed, scale):
    x = torch.from_numpy(x)
    s = torch.tensor([scale])
    y = fake_quantize(x, s, bits, signed)
    assert torch.allclose(fake_quantize(y, s, bits, signed), y, atol=1e-6 * scale)


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, seed=st.integers(0, 2**16))
def test_per_channel_matches_reference(bits, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 3, 2, 2, generator=g)
    s = torch.rand(5, generator=g) + 0.01
    assert torch.equal(fake_quantize(w, s, bits, True, axis=0), fake_quantize_reference(w, s, bits, True, axis=0))


def test_ste_gradient_passes_inside_and_blocks_outside():
    x = torch.tensor([-5.0, -0.26, 0.0, 0.74, 0.9, 5.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor([0.25]), 3, True)  # levels -3..3, range [-0.75, 0.75]
    y.sum().backward()
    # round(0.9/0.25)=4 > 3 is clipped; round(0.74/0.25)=3 is not
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_scale_gradient_matches_formula():
    x = torch.tensor([0.1, 0.3, 2.0, -2.0])
    s = torch.tensor([0.25], requires_grad=True)
    fake_quantize(x, s, 2, True, grad_scale=0.5).sum().backward()  # levels -1..1
    v = x / 0.25
    expected = 0.5 * float((torch.round(v[:2]) - v[:2]).sum() + 1 + -1)
    assert s.grad.item() == pytest.approx(expected)


def test_per_channel_scale_gradient_shape_and_finite_difference():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    s = torch.tensor([0.3, 0.5, 0.2], requires_grad=True)
    fake_quantize(w, s, 3, True, axis=0).pow(2).sum().backward()
    assert s.grad.shape == (3,)
    assert torch.isfinite(s.grad).all()


def test_mse_scale_never_worse_than_minmax():
    torch.manual_seed(0)
    x = torch.randn(16, 100) * torch.linspace(0.1, 3, 16)[:, None]
    x[0, 0] = 40.0  # an outlier makes min-max waste levels
    for bits in (2, 3, 4, 8):
        s_mse = mse_scale(x, bits, True, axis=0)
        s_mm = x.abs().amax(1) / qrange(bits, True)[1]
        err = [((fake_quantize_reference(x, s, bits, True, axis=0) - x) ** 2).sum(1) for s in (s_mse, s_mm)]
        assert torch.all(err[0] <= err[1] + 1e-6)
    gauss = torch.randn(1, 20_000)
    assert mse_scale(gauss, 3, True)[0] < gauss.abs().max() / 3 * 0.8  # Gaussian tails get clipped at 3 bits


def test_percentile_absmax():
    x = torch.arange(1, 101, dtype=torch.float32)
    assert percentile_absmax(x, 100.0).item() == 100.0
    assert percentile_absmax(-x, 50.0).item() == 50.0
    with pytest.raises(ValueError):
        percentile_absmax(x, 0.0)


@settings(max_examples=60, deadline=None)
@given(bits=bits_st, signed=st.booleans(), seed=st.integers(0, 2**16))
def test_bit_identical_to_pytorch_fused_kernels(bits, signed, seed):
    g = torch.Generator().manual_seed(seed)
    q_min, q_max = qrange(bits, signed)
    x = torch.randn(4, 6, 3, 3, generator=g) * 3
    s = torch.rand(1, generator=g) + 0.05
    zp = torch.zeros((), dtype=torch.int32)
    assert torch.equal(fake_quantize(x, s, bits, signed),
                       torch.fake_quantize_per_tensor_affine(x, s, zp, q_min, q_max))
    sc = torch.rand(4, generator=g) + 0.05
    zeros = torch.zeros(4, dtype=torch.int32)
    assert torch.equal(fake_quantize(x, sc, bits, signed, axis=0),
                       torch.fake_quantize_per_channel_affine(x, sc, zeros, 0, q_min, q_max))


def test_training_and_inference_paths_agree():
    x = torch.randn(64) * 2
    s = torch.tensor([0.3], requires_grad=True)
    with torch.no_grad():
        y_inf = fake_quantize(x, s, 4, True)
    y_train = fake_quantize(x.requires_grad_(), s, 4, True)
    assert y_train.requires_grad and torch.equal(y_train.detach(), y_inf)


def _mse_scale_loop(x, bits, signed, axis=None, grid=100, min_ratio=0.02):
    """The MSE clipping search as first written: one ratio at a time, keeping the first best."""
    from qpolicy.quant.primitives import scale_from_absmax

    flat = x.float().reshape(1, -1) if axis is None else x.float().movedim(axis, 0).reshape(x.shape[axis], -1)
    absmax = flat.abs().amax(dim=1)
    best_err, best = torch.full_like(absmax, float("inf")), scale_from_absmax(absmax, bits, signed)
    q_min, q_max = qrange(bits, signed)
    for ratio in torch.linspace(min_ratio, 1.0, grid).tolist():
        s = scale_from_absmax(absmax * ratio, bits, signed)
        err = ((torch.clamp(torch.round(flat * (1.0 / s)[:, None]), q_min, q_max) * s[:, None] - flat) ** 2).sum(1)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, s, best)
    return best


@pytest.mark.parametrize("shape, axis, signed", [((16, 27), 0, True), ((64, 576), 0, True), ((10, 64), 0, True),
                                                 ((4096,), None, False), ((300,), None, True), ((3, 5), 0, True)])
def test_mse_scale_in_chunks_equals_the_one_ratio_loop(shape, axis, signed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) if signed else torch.rand(shape, generator=g)
    for bits in (2, 3, 4, 6, 8):
        assert torch.equal(mse_scale(x, bits, signed, axis=axis), _mse_scale_loop(x, bits, signed, axis=axis))
