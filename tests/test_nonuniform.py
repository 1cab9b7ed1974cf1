"""NF4, FP4 and log2 codebook quantization: codebooks, nearest-entry rule, parity with bitsandbytes code for code,
error budgets against float64, NF4 against uniform 4-bit, and storage in closed form."""

import math

import pytest
import torch

from minitransformers.quant.nonuniform import (
    DYNAMIC_CODEBOOK,
    FP4_CODEBOOK,
    NF4_CODEBOOK,
    DoubleQuantized,
    dequantize_codebook,
    log2_codebook,
    nf4_codebook_from_quantiles,
    per_element,
    quantize_codebook,
    quantize_fp4,
    quantize_log2,
    quantize_nf4,
    to_blocks,
)

QUANTIZERS = {"nf4": quantize_nf4, "fp4": quantize_fp4}
# numel a multiple of 64; not a multiple of 64 (blocks straddle rows); odd. Not rows of a multiple of 16 that
# is not one of 64, such as (128, 96): bnb 0.50.2's AVX-512 dequantize_4bit indexes absmax as if blocks never
# straddled rows and returns wrong values there (its quantize_4bit agrees with ours).
SHAPES = [(256, 384), (63, 100), (33, 101)]


def bnb_functional():
    return pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed; pip install the test extra")


def largest_gap(codebook: torch.Tensor) -> float:
    return codebook.sort().values.diff().max().item()


# ---- codebooks ----


def test_nf4_table_is_regenerated_from_normal_quantiles():
    regenerated = nf4_codebook_from_quantiles()
    assert (regenerated - NF4_CODEBOOK).abs().max().item() <= 2.5e-7  # 2 float32 ulps at 0.7
    assert (NF4_CODEBOOK < 0).sum() == 7 and (NF4_CODEBOOK == 0).sum() == 1 and (NF4_CODEBOOK > 0).sum() == 8
    assert NF4_CODEBOOK[0] == -1 and NF4_CODEBOOK[-1] == 1 and bool((NF4_CODEBOOK.diff() > 0).all())


def test_codebooks_equal_the_bitsandbytes_tables():
    F = bnb_functional()
    assert torch.equal(NF4_CODEBOOK, F.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(FP4_CODEBOOK, F.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(DYNAMIC_CODEBOOK, F.create_dynamic_map())


def test_fp4_is_a_sign_bit_over_e2m1_magnitudes():
    assert torch.equal(FP4_CODEBOOK[8:], -FP4_CODEBOOK[:8])  # bit 3 is the sign
    assert (FP4_CODEBOOK[:8] * 12).tolist() == [0, 1 / 16, 8, 12, 4, 6, 2, 3]  # s e1 e0 m, normalised by 12


def test_dynamic_map_has_256_sorted_entries_from_minus_0_993_to_1():
    assert DYNAMIC_CODEBOOK.numel() == 256 and bool((DYNAMIC_CODEBOOK.diff() > 0).all())
    assert DYNAMIC_CODEBOOK[-1] == 1 and DYNAMIC_CODEBOOK[0] == pytest.approx(-0.99297, abs=1e-5)
    assert (DYNAMIC_CODEBOOK == 0).sum() == 1 and DYNAMIC_CODEBOOK[DYNAMIC_CODEBOOK > 0].min() < 1e-6


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_log2_codebook_is_a_sign_bit_over_powers_of_two_and_zero(bits):
    codebook = log2_codebook(bits)
    half = 2 ** (bits - 1)
    assert codebook.numel() == 2**bits and torch.equal(codebook[half:], -codebook[:half])
    assert codebook[:half].tolist() == [2.0**-e for e in range(half - 1)] + [0.0]


def test_log2_refuses_more_bits_than_a_nibble():
    with pytest.raises(ValueError, match="bits must be 2, 3 or 4"):
        quantize_log2(torch.randn(64), bits=5)


# ---- the nearest-entry rule ----


@pytest.mark.parametrize("name", ["nf4", "fp4", "log2", "dynamic"])
def test_quantize_codebook_picks_the_nearest_entry(name):
    codebook = {"nf4": NF4_CODEBOOK, "fp4": FP4_CODEBOOK, "log2": log2_codebook(4), "dynamic": DYNAMIC_CODEBOOK}[name]
    x = torch.rand(20_000) * 2.2 - 1.1  # (n,) past both ends too
    codes = quantize_codebook(x, codebook)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    distance = (x.double()[:, None] - codebook.double()[None]).abs()  # (n, K) brute force
    chosen = distance.gather(1, codes.long()[:, None]).squeeze(1)
    assert (chosen - distance.min(dim=1).values).max().item() <= 1e-7  # only float32 rounding of a midpoint
    assert torch.equal(dequantize_codebook(codes, codebook), codebook[codes.long()])


def test_a_value_on_a_midpoint_takes_the_smaller_entry():
    midpoints = (NF4_CODEBOOK[:-1] + NF4_CODEBOOK[1:]) / 2  # (15,)
    assert quantize_codebook(midpoints, NF4_CODEBOOK).tolist() == list(range(15))


def test_fp4_small_values_take_plus_zero_at_or_below_0_and_minus_zero_above_as_bitsandbytes_cpu():
    small = torch.rand(100) * 2e-3  # under the first midpoint, 1/384
    assert set(quantize_codebook(-small, FP4_CODEBOOK).tolist()) == {0}
    assert set(quantize_codebook(small + 1e-6, FP4_CODEBOOK).tolist()) == {8}


# ---- parity with bitsandbytes ----


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double_quant"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_codes_absmax_and_values_equal_bitsandbytes(shape, quant_type, double_quant):
    F = bnb_functional()
    w = torch.randn(shape)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    ours = QUANTIZERS[quant_type](w, block_size=64, double_quant=double_quant)
    reference = F.dequantize_4bit(packed, state)
    assert torch.equal(ours.codes, packed.flatten())  # every packed byte, the spare nibble of an odd numel too
    if not double_quant:
        assert torch.equal(ours.absmax, state.absmax)
        assert torch.equal(ours.dequantize(), reference)
        return
    nested = ours.absmax
    assert torch.equal(nested.offset, state.offset) and torch.equal(nested.scale, state.state2.absmax)
    # bnb's CPU search for the 8-bit map sometimes takes the farther neighbour of a value within 1.5e-5 of a
    # midpoint; ours is the nearest (checked in float64), bnb's at most 3e-5 (of the 256-block scale) farther.
    absmax = to_blocks(w.reshape(-1), 64)[1].double()  # (n_blocks,) the exact absmax
    centred = (absmax - nested.offset.double()) / per_element(nested.scale.double(), 256, absmax.numel())
    distance = (centred[:, None] - DYNAMIC_CODEBOOK.double()[None]).abs()  # (n_blocks, 256)
    ours_d = distance.gather(1, nested.codes.long()[:, None]).squeeze(1)
    bnb_d = distance.gather(1, state.absmax.long()[:, None]).squeeze(1)
    assert (ours_d - distance.min(dim=1).values).max().item() <= 1e-7
    assert (bnb_d - ours_d).max().item() <= 3e-5
    same = nested.codes == state.absmax  # (n_blocks,)
    assert same.float().mean().item() >= 0.98
    same_element = per_element(same, 64, w.numel()).view(shape)
    assert torch.equal(ours.dequantize()[same_element], reference[same_element])


def test_bfloat16_weights_give_the_same_codes_and_bfloat16_values_as_bitsandbytes():
    F = bnb_functional()
    w = torch.randn(128, 192).to(torch.bfloat16)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    ours = quantize_nf4(w)
    assert torch.equal(ours.codes, packed.flatten()) and torch.equal(ours.absmax, state.absmax)
    assert torch.equal(ours.dequantize(), F.dequantize_4bit(packed, state))


# ---- error budgets against float64 ----


@pytest.mark.parametrize("name, double_quant", [("nf4", False), ("nf4", True), ("fp4", False), ("fp4", True), ("log2", False)])
def test_each_error_is_at_most_half_the_largest_gap_times_the_block_absmax(name, double_quant):
    w = torch.randn(96, 200) * 0.05
    q = quantize_log2(w) if name == "log2" else QUANTIZERS[name](w, double_quant=double_quant)
    absmax = to_blocks(w.reshape(-1).double(), 64)[1]  # (n_blocks,) exact
    absmax_error = (q.block_absmax().double() - absmax).abs()  # 0 unless double-quantized
    if double_quant:  # the absmax themselves: half the dynamic map's largest gap times their 256-block scale
        assert isinstance(q.absmax, DoubleQuantized)
        budget = largest_gap(DYNAMIC_CODEBOOK) / 2 * per_element(q.absmax.scale.double(), 256, absmax.numel())
        assert bool((absmax_error <= budget + 1e-6 * absmax).all())
    else:
        assert torch.equal(absmax_error, torch.zeros_like(absmax_error))
    error = (q.dequantize().double() - w.double()).reshape(-1).abs()
    # |w - q·â| <= |w - q·a| + |q|·|a - â| <= gap/2 · a + |a - â|, plus float32 rounding of q·â
    budget = largest_gap(q.codebook) / 2 * absmax + absmax_error
    assert bool((error <= per_element(budget, 64, w.numel()) + 1e-6 * per_element(absmax, 64, w.numel())).all())


def test_nf4_has_lower_mse_than_uniform_4bit_on_normal_weights():
    """QLoRA section 3: NF4 fits normally distributed weights better than int4 at the same block size. Measured: 0.73."""
    w = torch.randn(512, 512).double()
    blocks, absmax = to_blocks(w.reshape(-1), 64)  # (n_blocks, 64), (n_blocks,)
    levels = torch.round(blocks / absmax[:, None] * 7).clamp(-7, 7)  # symmetric absmax int4: 15 levels
    uniform = (levels / 7 * absmax[:, None]).reshape(w.shape)
    mse_uniform = ((uniform - w) ** 2).mean().item()
    mse_nf4 = ((quantize_nf4(w.float()).dequantize().double() - w) ** 2).mean().item()
    assert mse_nf4 / mse_uniform < 0.8


def test_log2_relative_error_is_at_most_a_third_in_range_and_small_values_become_zero():
    w = torch.randn(128, 192)
    q = quantize_log2(w, bits=4)
    absmax = per_element(q.absmax, 64, w.numel()).view(w.shape)
    dequantized = q.dequantize()
    in_range = w.abs() >= absmax / 64  # 1/64 is the smallest power of two of 4 bits
    relative = ((dequantized - w).abs() / w.abs())[in_range]
    assert relative.max().item() <= 1 / 3 + 1e-6
    assert in_range.float().mean().item() > 0.9
    assert bool((dequantized[w.abs() < absmax / 128] == 0).all())
    exponents = torch.log2((dequantized / absmax).abs()[dequantized != 0])
    assert torch.equal(exponents, exponents.round()) and exponents.min() >= -6 and exponents.max() <= 0


# ---- storage ----


def test_storage_is_4_5_bits_plain_and_about_4_127_with_double_quantization():
    w = torch.randn(256, 384)
    n = w.numel()
    plain, double = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert plain.nbytes == n // 2 + 4 * (n // 64)
    assert plain.bits_per_weight == 4 + 32 / 64
    assert double.nbytes == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4
    assert double.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n, rel=1e-12)
    assert double.bits_per_weight - 4 == pytest.approx(0.127, abs=1e-3)  # QLoRA section 3: 0.5 -> 0.127 bits


def test_odd_numel_and_narrow_codes_are_counted_as_stored():
    w = torch.randn(33, 101)  # 3333 values: 1667 bytes of codes, 53 blocks
    assert quantize_fp4(w).nbytes == 1667 + 4 * 53
    assert quantize_log2(w, bits=3).nbytes == 1667 + 4 * 53  # 3-bit codes still take a nibble each


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_restores_shape_and_dtype(dtype):
    w = torch.randn(4, 6, 40).to(dtype)
    q = quantize_nf4(w, double_quant=True)
    assert q.codes.shape == (480,) and q.codes.dtype == torch.uint8 and q.shape == w.shape and q.block_size == (64,)
    out = q.dequantize()
    assert out.shape == w.shape and out.dtype == dtype
    assert (out.float() - w.float()).abs().max().item() < 0.5


# ---- errors ----


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.randint(0, 5, (64,)))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.randn(0, 8))
    with pytest.raises(ValueError, match="positive even number"):
        quantize_nf4(torch.randn(64), block_size=33)
    w = torch.randn(4, 64)
    w[2, 7] = float("inf")
    with pytest.raises(ValueError, match="block 2"):
        quantize_fp4(w)
