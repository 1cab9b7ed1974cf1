"""k-means weight clustering (quant/kmeans.py, Han, Mao & Dally 2016, section 3) against the optimal scalar
quantizer of a Gaussian (Lloyd–Max, computed here in closed form and checked against Max 1960), its fixed
point checked by brute force (nearest centroid, centroid = cluster mean), its storage arithmetic (eq. 1),
and centroid fine-tuning (eq. 3) against a brute-force sum and against autograd. Fresh random data."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitransformers.quant.kmeans import ClusteredLinear, centroid_gradient, kmeans_quantize


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mse(q, w) -> float:
    return (q.dequantize().double() - w.double()).square().mean().item()


# --- the reference: Lloyd–Max quantizer of N(0, 1) ----------------------------------------------------------------


def pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-t * t / 2) / math.sqrt(2 * math.pi)


def cell_moments(levels: torch.Tensor):
    """For the cells (a, b] of ascending levels (thresholds halfway between them, the outer ones ±∞), the
    Gaussian integrals P = ∫ φ, M1 = ∫ x φ = φ(a) − φ(b) and M2 = ∫ x² φ = P + a φ(a) − b φ(b)."""
    inf = torch.tensor([math.inf], dtype=torch.float64)
    edges = torch.cat([-inf, (levels[1:] + levels[:-1]) / 2, inf])
    a, b = edges[:-1], edges[1:]
    x_pdf = lambda t: torch.where(t.isinf(), 0.0, t * pdf(t))  # t φ(t) → 0 at ±∞
    p = torch.special.ndtr(b) - torch.special.ndtr(a)
    return p, pdf(a) - pdf(b), p + x_pdf(a) - x_pdf(b)


def lloyd_max_gaussian(levels: int) -> tuple[torch.Tensor, float]:
    """The minimum-MSE `levels`-level quantizer of N(0, 1) by Lloyd's fixed point on the density itself
    (Max 1960): each level the conditional mean M1 / P of its cell. Returns the levels and the MSE
    Σ (M2 − 2 c M1 + c² P), all in closed form, float64."""
    c = torch.linspace(-2, 2, levels, dtype=torch.float64)
    for _ in range(20_000):
        p, m1, _ = cell_moments(c)
        c, moved = m1 / p, (m1 / p - c).abs().max()
        if moved < 1e-13:
            break
    p, m1, m2 = cell_moments(c)
    return c, (m2 - 2 * c * m1 + c * c * p).sum().item()


# Max 1960, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory IT-6, Table I (normal density, optimal
# non-uniform levels): mean squared error 0.03454 for 8 levels and 0.009497 for 16. The closed form above
# gives 0.034548 and 0.009501 (a trapezoid integration of (x − Q(x))² φ(x) agrees to 12 digits); Max's
# 1960 numbers differ in the 4th digit.
MAX_1960_MSE = {8: 0.03454, 16: 0.009497}


@pytest.fixture(scope="module")
def gaussian_1m() -> torch.Tensor:
    return randn(2**20, seed=1960)


@pytest.mark.parametrize("levels", [8, 16])
def test_lloyd_max_reference_agrees_with_max_1960(levels):
    levels_ref, mse_ref = lloyd_max_gaussian(levels)
    assert mse_ref == pytest.approx(MAX_1960_MSE[levels], rel=1e-3)
    assert torch.all(levels_ref.diff() > 0) and torch.allclose(levels_ref, -levels_ref.flip(0))  # symmetric


@pytest.mark.parametrize("levels", [8, 16])
def test_kmeans_on_a_million_gaussian_draws_reaches_the_lloyd_max_mse(gaussian_1m, levels):
    levels_ref, mse_ref = lloyd_max_gaussian(levels)
    q = kmeans_quantize(gaussian_1m, bits=int(math.log2(levels)))
    assert mse(q, gaussian_1m) == pytest.approx(mse_ref, rel=0.01)
    # the sample optimum wanders along the flat directions of the MSE, by about 0.02 at 1M draws
    assert (q.codebook.double() - levels_ref).abs().max() < 0.05


# --- the fixed point: codebook, nearest centroid, cluster means ---------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_codebook_is_sorted_and_unique(bits, per_channel):
    q = kmeans_quantize(randn(16, 512), bits=bits, per_channel=per_channel)
    codebook = q.codebook.reshape(-1, 2**bits)  # (rows, 2^b)
    assert q.codebook.shape == ((16, 2**bits) if per_channel else (2**bits,))
    assert torch.all(codebook.diff(dim=1) > 0)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == q.shape == (16, 512)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_every_weight_maps_to_its_nearest_centroid(bits, per_channel):
    w = randn(12, 300) * 0.05
    q = kmeans_quantize(w, bits=bits, per_channel=per_channel)
    codebook = q.codebook.reshape(-1, 1, 2**bits)  # (rows or 1, 1, 2^b)
    nearest = (w.unsqueeze(-1) - codebook).abs().min(dim=-1).values  # brute force over all centroids: (12, 300)
    assert ((q.dequantize() - w).abs() - nearest).max() <= 1e-7


@pytest.mark.parametrize("per_channel", [False, True])
def test_each_centroid_is_the_mean_of_its_cluster(per_channel):
    w = randn(6, 400, seed=3)
    q = kmeans_quantize(w, bits=3, per_channel=per_channel, max_iter=10_000, tol=0.0)  # run to the fixed point
    rows = 6 if per_channel else 1
    codes, values = q.codes.reshape(rows, -1), w.double().reshape(rows, -1)
    for r in range(rows):
        for k in range(8):
            members = values[r][codes[r] == k]
            assert len(members) > 0
            assert q.codebook.reshape(rows, 8)[r, k].item() == pytest.approx(members.mean().item(), abs=1e-6)


def test_a_row_with_fewer_distinct_values_than_centroids_is_kept_exactly():
    w = torch.tensor([0.3, -1.2, 2.5])[torch.randint(0, 3, (4, 50))] * torch.tensor([[1.0], [0.1], [7.0], [-2.0]])
    for per_channel in (False, True):
        assert torch.equal(kmeans_quantize(w, bits=4, per_channel=per_channel).dequantize(), w)


def test_per_channel_fits_rows_of_different_scales_better():
    w = randn(64, 256) * torch.logspace(-2, 0, 64).unsqueeze(1)  # row scales from 0.01 to 1
    layer, channel = kmeans_quantize(w, bits=4), kmeans_quantize(w, bits=4, per_channel=True)
    assert mse(channel, w) <= mse(layer, w)
    relative = lambda q: ((q.dequantize() - w).norm(dim=1) / w.norm(dim=1))  # (64,): error of each row
    assert relative(channel).max() < 0.15 < relative(layer).max()  # per layer, the small rows are lost


def test_linear_init_spaces_the_centroids_over_min_max_and_converges():
    w = randn(32, 128, seed=4)
    start = kmeans_quantize(w, bits=3, init="linear", max_iter=0)
    assert torch.allclose(start.codebook, torch.linspace(w.min(), w.max(), 8), atol=1e-6)
    assert mse(kmeans_quantize(w, bits=4, init="linear"), w) == pytest.approx(mse(kmeans_quantize(w, bits=4), w), rel=0.05)


# --- storage ------------------------------------------------------------------------------------------------------


def test_nbytes_and_bits_per_weight_closed_forms():
    w = randn(64, 96)
    n = w.numel()
    layer, channel = kmeans_quantize(w, bits=4), kmeans_quantize(w, bits=4, per_channel=True)
    assert layer.nbytes == n // 2 + 16 * 4 and channel.nbytes == n // 2 + 64 * 16 * 4
    assert layer.bits_per_weight == pytest.approx(4 + 16 * 32 / n)
    assert channel.bits_per_weight == pytest.approx(4 + 16 * 32 / 96)
    assert 32 / layer.bits_per_weight == pytest.approx(n * 32 / (n * 4 + 16 * 32))  # eq. 1, b = 32, k = 16
    odd = kmeans_quantize(randn(7, 5), bits=3)  # 35 codes of 3 bits: ceil(105 / 8) = 14 bytes
    assert odd.nbytes == 14 + 8 * 4 and odd.bits_per_weight == pytest.approx(8 * 46 / 35)


# --- centroid fine-tuning (section 3.3, eq. 3) --------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_centroid_gradient_is_the_sum_of_the_weight_gradients(per_channel):
    q = kmeans_quantize(randn(5, 9), bits=2, per_channel=per_channel)
    grad = randn(5, 9, seed=5, dtype=torch.float64)
    expected = torch.zeros(5 if per_channel else 1, 4, dtype=torch.float64)
    for i in range(5):
        for j in range(9):
            expected[i if per_channel else 0, int(q.codes[i, j])] += grad[i, j]
    got = centroid_gradient(q.codes, grad, 4, per_channel=per_channel)
    assert torch.allclose(got, expected if per_channel else expected[0], atol=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
def test_autograd_through_the_codebook_lookup_gives_eq_3(per_channel):
    base = nn.Linear(24, 10)
    layer = ClusteredLinear(base, bits=3, per_channel=per_channel)
    x, target = randn(7, 24, seed=6), randn(7, 10, seed=7)
    F.mse_loss(layer(x), target).backward()
    dense = layer.weight.detach().clone().requires_grad_()  # the same W = C[I], as a free weight
    F.mse_loss(F.linear(x, dense, base.bias), target).backward()
    assert torch.allclose(layer.codebook.grad, centroid_gradient(layer.codes, dense.grad, 8, per_channel=per_channel), atol=1e-6)


def test_fine_tuning_moves_the_centroids_and_keeps_the_weights_shared():
    layer = ClusteredLinear(nn.Linear(32, 16), bits=2)
    codes, start = layer.codes.clone(), layer.codebook.detach().clone()
    for step in range(3):  # plain SGD on the centroids: C_k <- C_k − lr · ∂L/∂C_k
        layer.codebook.grad = None
        layer(randn(8, 32, seed=step)).square().mean().backward()
        with torch.no_grad():
            layer.codebook -= 0.1 * layer.codebook.grad
    assert not torch.allclose(layer.codebook, start) and torch.equal(layer.codes, codes)
    assert layer.weight.unique().numel() <= 4


def test_clustered_linear_computes_with_the_dequantized_weight():
    base = nn.Linear(20, 12)
    layer = ClusteredLinear(base, bits=4, per_channel=True)
    q = kmeans_quantize(base.weight, bits=4, per_channel=True)
    x = randn(3, 20, seed=8)
    assert torch.allclose(layer(x), F.linear(x, q.dequantize(), base.bias), atol=1e-6)


# --- inputs, seeds, errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gives_a_float32_dequantized_weight(dtype):
    w = randn(32, 64).to(dtype)
    q = kmeans_quantize(w, bits=4)
    assert q.dequantize().dtype == torch.float32 and q.codebook.dtype == torch.float32
    assert torch.equal(q.codebook, kmeans_quantize(w.float(), bits=4).codebook)
    assert mse(q, w) < 0.015  # ≈ 0.0095 for N(0, 1) at 16 levels


def test_same_seed_same_result_whatever_the_global_rng():
    w = randn(40, 50)
    a = kmeans_quantize(w, bits=5, seed=7)
    torch.rand(100)
    b = kmeans_quantize(w, bits=5, seed=7)
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.codes, b.codes)
    seeds = [kmeans_quantize(w, bits=5, seed=s, max_iter=0).codebook for s in (7, 8)]  # the k-means++ draws alone
    assert not torch.equal(*seeds)


@pytest.mark.parametrize("bits", [0, 9, 2.5])
def test_bits_outside_1_to_8_are_refused_with_the_fix(bits):
    with pytest.raises(ValueError, match=r"from 1 to 8.*pass bits in 1\.\.8"):
        kmeans_quantize(randn(4, 4), bits=bits)


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="use per_channel=False"):
        kmeans_quantize(randn(16), per_channel=True)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans_quantize(randn(4, 4), init="forgy")
    with pytest.raises(ValueError, match="NaN or inf"):
        kmeans_quantize(randn(4, 4) / torch.tensor(0.0))


# --- scale: a 1M-element weight, and CUDA --------------------------------------------------------------------------


def test_a_1024x1024_weight_clusters_within_the_relative_mse_budget_per_channel_no_worse():
    """A 1M-element weight with rows of different scales: relative MSE under 2% at 4 bits and 1e-4 at 8 bits,
    per channel never worse than per layer. (Its timing is a benchmark's business, not a test's.)"""
    w = randn(1024, 1024, seed=9) * torch.rand(1024, 1, generator=torch.Generator().manual_seed(10))
    errors = {}
    for bits in (4, 8):
        for per_channel in (False, True):
            q = kmeans_quantize(w, bits=bits, per_channel=per_channel)
            errors[bits, per_channel] = mse(q, w) / w.square().mean().item()
    assert errors[4, True] <= errors[4, False] < 0.02 and errors[8, True] <= errors[8, False] < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_cuda_gives_the_cpu_codebook_for_the_same_seed(bits, per_channel):
    w = randn(512, 2048, seed=11)
    cpu = kmeans_quantize(w, bits=bits, per_channel=per_channel, seed=3)
    cuda = kmeans_quantize(w.cuda(), bits=bits, per_channel=per_channel, seed=3)
    assert cuda.codebook.is_cuda and cuda.codes.is_cuda
    torch.testing.assert_close(cuda.codebook.cpu(), cpu.codebook, atol=1e-5, rtol=0)
    assert (cuda.codes.cpu() == cpu.codes).float().mean() > 0.999
