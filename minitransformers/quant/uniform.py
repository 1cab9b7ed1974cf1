"""Uniform (integer) quantization: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", and Nagel et al. 2021, "A White Paper on Neural Network Quantization".

A real number r is stored as a b-bit integer code q with a real scale S and an integer zero point Z:

    r = S (q − Z)                                                            (Jacob et al., eq. 1)
    q = clamp(round(r / S) + Z, q_min, q_max)                                (Nagel et al., section 2.2)

        r:  S·(q_min − Z)  ...  −S   0   S   2S  ...  S·(q_max − Z)      one grid point every S (the step Δ)
        q:  q_min          ...  Z−1  Z  Z+1  Z+2 ...  q_max              real 0 is exactly the code Z

Two schemes (Nagel et al., sections 2.2 and 2.2.1):
- affine (asymmetric): codes in [0, 2^b − 1] (uint8), S = (max − min) / (2^b − 1), Z = −round(min / S). The range is
  first widened to hold 0 (min ≤ 0 ≤ max), so that real zero, e.g. padding or a ReLU's output, has an exact code
  (Jacob et al., section 2.1).
- symmetric: Z = 0, codes in the *restricted* signed range [−(2^(b−1) − 1), 2^(b−1) − 1] (int8), S = absmax / (2^(b−1) − 1):
  absmax / 127 at 8 bits, as in bitsandbytes' LLM.int8 (Dettmers et al. 2022) and TensorRT (Wu et al. 2020). Why not
  [−2^(b−1), 2^(b−1) − 1]: the restricted grid is symmetric, so q(−x) = −q(x) and both ±absmax land exactly on a
  code; the price is one unused code, −2^(b−1) (1 of 256 at 8 bits, 1 of 16 at 4 bits, 1 of 4 at 2 bits, where the
  grid is ternary {−S, 0, S}). torch's per_tensor_symmetric observer instead spends it with S = absmax / 127.5, which
  clips +absmax by half a step.

Rounding is torch.round, half to even, applied to r / S before Z is added (as Jacob et al. and torch do: with
half-to-even, round(r / S + Z) would differ at ties). `UniformQuantized` holds codes one per byte, unpacked (its
`to_storage` packs 4-bit codes two per byte), and its `nbytes` counts them packed. A block whose values are all 0
would give S = 0 and 0 / 0 = NaN, so S is clamped below by EPS = float32's machine epsilon, as torch's observers do:
such a block quantizes to Z and dequantizes to exactly 0 (the cost: a block whose values are all below about
EPS · q_max rounds to 0 too).

Granularity (Nagel et al., section 2.2.3) is a `block_size` with one entry per dimension, torchao's convention
(torchao.quantization.quant_primitives): each block of that shape gets its own S and Z, so scales are shaped
(shape[0] / block_size[0], shape[1] / block_size[1], …). For a weight (out, in):

    per-tensor  block_size = (out, in)   scale (1, 1)
    per-channel block_size = (1, in)     scale (out, 1)        one per output row
    per-group   block_size = (1, 64)     scale (out, in / 64)  groups of 64 along the input dimension

Range setting (Nagel et al., section 3.1) picks [min, max] per block, or per tensor from calibration batches:
min-max (every value fits; one outlier stretches S for all), a percentile (clips the tails), or the MSE-optimal
clipping range (Banner et al. 2019, "Post training 4-bit quantization of convolutional networks for rapid-deployment",
derive it analytically for assumed distributions; here a grid search finds it on the data).

Quantization-aware training (Nagel et al., section 4.1) runs `fake_quantize`, dequantize(quantize(x)) in the forward,
and passes gradients with the clipped straight-through estimator (Bengio et al. 2013):

    ∂ x̂ / ∂ x = 1  if q_min ≤ round(x / S) + Z ≤ q_max,   0 otherwise

The paper states the test on the real value, S (q_min − Z) ≤ x ≤ S (q_max − Z); testing the rounded code, as torch's
fake_quantize ops do, differs only within half a step outside either edge, and keeps our gradient equal to torch's. S and Z
get no gradient (learning them is LSQ, Esser et al. 2020, not done here). A common choice (Nagel et al., section 2.4)
is symmetric weights, per-tensor or per-channel, and affine activations, at 8 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from ..errors import InputError
from ..kernels.int4_mm import Packed4Bit
from .format import QuantizedWeight, cast, check_stored_bits, register
from .pack import pack_int4, unpack_int4

EPS = torch.finfo(torch.float32).eps  # the smallest scale: keeps all-zero blocks from dividing 0 by 0


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer codes [q_min, q_max]: signed restricted [−(2^(b−1) − 1), 2^(b−1) − 1], or unsigned [0, 2^b − 1]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise InputError(f"bits must be an integer in 2..8 (each code is stored in one int8 or uint8), got {bits!r}")
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def code_dtype(symmetric: bool) -> torch.dtype:
    return torch.int8 if symmetric else torch.uint8


# --- blocks: one (scale, zero point) per block of `block_size` ----------------------------------------------------


def block_grid(shape, block_size) -> tuple[int, ...]:
    """Blocks per dimension, (shape[0] / block_size[0], …), after checking that block_size tiles shape."""
    shape, block_size = tuple(shape), tuple(block_size)
    if len(block_size) != len(shape) or any(b < 1 or s % b for s, b in zip(shape, block_size)):
        per_row = (1,) * (len(shape) - 1) + shape[-1:]
        raise InputError(
            f"block_size {block_size} does not tile a tensor of shape {shape}: it needs one entry per dimension, each "
            f"dividing that dimension; e.g. {shape} for per-tensor, {per_row} for per-row"
        )
    return tuple(s // b for s, b in zip(shape, block_size))


def _as_blocks(x: torch.Tensor, block_size) -> torch.Tensor:
    """View x (d0, d1, …) as (n0, b0, n1, b1, …), where d_i = n_i · b_i."""
    grid = block_grid(x.shape, block_size)
    return x.reshape([v for n, b in zip(grid, block_size) for v in (n, b)])  # (n0, b0, n1, b1, …)


def _per_block(param: torch.Tensor, shape, block_size) -> torch.Tensor:
    """A scale or zero point shaped as the block grid (or one number, for one block), reshaped (n0, 1, n1, 1, …) to
    broadcast over `_as_blocks`."""
    grid = block_grid(shape, block_size)
    if tuple(param.shape) != grid and not param.numel() == math.prod(grid) == 1:
        raise InputError(
            f"expected one scale and zero point per block, a grid {grid} for shape {tuple(shape)} and block_size "
            f"{tuple(block_size)}, got {tuple(param.shape)}; make them with choose_qparams and the same block_size"
        )
    return param.reshape([v for n in grid for v in (n, 1)])  # (n0, 1, n1, 1, …)


def _rows(x: torch.Tensor, block_size) -> torch.Tensor:
    """x with one row per block: (n0 · n1 · …, b0 · b1 · …), rows in the order of the scale grid."""
    d = x.dim()
    blocks = _as_blocks(x, block_size).permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2))  # (n0, n1, …, b0, b1, …)
    return blocks.reshape(math.prod(block_grid(x.shape, block_size)), -1)  # (blocks, elements per block)


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: ranges and scales of bf16 / fp16 tensors are computed in float32, float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


# --- the scheme: scale and zero point, quantize, dequantize -------------------------------------------------------


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, Z) for the real range [lo, hi], elementwise: affine S = (hi − lo) / (2^b − 1), Z = −round(lo / S);
    symmetric S = max(|lo|, |hi|) / (2^(b−1) − 1), Z = 0. Zero points come as uint8 (affine) or int8 (symmetric)."""
    q_min, q_max = qrange(bits, symmetric)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # widen to hold 0, so real 0 has an exact code
    if symmetric:
        scale = (torch.maximum(-lo, hi) / q_max).clamp(min=EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int8)
    scale = ((hi - lo) / (q_max - q_min)).clamp(min=EPS)
    zero_point = (q_min - torch.round(lo / scale)).clamp(q_min, q_max)
    return scale, zero_point.to(torch.uint8)


@torch.no_grad()
def choose_qparams(x: torch.Tensor, bits: int, block_size, symmetric: bool, observer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each block of x, shaped (x.shape[0] / block_size[0], …).

    `observer` sets each block's range with its `clip_range` rule: MinMaxObserver (the default), PercentileObserver
    or MSEObserver. Only its rule is used here, not anything it has observed."""
    observer = MinMaxObserver() if observer is None else observer
    rows = _rows(x.to(_working_dtype(x)), block_size)  # (blocks, elements per block)
    lo, hi = observer.clip_range(rows, bits, symmetric)  # (blocks,) each
    scale, zero_point = qparams_from_range(lo, hi, bits, symmetric)
    grid = block_grid(x.shape, block_size)
    return scale.reshape(grid), zero_point.reshape(grid)


def _unclamped_codes(x, scale, zero_point, block_size) -> torch.Tensor:
    """round(x / S) + Z in x's shape, a float tensor of integers, before the clamp to [q_min, q_max]."""
    blocks = _as_blocks(x, block_size)  # (n0, b0, n1, b1, …)
    s, z = _per_block(scale, x.shape, block_size), _per_block(zero_point, x.shape, block_size)  # (n0, 1, n1, 1, …)
    return (torch.round(blocks / s) + z).reshape(x.shape)


def quantize(x: torch.Tensor, scale, zero_point, bits: int, block_size, symmetric: bool) -> torch.Tensor:
    """Codes q = clamp(round(x / S) + Z, q_min, q_max), round half to even; int8 if symmetric, else uint8."""
    q_min, q_max = qrange(bits, symmetric)
    return _unclamped_codes(x, scale, zero_point, block_size).clamp(q_min, q_max).to(code_dtype(symmetric))


def dequantize(codes: torch.Tensor, scale, zero_point, block_size) -> torch.Tensor:
    """r = S (q − Z), in the scale's dtype (Jacob et al., eq. 1)."""
    blocks = _as_blocks(codes, block_size).to(scale.dtype)  # (n0, b0, n1, b1, …)
    s, z = _per_block(scale, codes.shape, block_size), _per_block(zero_point, codes.shape, block_size)  # (n0, 1, n1, 1, …)
    return ((blocks - z) * s).reshape(codes.shape)


# --- quantization-aware training: fake quantization with the straight-through estimator ---------------------------


class _FakeQuantize(torch.autograd.Function):
    """dequantize(quantize(x)) in the forward; in the backward, the gradient passes where the code was not clamped.

    A torch.autograd.Function rather than the `x + (x̂ − x).detach()` trick: that trick's forward is x + (x̂ − x),
    which can differ from x̂ in the last bit, and it would still need a mask for the clamped elements."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits, block_size, symmetric):
        q_min, q_max = qrange(bits, symmetric)
        codes = _unclamped_codes(x, scale, zero_point, block_size)
        ctx.save_for_backward((codes >= q_min) & (codes <= q_max))  # inside the clipping range
        return dequantize(codes.clamp(q_min, q_max), scale, zero_point, block_size).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point, bits: int, block_size, symmetric: bool) -> torch.Tensor:
    """x̂ = S (clamp(round(x / S) + Z, q_min, q_max) − Z) in x's dtype, with the clipped straight-through gradient:
    1 where round(x / S) + Z is inside [q_min, q_max] (torch.fake_quantize_* use the same test), 0 where clamped."""
    return _FakeQuantize.apply(x, scale, zero_point, bits, tuple(block_size), symmetric)


# --- a quantized tensor --------------------------------------------------------------------------------------------


@register
@dataclass
class UniformQuantized(QuantizedWeight):
    """A tensor stored as b-bit codes with one scale and zero point per block (format "uniform").

    Stored (`to_storage`): codes one per byte, or at 4 bits packed two per byte along each row by `pack_int4`
    (symmetric codes [-7, 7] stored + 8, as [1, 15]); scale; zero_point if affine (a symmetric one is 0)."""

    format: ClassVar[str] = "uniform"
    codes: torch.Tensor  # x's shape; int8 (symmetric) or uint8 (affine), one code per byte
    scale: torch.Tensor  # (n0, n1, …): one per block
    zero_point: torch.Tensor  # (n0, n1, …): int8 zeros (symmetric) or uint8
    bits: int
    block_size: tuple[int, ...]
    symmetric: bool

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """S (q − Z), computed in the scale's dtype (float32, or float64 for a float64 tensor)."""
        return cast(dequantize(self.codes, self.scale, self.zero_point, self.block_size), dtype)

    @property
    def nbytes(self) -> int:
        """Real storage: codes packed, ceil(numel · bits / 8) bytes (4-bit codes two per byte), plus scales and zero
        points at their dtype's size. A symmetric zero point is 0 by definition, so it is not counted."""
        codes = math.ceil(self.codes.numel() * self.bits / 8)
        scales = self.scale.numel() * self.scale.element_size()
        zero_points = 0 if self.symmetric else self.zero_point.numel() * self.zero_point.element_size()
        return codes + scales + zero_points

    def to_storage(self) -> tuple[dict, dict[str, torch.Tensor]]:
        check_stored_bits(self.bits)
        codes = self.codes
        if self.bits == 4:
            codes = pack_int4(codes + 8 if self.symmetric else codes)  # symmetric [-7, 7] -> [1, 15]; (out, in / 2)
        layout = {"shape": list(self.shape), "format": self.format, "bits": self.bits, "block_size": list(self.block_size),
                  "symmetric": self.symmetric}  # fmt: skip
        return layout, {"codes": codes, "scale": self.scale, **({} if self.symmetric else {"zero_point": self.zero_point})}

    @classmethod
    def from_storage(cls, layout: dict, tensors: dict[str, torch.Tensor]) -> UniformQuantized:
        codes, scale, symmetric = tensors["codes"], tensors["scale"], layout["symmetric"]
        if layout["bits"] == 4:
            codes = unpack_int4(codes, layout["shape"][-1])  # (out, in) uint8 in [0, 15]
            codes = codes.to(torch.int8) - 8 if symmetric else codes
        zero_point = torch.zeros_like(scale, dtype=torch.int8) if symmetric else tensors["zero_point"]
        return cls(codes, scale, zero_point, layout["bits"], tuple(layout["block_size"]), symmetric)

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return ["codes", "scale"] + ([] if layout["symmetric"] else ["zero_point"])

    @classmethod
    def packed_4bit(cls, layout: dict, tensors: dict[str, torch.Tensor]) -> Packed4Bit | None:
        """4-bit codes in groups along each row (block_size (1, G)): the int4 layout of the W4A16 kernels."""
        if layout["bits"] != 4 or layout["block_size"][0] != 1:
            return None
        decode = partial(cls.from_storage, layout, tensors)
        return Packed4Bit(tensors["codes"], tensors["scale"], tuple(layout["shape"]), layout["block_size"][1], decode,
                          zero_point=tensors.get("zero_point"))  # fmt: skip


@torch.no_grad()
def quantize_uniform(w: torch.Tensor, bits: int = 8, block_size=None, symmetric: bool = True) -> UniformQuantized:
    """Quantize w with min-max ranges. block_size=None is one block, the whole tensor (per-tensor)."""
    block_size = tuple(w.shape) if block_size is None else tuple(block_size)
    scale, zero_point = choose_qparams(w, bits, block_size, symmetric)
    codes = quantize(w.to(scale.dtype), scale, zero_point, bits, block_size, symmetric)
    return UniformQuantized(codes, scale, zero_point, bits, block_size, symmetric)


# --- observers: the range [lo, hi] of a tensor, from one or many calibration batches ------------------------------


class MinMaxObserver:
    """The running min and max over everything observed (Nagel et al., section 3.1): every value fits in the range."""

    def __init__(self):
        self.lo = self.hi = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.to(_working_dtype(x))
        lo, hi = x.min(), x.max()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def clip_range(self, rows: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of rows (blocks, elements): the min and the max."""
        return rows.amin(dim=-1), rows.amax(dim=-1)

    def qparams(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor (S, Z), 0-d tensors."""
        if self.lo is None:
            raise RuntimeError(f"{type(self).__name__} has observed nothing yet; call observe(x) on calibration batches first")
        return qparams_from_range(self.lo, self.hi, bits, symmetric)


class _SampleObserver:
    """Keeps every observed value, since a percentile or a quantization MSE needs the values themselves, not a running
    summary. Memory grows with what is observed: calibrate on a few batches."""

    def __init__(self):
        self.samples = []

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        self.samples.append(x.detach().to(_working_dtype(x)).flatten())

    def qparams(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor (S, Z), 0-d tensors: `clip_range` on everything observed, as one block."""
        if not self.samples:
            raise RuntimeError(f"{type(self).__name__} has observed nothing yet; call observe(x) on calibration batches first")
        lo, hi = self.clip_range(torch.cat(self.samples)[None], bits, symmetric)  # (1,) each: one row of every sample
        return qparams_from_range(lo[0], hi[0], bits, symmetric)


class PercentileObserver(_SampleObserver):
    """The range from the p-th and (100 − p)-th percentiles, so that the rarest values in each tail are clipped."""

    def __init__(self, percentile: float = 99.99):
        super().__init__()
        if not 50 < percentile <= 100:
            raise InputError(f"percentile must be in (50, 100], e.g. 99.99 clips 0.01% of values in each tail; got {percentile}")
        self.percentile = percentile

    def clip_range(self, rows: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of rows (blocks, n): the values of rank n + 1 − k and k, k = ceil(p / 100 · n) (nearest rank)."""
        n = rows.shape[-1]
        k = min(n, max(1, math.ceil(self.percentile / 100 * n)))
        return rows.kthvalue(n + 1 - k, dim=-1).values, rows.kthvalue(k, dim=-1).values


class MSEObserver(_SampleObserver):
    """The clipping range that minimises the quantization MSE ‖x − x̂‖² (Nagel et al., section 3.1; Banner et al. 2019),
    by grid search: [α · min, α · max] for α = 1/steps, 2/steps, …, 1. α = 1 is min-max, so the MSE found is never
    above min-max's. One α shrinks both ends, so a one-sided range (after a ReLU) stays one-sided."""

    steps = 100

    def clip_range(self, rows: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of rows (blocks, elements): the [α · min, α · max] of lowest MSE; ties keep the wider range."""
        lo, hi = rows.amin(dim=-1), rows.amax(dim=-1)  # (blocks,)
        best_alpha, best_mse = torch.ones_like(lo), torch.full_like(lo, math.inf)
        block = (1, rows.shape[-1])  # each row is a block
        for k in range(self.steps, 0, -1):
            alpha = k / self.steps
            scale, zero_point = (p[:, None] for p in qparams_from_range(alpha * lo, alpha * hi, bits, symmetric))  # (blocks, 1)
            rounded = dequantize(quantize(rows, scale, zero_point, bits, block, symmetric), scale, zero_point, block)
            mse = (rounded - rows).pow(2).mean(dim=-1)  # (blocks,)
            best_alpha = torch.where(mse < best_mse, alpha, best_alpha)
            best_mse = torch.minimum(mse, best_mse)
        return best_alpha * lo, best_alpha * hi
