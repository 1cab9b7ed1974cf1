"""Uniform quantization (quant/uniform.py), tier by tier: parity with torch's own quantization ops and observers;
error budgets against float64 (half a step per element, the Δ²/12 noise model); invariants (code ranges, real zero
exact, block tiling); observers (min-max, percentile, MSE); the straight-through estimator; storage in bytes.
Fresh random data throughout (seeded by conftest)."""

import math
import warnings

import numpy as np
import pytest
import torch

from minitransformers.quant.uniform import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    UniformQuantized,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    quantize_uniform,
)

BITS = range(2, 9)
SCHEMES = [pytest.param(True, id="symmetric"), pytest.param(False, id="affine")]
GRANULARITY = {"per-tensor": (32, 256), "per-channel": (1, 256), "per-group": (1, 64)}  # for x of shape (32, 256)


def per_element(param: torch.Tensor, block_size) -> torch.Tensor:
    """A per-block scale or zero point repeated over its block, to x's shape (independent of the library's reshapes)."""
    for dim, b in enumerate(block_size):
        param = param.repeat_interleave(b, dim=dim)
    return param


def round_trip(x, bits, block_size, symmetric, observer=None):
    scale, zero_point = choose_qparams(x, bits, block_size, symmetric, observer)
    return dequantize(quantize(x, scale, zero_point, bits, block_size, symmetric), scale, zero_point, block_size), scale


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().item()


def torch_observers():
    """torch.ao.quantization's observers (deprecated in favour of torchao, which warns): skip if they are gone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import observer
    except ImportError:
        pytest.skip("torch.ao.quantization.observer is not in this torch")
    return observer


# --- tier 1: parity with torch's quantization ops ------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_dequantized_values_equal_torch_fake_quantize_per_tensor(symmetric):
    """Reference: torch.fake_quantize_per_tensor_affine, same S, Z and [q_min, q_max], every bit width."""
    x = torch.randn(64, 256) * 2 + 0.5
    for bits in BITS:
        (q_min, q_max), (scale, zero_point) = qrange(bits, symmetric), choose_qparams(x, bits, x.shape, symmetric)
        ours = dequantize(quantize(x, scale, zero_point, bits, x.shape, symmetric), scale, zero_point, x.shape)
        ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero_point.item()), q_min, q_max)
        assert torch.equal(ours, ref), bits


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_dequantized_values_equal_torch_fake_quantize_per_channel(symmetric):
    """Reference: torch.fake_quantize_per_channel_affine along axis 0, i.e. our block_size (1, in)."""
    x = torch.randn(64, 256) * torch.rand(64, 1) * 4
    for bits in BITS:
        (q_min, q_max), (scale, zero_point) = qrange(bits, symmetric), choose_qparams(x, bits, (1, 256), symmetric)
        ours = dequantize(quantize(x, scale, zero_point, bits, (1, 256), symmetric), scale, zero_point, (1, 256))
        ref = torch.fake_quantize_per_channel_affine(x, scale.flatten(), zero_point.flatten().int(), 0, q_min, q_max)
        assert torch.equal(ours, ref), bits


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel")
@pytest.mark.parametrize("symmetric", SCHEMES)
def test_int8_codes_equal_torch_quantize_per_channel(symmetric):
    """Reference: the integer codes of torch.quantize_per_channel (qint8 / quint8), int_repr()."""
    x = torch.randn(48, 128) * 3 - 1
    scale, zero_point = choose_qparams(x, 8, (1, 128), symmetric)
    dtype = torch.qint8 if symmetric else torch.quint8
    ref = torch.quantize_per_channel(x, scale.flatten().double(), zero_point.flatten().long(), 0, dtype).int_repr()
    assert torch.equal(quantize(x, scale, zero_point, 8, (1, 128), symmetric), ref)


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_minmax_qparams_equal_torch_observers(symmetric):
    """Reference: torch.ao's MinMaxObserver and PerChannelMinMaxObserver, given our [q_min, q_max]."""
    observer = torch_observers()
    x = torch.randn(32, 128) * 2 + 0.7
    dtype = torch.qint8 if symmetric else torch.quint8
    per_tensor, per_channel = (torch.per_tensor_symmetric, torch.per_channel_symmetric) if symmetric else (torch.per_tensor_affine, torch.per_channel_affine)
    for bits in (2, 4, 8):
        q_min, q_max = qrange(bits, symmetric)
        tensor = observer.MinMaxObserver(dtype=dtype, qscheme=per_tensor, quant_min=q_min, quant_max=q_max)
        channel = observer.PerChannelMinMaxObserver(0, dtype=dtype, qscheme=per_channel, quant_min=q_min, quant_max=q_max)
        for ref, block_size in ((tensor, x.shape), (channel, (1, 128))):
            ref(x)
            ref_scale, ref_zero_point = ref.calculate_qparams()
            scale, zero_point = choose_qparams(x, bits, block_size, symmetric)
            assert torch.equal(scale.flatten(), ref_scale.flatten()), (bits, block_size)
            assert torch.equal(zero_point.flatten().long(), ref_zero_point.flatten().long()), (bits, block_size)


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_ste_gradient_equals_torch_fake_quantize_gradient(symmetric):
    """Reference: the backward of torch.fake_quantize_per_channel_affine, on data half of whose range is clipped."""
    x = torch.randn(32, 128) * 2
    for bits in (4, 8):
        q_min, q_max = qrange(bits, symmetric)
        scale, zero_point = choose_qparams(x * 0.5, bits, (1, 128), symmetric)  # a range too narrow: some x clip
        upstream = torch.randn_like(x)
        ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        fake_quantize(ours, scale, zero_point, bits, (1, 128), symmetric).backward(upstream)
        torch.fake_quantize_per_channel_affine(ref, scale.flatten(), zero_point.flatten().int(), 0, q_min, q_max).backward(upstream)
        assert 0 < (ours.grad == 0).sum() < x.numel()  # both cases occur
        assert torch.equal(ours.grad, ref.grad), bits


# --- tier 3: error budgets against float64 ------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITY)
@pytest.mark.parametrize("symmetric", SCHEMES)
def test_error_is_at_most_half_a_step(granularity, symmetric):
    """Round to nearest: |x − x̂| ≤ S / 2 for every element, in float64. Min-max ranges put every element in range.
    The slack, 4 float32 epsilons of |x|, covers float32's rounding of x / S and of S (q − Z)."""
    x = torch.randn(32, 256)
    block_size = GRANULARITY[granularity]
    for bits in BITS:
        deq, scale = round_trip(x, bits, block_size, symmetric)
        error = (x.double() - deq.double()).abs()
        budget = per_element(scale.double(), block_size) / 2 + 4 * torch.finfo(torch.float32).eps * x.double().abs()
        assert (error <= budget).all(), (bits, (error - budget).max().item())


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_mse_on_uniform_data_is_step_squared_over_12(symmetric):
    """The uniform-noise model (Bennett 1948; Widrow 1956): on uniform data the rounding error is uniform on
    [−Δ/2, Δ/2], so the MSE is Δ²/12. 2^16 samples put the sampling error near 0.35%; allowed 2%."""
    x = torch.rand(2**16) * 2 - 1
    for bits in BITS:
        deq, scale = round_trip(x, bits, x.shape, symmetric)
        assert mse(x, deq) == pytest.approx(scale.item() ** 2 / 12, rel=0.02), bits


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_finer_blocks_never_give_larger_mse(symmetric):
    """Rows whose scales span 3 decades (as in real weights with outlier channels): per-group ≤ per-channel ≤
    per-tensor in MSE at every bit width (Nagel et al., section 2.2.3)."""
    x = torch.randn(32, 256) * 10 ** (torch.rand(32, 1) * 3 - 2)
    for bits in BITS:
        tensor, channel, group = (mse(x, round_trip(x, bits, block_size, symmetric)[0]) for block_size in GRANULARITY.values())
        assert group <= channel <= tensor, (bits, group, channel, tensor)
        assert bits == 2 or channel < tensor / 2, bits  # and by far from 3 bits on (at 2, big rows dominate both)


# --- invariants ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_codes_are_in_range_with_the_scheme_dtype(symmetric):
    """Codes stay in [q_min, q_max] and are int8 (symmetric, restricted range) or uint8 (affine), even for x outside
    the range the scale was chosen for."""
    x = torch.randn(16, 128) * 3
    for bits in BITS:
        q_min, q_max = qrange(bits, symmetric)
        scale, zero_point = choose_qparams(x / 4, bits, (1, 32), symmetric)  # a narrow range: many codes clamp
        codes = quantize(x, scale, zero_point, bits, (1, 32), symmetric)
        assert codes.dtype == (torch.int8 if symmetric else torch.uint8)
        assert codes.min().item() == q_min and codes.max().item() == q_max, bits


def test_restricted_symmetric_range_and_unsigned_affine_range():
    """Symmetric codes are ±(2^(b−1) − 1) (ternary at 2 bits); affine codes are 0 … 2^b − 1."""
    assert [qrange(b, True) for b in (2, 4, 8)] == [(-1, 1), (-7, 7), (-127, 127)]
    assert [qrange(b, False) for b in (2, 4, 8)] == [(0, 3), (0, 15), (0, 255)]


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_quantize_of_dequantize_is_the_identity_on_codes(symmetric):
    """Every code, with random per-group scales over 4 decades and random zero points, survives q → x̂ → q."""
    for bits in BITS:
        q_min, q_max = qrange(bits, symmetric)
        codes = torch.randint(q_min, q_max + 1, (8, 128)).to(torch.int8 if symmetric else torch.uint8)
        scale = 10 ** (torch.rand(8, 4) * 4 - 3)
        zero_point = torch.zeros(8, 4, dtype=torch.int8) if symmetric else torch.randint(0, q_max + 1, (8, 4)).to(torch.uint8)
        again = quantize(dequantize(codes, scale, zero_point, (1, 32)), scale, zero_point, bits, (1, 32), symmetric)
        assert torch.equal(again, codes), bits


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_real_zero_is_exactly_representable(symmetric):
    """Zeros placed among random values get code Z and dequantize to exactly 0 (Jacob et al., section 2.1)."""
    x = torch.randn(16, 128) + 1.5  # mostly positive, so the affine zero point is far from the middle
    x[:, ::7] = 0.0
    for bits in BITS:
        scale, zero_point = choose_qparams(x, bits, (1, 64), symmetric)
        codes = quantize(x, scale, zero_point, bits, (1, 64), symmetric)
        assert torch.equal(codes[:, ::7], per_element(zero_point, (1, 64))[:, ::7]), bits
        assert (dequantize(codes, scale, zero_point, (1, 64))[:, ::7] == 0).all(), bits


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_constant_blocks_give_finite_scales_and_values(symmetric):
    """An all-zero row would give S = 0 without the EPS floor: it must dequantize to exactly 0, not NaN; constant
    nonzero rows come back within a rounding error."""
    x = torch.randn(4, 64)
    x[0], x[1], x[2] = 0.0, 3.0, -2.5
    for bits in BITS:
        deq, scale = round_trip(x, bits, (1, 64), symmetric)
        assert (scale > 0).all() and deq.isfinite().all(), bits
        assert (deq[0] == 0).all(), bits
        torch.testing.assert_close(deq[1:3], x[1:3], rtol=1e-6, atol=0)


def test_blocks_are_in_grid_order():
    """A 3-D tensor in blocks (2, 3, 8): scale[i, j, k] is the absmax of block (i, j, k) / 127, checked by a loop."""
    x = torch.randn(4, 6, 32)
    scale, zero_point = choose_qparams(x, 8, (2, 3, 8), symmetric=True)
    assert scale.shape == zero_point.shape == (2, 2, 4)
    for i, j, k in np.ndindex(2, 2, 4):
        block = x[2 * i : 2 * i + 2, 3 * j : 3 * j + 3, 8 * k : 8 * k + 8]
        assert scale[i, j, k] == block.abs().max() / 127


def test_block_size_that_does_not_tile_raises_naming_the_shapes():
    x = torch.randn(32, 100)
    with pytest.raises(ValueError, match=r"block_size \(1, 64\).*shape \(32, 100\)"):
        choose_qparams(x, 8, (1, 64), symmetric=True)
    with pytest.raises(ValueError, match=r"block_size \(100,\).*shape \(32, 100\)"):
        quantize_uniform(x, block_size=(100,))
    scale, zero_point = choose_qparams(x, 8, (1, 100), symmetric=True)
    with pytest.raises(ValueError, match=r"grid \(32, 4\).*got \(32, 1\)"):
        quantize(x, scale, zero_point, 8, (1, 25), symmetric=True)
    with pytest.raises(ValueError, match=r"grid \(32, 1\).*got \(1, 32\)"):  # a transposed grid is not reordered silently
        quantize(x, scale.T, zero_point.T, 8, (1, 100), symmetric=True)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_bits_outside_2_to_8_raise(bits):
    x = torch.randn(4, 8)
    scale, zero_point = choose_qparams(x, 8, x.shape, symmetric=False)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        choose_qparams(x, bits, x.shape, symmetric=False)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        quantize(x, scale, zero_point, bits, x.shape, symmetric=False)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        quantize_uniform(x, bits)


def test_scales_are_float32_at_least():
    """bf16 ranges are computed in float32; float64 stays float64."""
    x = torch.randn(8, 64)
    assert choose_qparams(x.bfloat16(), 8, (1, 64), True)[0].dtype == torch.float32
    assert choose_qparams(x.double(), 8, (1, 64), True)[0].dtype == torch.float64


# --- observers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_minmax_observer_is_the_min_and_max_over_all_batches(symmetric):
    batches = [torch.randn(8, 32) * s + m for s, m in ((1, 0), (3, 2), (0.5, -4))]
    observer = MinMaxObserver()
    for batch in batches:
        observer.observe(batch)
    everything = torch.cat([b.flatten() for b in batches])
    assert observer.lo == everything.min() and observer.hi == everything.max()
    scale, zero_point = choose_qparams(everything, 8, everything.shape, symmetric)
    observed_scale, observed_zero_point = observer.qparams(8, symmetric)
    assert observed_scale == scale.reshape(()) and observed_zero_point == zero_point.reshape(())


def test_percentile_observer_clips_an_outlier():
    """Reference: numpy's nearest-rank percentile (method="inverted_cdf") for the top, mirrored for the bottom."""
    x = torch.randn(100_000)
    x[123] = 1000.0  # one outlier
    observer, minmax = PercentileObserver(99.99), MinMaxObserver()
    for batch in x.split(30_000):
        observer.observe(batch)
        minmax.observe(batch)
    lo, hi = observer.clip_range(x[None], 8, False)
    assert hi.item() == np.percentile(x.numpy(), 99.99, method="inverted_cdf")
    assert lo.item() == -np.percentile(-x.numpy(), 99.99, method="inverted_cdf")
    assert 3 < hi < 5 and minmax.hi == 1000.0
    scale, _ = observer.qparams(8, symmetric=False)
    assert scale < minmax.qparams(8, symmetric=False)[0] / 100


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_mse_observer_beats_minmax_on_data_with_outliers(symmetric):
    """randn with three 50σ outliers in 30,000 at 4 bits: min-max spends the grid on the outliers and rounds most
    values to 0; the MSE-optimal range clips the outliers (Nagel et al., section 3.1). Clipping costs each outlier
    about 47.5², so it pays only when they are rare: 3 · 47.5² / 30,000 ≈ 0.23 against an MSE near 1."""
    x = torch.randn(30_000)
    x[torch.randperm(x.numel())[:3]] = 50.0 * torch.randn(3).sign()
    observers = MSEObserver(), MinMaxObserver()
    for batch in x.split(10_000):
        for observer in observers:
            observer.observe(batch)
    errors = [mse(x, fake_quantize(x, *observer.qparams(4, symmetric), 4, x.shape, symmetric)) for observer in observers]
    assert errors[0] < errors[1] / 2, errors


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_mse_ranges_are_never_worse_than_minmax_in_any_block(symmetric):
    """The grid includes α = 1, min-max itself, so each block's MSE is at most min-max's; per group at 3 bits."""
    x = torch.randn(16, 256) + torch.randn(16, 256).pow(3)  # heavy tails
    errors = ((round_trip(x, 3, (1, 64), symmetric, observer)[0] - x).pow(2) for observer in (MSEObserver(), None))
    tuned, baseline = (error.reshape(16, 4, 64).mean(-1) for error in errors)  # (rows, groups): the MSE of each block
    assert (tuned <= baseline * (1 + 1e-6)).all()
    assert (tuned < baseline * 0.99).any()  # and it does tune


def test_observer_without_data_raises():
    for observer in (MinMaxObserver(), PercentileObserver(), MSEObserver()):
        with pytest.raises(RuntimeError, match="call observe"):
            observer.qparams(8, symmetric=True)


# --- the straight-through estimator --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symmetric, zero_point, values, inside",
    [  # S = 0.1. Symmetric 8 bits: codes ±127, so x ∈ [−12.75, 12.75) rounds inside. Affine Z = 100: [−10.05, 15.55).
        (True, 0, [0.03, 5.0, -12.6, 12.74, 12.76, 13.0, -12.74, -12.76, -20.0], [1, 1, 1, 1, 0, 0, 1, 0, 0]),
        (False, 100, [0.37, -10.04, -10.06, 15.54, 15.56, 30.0, -30.0], [1, 1, 0, 1, 0, 0, 0]),
    ],
)
def test_ste_gradient_is_one_inside_the_range_and_zero_outside(symmetric, zero_point, values, inside):
    """The clipped STE (Bengio et al. 2013; Nagel et al., section 4.1) on hand-picked values either side of each edge."""
    x = torch.tensor(values, requires_grad=True)
    scale = torch.tensor(0.1)
    zero_point = torch.tensor(zero_point, dtype=torch.int8 if symmetric else torch.uint8)
    upstream = torch.randn(len(values))
    fake_quantize(x, scale, zero_point, 8, x.shape, symmetric).backward(upstream)
    assert torch.equal(x.grad, upstream * torch.tensor(inside, dtype=torch.float32))


@pytest.mark.parametrize("granularity", GRANULARITY)
@pytest.mark.parametrize("symmetric", SCHEMES)
def test_fake_quantize_forward_equals_dequantize_of_quantize(granularity, symmetric):
    x = torch.randn(32, 256) * 2
    block_size = GRANULARITY[granularity]
    for bits in BITS:
        scale, zero_point = choose_qparams(x * 0.7, bits, block_size, symmetric)  # some values clip
        expected = dequantize(quantize(x, scale, zero_point, bits, block_size, symmetric), scale, zero_point, block_size)
        assert torch.equal(fake_quantize(x, scale, zero_point, bits, block_size, symmetric), expected), bits


# --- storage -------------------------------------------------------------------------------------------------------


def test_nbytes_int8_per_channel_symmetric():
    """(out, in) codes, one byte each, plus one float32 scale per row; symmetric zero points (all 0) are not stored."""
    w = torch.randn(48, 256)
    q = quantize_uniform(w, bits=8, block_size=(1, 256), symmetric=True)
    assert isinstance(q, UniformQuantized) and q.shape == w.shape and q.codes.dtype == torch.int8
    assert q.nbytes == 48 * 256 + 48 * 4


def test_nbytes_int4_per_group_affine():
    """Codes packed two per byte, one float32 scale and one uint8 zero point per group of 64."""
    w = torch.randn(48, 256)
    q = quantize_uniform(w, bits=4, block_size=(1, 64), symmetric=False)
    assert q.codes.dtype == torch.uint8 and q.scale.shape == q.zero_point.shape == (48, 4)
    assert q.nbytes == 48 * 256 // 2 + 48 * 4 * (4 + 1)


def test_nbytes_rounds_packed_codes_up_to_whole_bytes():
    q = quantize_uniform(torch.randn(3, 5), bits=4)  # per-tensor: 15 codes of 4 bits = 7.5 bytes
    assert q.nbytes == math.ceil(15 * 4 / 8) + 4


@pytest.mark.parametrize("symmetric", SCHEMES)
def test_quantize_uniform_is_choose_quantize_dequantize(symmetric):
    """The convenience path equals the three primitives; block_size=None means per-tensor."""
    w = torch.randn(24, 128)
    q = quantize_uniform(w, bits=6, symmetric=symmetric)
    assert q.block_size == (24, 128) and q.scale.shape == (1, 1)
    expected, _ = round_trip(w, 6, w.shape, symmetric)
    assert torch.equal(q.dequantize(), expected)
