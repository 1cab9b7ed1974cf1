"""W4A16 on the GPU: x (M, K) in 16 bits (or fp32) times a packed 4-bit weight, dequantized inside the matmul.

The weight is read in place, as WeightOnlyLinear stores it (the formats' `to_storage`, quant/uniform.py and
quant/nonuniform.py, whose `packed_4bit` makes the `Packed4Bit` view below), two 4-bit codes a byte with element 2i
in the HIGH nibble of byte i (quant/pack.py, bitsandbytes' order). Two formats, y = x Ŵᵀ + b:

    int4 per group (GPTQ / AWQ style; quant/uniform.py), each row of W packed on its own:
        packed      (N, ceil(K / 2)) uint8      row n, input k: byte k // 2 of row n (an odd K leaves a spare nibble)
        scale       (N, K / G) fp32             one per G inputs of a row
        zero_point  (N, K / G) uint8, affine    symmetric: none, the codes [-7, 7] are stored + 8, so Z = 8
        ŵ[n, k] = (code - Z) · scale[n, k // G]
    NF4 / FP4 blocks (QLoRA, Dettmers et al. 2023, section 3; bitsandbytes; quant/nonuniform.py), W flattened:
        packed      (ceil(N K / 2),) uint8      flat index f = n K + k: byte f // 2
        absmax      (N K / B,) fp32             one per B consecutive flat elements (a block may span two rows)
        codebook    (16,) fp32                  code -> value in [-1, 1]
        ŵ[n, k] = codebook[code] · absmax[f // B]
      double quantization stores absmax as uint8 codes into bitsandbytes' 256-entry dynamic map (`absmax_table`),
      with an fp32 scale per 256 blocks and one fp32 offset; the kernel decodes it in place,
        absmax[b] = absmax_table[absmax_codes[b]] · absmax_scale[b // 256] + absmax_offset,
      so it reads 1 byte a block instead of 4 (the same arithmetic as DoubleQuantized.dequantize).

When K is even and a whole number of groups, the two layouts agree: byte j of row n sits at n K / 2 + j and
holds inputs 2j (high nibble) and 2j + 1 (low), which share one scale. Each program reads its tile of Ŵᵀ as a
(BLOCK_K / 2, BLOCK_N) tile of BYTES, contiguous along K, so the load is coalesced and vectorised; splits each
byte into its high and low codes, giving the weights of the even and of the odd inputs; reads the tile's
BLOCK_K / G scales once per row (decoding double-quantized absmax there) and broadcasts them. The tl.dot
kernels interleave the two halves back into K order (tl.join) and take one dot with a contiguous x tile; the
GEMV multiplies them by x at the even and at the odd inputs. The codebook value (NF4 / FP4) comes from a 16-entry table
loaded once per program, through tl.gather. The dequantized weight lives in registers only, never in memory.
That is the point of W4A16 (Frantar et al.'s GPTQ kernels, AWQ, Marlin): a matmul over few tokens reads
each weight once and does 2 M flops with it, so at M = 1 it is bound by memory, and reading 4.5 bits a weight
instead of 16 makes it up to 16 / 4.5 ≈ 3.6× (int4, G = 128: 4.25 bits, 3.8×) faster than bf16. Three variants:

- One token (M = 1, decoding a single sequence), `w4a16_gemv_kernel`: a GEMV with no tensor cores. Each thread
  multiplies the weights it dequantized by x and keeps fp32 partial sums in registers, summed over K once at the
  end; split-K as below, but in one launch (the last slice of a column tile writes the output), and software
  pipelined so that several tiles a program are in flight. A tl.dot would first stage every dequantized tile
  through shared memory into the tensor cores' operand layout, which moves 2 bytes a weight through shared
  memory to use 1 of 16 rows.
- Small M (2 … 16), `w4a16_splitk_kernel`: still memory-bound. With K = N = 8192, tiles of BLOCK_N columns give
  only 8192 / 64 = 128 programs, fewer than it takes to keep an H100's 132 SMs streaming. Split-K
  cuts K into SPLIT_K slices as well, so SPLIT_K times as many programs load weights at once; each adds its
  partial product into an fp32 output with atomic adds (the slice of program k = 0 also adds the bias) and one
  cast to x's dtype follows. BLOCK_M = 16, the smallest tensor-core tile: the rows past M are masked, and cost
  only the multiplies, which are cheap here. (Marlin gets further with hand-written asynchronous copies and a
  weight layout shuffled for the tensor cores; this kernel keeps WeightOnlyLinear's layout.)
- Large M, `w4a16_tiled_kernel`: with many tokens each weight tile is reused BLOCK_M times and the matmul is
  compute-bound, so it is a plain tiled tl.dot GEMM (program order grouped for the L2 cache) whose W tile is
  dequantized on the way in; the output is written once, bias added, in x's dtype.

Block sizes are autotuned over a few configs each. The plain-torch reference, `w4a16_linear_reference`, is
F.linear over the format's own dequantized weight: WeightOnlyLinear computes it, for every format, wherever the
kernels do not run. `w4a16_linear` picks the kernels on CUDA when Triton imports and the weight is `kernel_ready` (K even,
power-of-two groups), the reference elsewhere; `pick_kernel` chooses among the three by M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import autotuned, grouped_tile, jit, tl, triton, triton_runs_on

SMALL_M = 16  # up to this many tokens, the split-K kernel


@dataclass
class Packed4Bit:
    """A 4-bit weight W (N, K) as the kernels read it: a WeightOnlyLinear's buffers, in place (see the module
    docstring). Made by a format's `packed_4bit(layout, tensors)` (quant/format.py)."""

    packed: torch.Tensor  # int4: (N, ceil(K / 2)) uint8; codebook: (ceil(N K / 2),) uint8
    scale: torch.Tensor  # int4: (N, K / G) fp32; codebook: absmax (N K / B,) fp32, or its uint8 codes if double-quantized
    shape: tuple[int, int]  # (N, K)
    group_size: int  # int4: G, inputs per scale; codebook: B, flat elements per absmax
    decode: Callable[[], Any]  # () -> the format's QuantizedWeight of the same buffers, whose dequantize defines Ŵ
    zero_point: torch.Tensor | None = None  # int4 affine: (N, K / G) uint8; None: symmetric, codes stored + 8
    codebook: torch.Tensor | None = None  # NF4 / FP4: (16,) fp32; None: int4
    absmax_scale: torch.Tensor | None = None  # double quantization: (ceil(N K / B / 256),) fp32
    absmax_offset: torch.Tensor | None = None  # double quantization: () fp32
    absmax_table: torch.Tensor | None = None  # double quantization: (256,) fp32, the dynamic map
    absmax_block_size: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_table is not None

    @property
    def kernel_ready(self) -> bool:
        """Whether the kernels take this weight: K even and a whole number of groups (blocks) of a power-of-two size
        G ≥ 2, so that every row starts on a byte and every byte's two codes share a scale. Real models always
        qualify; the dispatch sends the others to the reference."""
        K, G = self.shape[1], self.group_size
        return K % 2 == 0 and K % G == 0 and G >= 2 and G & (G - 1) == 0

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Ŵ (N, K), by the format's own dequantize (the kernels decode the same buffers in registers)."""
        return self.decode().dequantize(dtype)


# --- the reference: F.linear over the dequantized weight ----------------------------------------------------------


def w4a16_linear_reference(x: torch.Tensor, w, bias: torch.Tensor | None) -> torch.Tensor:
    """x (…, K) -> (…, N): F.linear over w.dequantize(x.dtype), in x's dtype. `w` is anything with the formats'
    dequantize(dtype): a Packed4Bit, a QuantizedWeight or a WeightOnlyLinear.

    The one reference of the weight-only product, for every format, 4-bit or not: WeightOnlyLinear computes this
    wherever the kernels do not run, and the kernel tests hold the kernels to it. Ŵ comes from the format's own
    dequantize, not from a second decoding of the packed layout here: that dequantize is what the quantizer tests
    check (against bitsandbytes for NF4 / FP4) and what save -> load round-trips bit for bit, so a kernel-side copy
    would be a second definition of Ŵ to keep equal to it."""
    return F.linear(x, w.dequantize(x.dtype), None if bias is None else bias.to(x.dtype))


# --- the kernels ---------------------------------------------------------------------------------------------------


@jit
def per_byte(t, BLOCK_K: tl.constexpr):
    """(S, BN) values of the tile's S groups -> (BLOCK_K / 2, BN), each repeated over the bytes of its group."""
    S: tl.constexpr = t.shape[0]
    return tl.reshape(tl.broadcast_to(t[:, None, :], (S, BLOCK_K // 2 // S, t.shape[1])), (BLOCK_K // 2, t.shape[1]))


@jit
def codebook_table(codebook_ptr, CODEBOOK: tl.constexpr):
    """The (16,) codebook values, loaded once per program (zeros for int4, which has no codebook). tl.gather turns
    codes into values from this table: Triton places it in shared memory and each code costs one shared-memory
    load, where a pointer load per code (codebook_ptr + code) became a 4-byte copy, pipelined through shared
    memory, for every weight."""
    if CODEBOOK:
        return tl.load(codebook_ptr + tl.arange(0, 16))
    return tl.zeros((16,), dtype=tl.float32)


@jit
def tile_scales(
    k0, n, N, K, scale_ptr, zero_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr,
    GROUP: tl.constexpr, DQ_GROUP: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The scales of the tile starting at input k0, outputs n (1, BLOCK_N): (S, BLOCK_N) fp32, one per group of
    each row, S = BLOCK_K / GROUP (1 when a group covers the tile), double-quantized absmax decoded; and the
    offset `code_values` subtracts, 2^23 + Z (S, BLOCK_N): Z the stored zero points (affine int4) or 8 (symmetric)."""
    S: tl.constexpr = BLOCK_K // GROUP if BLOCK_K >= GROUP else 1
    g = tl.arange(0, S)[:, None]  # (S, 1)
    group = n * (K // GROUP) + k0 // GROUP + g  # (S, BN) indices into the (N, K / G) scales
    first = (k0 + g * GROUP < K) & (n < N)  # (S, BN)
    if DOUBLE_QUANT:
        absmax_code = tl.load(scale_ptr + group, mask=first, other=0).to(tl.int32)
        scale = tl.load(dq_table_ptr + absmax_code) * tl.load(dq_scale_ptr + group // DQ_GROUP, mask=first, other=0.0)
        scale += tl.load(dq_offset_ptr)
    else:
        scale = tl.load(scale_ptr + group, mask=first, other=0.0)
    offset = tl.full(scale.shape, 8388616.0, tl.float32)  # symmetric: Z = 8
    if AFFINE:
        offset = 8388608.0 + tl.load(zero_ptr + group, mask=first, other=0).to(tl.float32)
    return scale, offset


@jit
def code_values(codes, offset, table, CODEBOOK: tl.constexpr):
    """int32 codes in [0, 16) -> fp32: codebook[code] (NF4 / FP4, a shared-memory gather), or code - Z for int4,
    read without an int-to-float conversion (a quarter-rate instruction on the SM, one a weight): the bits of
    2^23 OR the code, as a float, are 2^23 + code exactly, and `offset` = 2^23 + Z takes the rest away."""
    if CODEBOOK:
        return tl.reshape(tl.gather(table, tl.reshape(codes, (codes.numel,)), axis=0), codes.shape)
    return (codes | 0x4B000000).to(tl.float32, bitcast=True) - offset  # 0x4B000000: the fp32 bits of 2^23


@jit
def dequantize_pairs(
    k0, b, n, N, K, row_bytes, packed_ptr, scale_ptr, zero_ptr, table, dq_scale_ptr, dq_offset_ptr, dq_table_ptr,
    GROUP: tl.constexpr, DQ_GROUP: tl.constexpr, CODEBOOK: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Ŵᵀ at the even inputs 2b and the odd inputs 2b + 1, for bytes b (BLOCK_K/2, 1) of the tile starting at input
    k0 and outputs n (1, BLOCK_N): two (BLOCK_K/2, BLOCK_N) fp32 tiles, 0 outside W. Byte b of row n (row_bytes =
    K / 2 apart) holds both."""
    inside = (b < row_bytes) & (n < N)  # (BK/2, BN); `b < row_bytes`, not `2b < K`: Triton sees it constant over 16 bytes
    byte = tl.load(packed_ptr + n * row_bytes + b, mask=inside, other=0).to(tl.int32)  # coalesced, vectorised
    scale, offset = tile_scales(k0, n, N, K, scale_ptr, zero_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr, GROUP, DQ_GROUP, AFFINE, DOUBLE_QUANT, BLOCK_K)
    scale, offset = per_byte(scale, BLOCK_K), per_byte(offset, BLOCK_K)
    return code_values(byte >> 4, offset, table, CODEBOOK) * scale, code_values(byte & 0xF, offset, table, CODEBOOK) * scale


@jit
def tile_bytes(k0, BLOCK_K: tl.constexpr):
    """(BLOCK_K / 2,) the bytes of a row that hold inputs k0 … k0 + BLOCK_K - 1. The hints (k0 is a multiple of
    BLOCK_K; row_bytes a multiple of 16 when Triton specialises it so) let the loads be 16 bytes wide, not one."""
    return tl.max_contiguous(tl.multiple_of(k0 // 2 + tl.arange(0, BLOCK_K // 2), BLOCK_K // 2), BLOCK_K // 2)


@jit
def accumulate_tile(
    acc, x_ptr, rows, cols, k0, M, N, K, row_bytes, packed_ptr, scale_ptr, zero_ptr, table, dq_scale_ptr,
    dq_offset_ptr, dq_table_ptr, GROUP: tl.constexpr, DQ_GROUP: tl.constexpr, CODEBOOK: tl.constexpr, AFFINE: tl.constexpr,
    DOUBLE_QUANT: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """acc (BLOCK_M, BLOCK_N) + x[rows, k0 : k0 + BLOCK_K] Ŵᵀ[k0 : k0 + BLOCK_K, cols], one dot over the whole tile."""
    b = tile_bytes(k0, BLOCK_K)  # (BK/2,)
    w_even, w_odd = dequantize_pairs(
        k0, b[:, None], cols[None, :], N, K, row_bytes, packed_ptr, scale_ptr, zero_ptr, table, dq_scale_ptr, dq_offset_ptr,
        dq_table_ptr, GROUP, DQ_GROUP, CODEBOOK, AFFINE, DOUBLE_QUANT, BLOCK_K,
    )  # (BK/2, BN) each  # fmt: skip
    # interleave the even and odd inputs back into K order: (BK/2, BN, 2) -> (BK/2, 2, BN) -> (BK, BN), row 2b + parity
    w = tl.reshape(tl.permute(tl.join(w_even, w_odd), (0, 2, 1)), (BLOCK_K, w_even.shape[1]))
    k = tl.max_contiguous(tl.multiple_of(k0 + tl.arange(0, BLOCK_K), BLOCK_K), BLOCK_K)  # (BK,) inputs
    x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=(rows[:, None] < M) & (k[None, :] < K), other=0.0)  # (BM, BK)
    return tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)


SPLITK_CONFIGS = [  # NF4's codebook gathers are pipelined too and fill shared memory; the last config fits them all
    {"BLOCK_N": 128, "BLOCK_K": 256, "SPLIT_K": 4, "num_warps": 4, "num_stages": 3},
    {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 8, "num_warps": 4, "num_stages": 3},
    {"BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_N": 256, "BLOCK_K": 128, "SPLIT_K": 4, "num_warps": 8, "num_stages": 3},
    {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 8, "num_warps": 4, "num_stages": 2},
]  # fmt: skip
SPLITK_INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 2}


@autotuned(SPLITK_CONFIGS, SPLITK_INTERPRETER_CONFIG, key=["M_CLASS", "N", "K"], reset_to_zero=["out_ptr"])
def w4a16_splitk_kernel(
    x_ptr, out_ptr, bias_ptr, M, N, K, row_bytes, M_CLASS,
    packed_ptr, scale_ptr, zero_ptr, codebook_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr, GROUP: tl.constexpr, DQ_GROUP: tl.constexpr,
    CODEBOOK: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """out (M, N) fp32, zeroed, += x[:, slice] Ŵᵀ[slice, :] for this program's slice of K (+ b from slice 0); M ≤ BLOCK_M."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)  # (BLOCK_M,) tokens, all of them
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K  # K inputs per slice, whole blocks
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    table = codebook_table(codebook_ptr, CODEBOOK)
    for k0 in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, K), BLOCK_K):
        acc = accumulate_tile(
            acc, x_ptr, rows, cols, k0, M, N, K, row_bytes, packed_ptr, scale_ptr, zero_ptr, table, dq_scale_ptr,
            dq_offset_ptr, dq_table_ptr, GROUP, DQ_GROUP, CODEBOOK, AFFINE, DOUBLE_QUANT, DOT_PRECISION, BLOCK_K,
        )  # fmt: skip
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)  # (BLOCK_N,)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    tl.atomic_add(out_ptr + rows[:, None] * N + cols[None, :], acc, mask=(rows[:, None] < M) & (cols[None, :] < N))


@jit
def gemv_loads(
    k0, cols, N, K, row_bytes, x_ptr, packed_ptr, scale_ptr, zero_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr,
    GROUP: tl.constexpr, DQ_GROUP: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, X_WORDS: tl.constexpr,
    BLOCK_K: tl.constexpr, S: tl.constexpr, BYTES: tl.constexpr,
):  # fmt: skip
    """The loads of the GEMV's tile at input k0: the weight's bytes (S, BYTES, BLOCK_N) uint8, x at those bytes
    (S, BYTES, 1) (its int32 words twice when X_WORDS, else x at the even and at the odd inputs), and the scales and
    offsets (S, BLOCK_N)."""
    n = cols[None, None, :]  # (1, 1, BN)
    b = tl.multiple_of(k0 // 2, BLOCK_K // 2) + tl.arange(0, S)[:, None, None] * BYTES + tl.max_contiguous(tl.arange(0, BYTES), BYTES)[None, :, None]  # (S, BYTES, 1)
    byte = tl.load(packed_ptr + n * row_bytes + b, mask=(b < row_bytes) & (n < N), other=0)  # 16-byte loads
    if X_WORDS:
        xa = tl.load(x_ptr + b, mask=b < row_bytes, other=0)
        xb = xa
    else:
        xa = tl.load(x_ptr + 2 * b, mask=b < row_bytes, other=0.0)
        xb = tl.load(x_ptr + 2 * b + 1, mask=b < row_bytes, other=0.0)
    scale, offset = tile_scales(k0, cols[None, :], N, K, scale_ptr, zero_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr, GROUP, DQ_GROUP, AFFINE, DOUBLE_QUANT, BLOCK_K)
    return byte, xa, xb, scale, offset


GEMV_CONFIGS = [  # NUM_STAGES: tiles in flight a program, through shared memory (cp.async); 1: plain loads, none ahead
    {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 8, "NUM_STAGES": 3, "num_warps": 8},
    {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 8, "NUM_STAGES": 4, "num_warps": 8},
    {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 8, "NUM_STAGES": 4, "num_warps": 4},
    {"BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 16, "NUM_STAGES": 3, "num_warps": 4},  # narrow layers (k, v: N = 1024)
    {"BLOCK_N": 128, "BLOCK_K": 256, "SPLIT_K": 8, "NUM_STAGES": 3, "num_warps": 8},
    {"BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 4, "NUM_STAGES": 4, "num_warps": 4},
    {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 8, "NUM_STAGES": 1, "num_warps": 8},
]  # fmt: skip
GEMV_INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 2, "NUM_STAGES": 2}


@autotuned(GEMV_CONFIGS, GEMV_INTERPRETER_CONFIG, key=["N", "K"])
def w4a16_gemv_kernel(
    x_ptr, out_ptr, bias_ptr, sums_ptr, arrived_ptr, N, K, row_bytes,
    packed_ptr, scale_ptr, zero_ptr, codebook_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr, GROUP: tl.constexpr, DQ_GROUP: tl.constexpr,
    CODEBOOK: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, HAS_BIAS: tl.constexpr,
    X_WORDS: tl.constexpr, X_BF16: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """out (N,) in x's dtype = x Ŵᵀ + b, one token, in one launch: each program adds x[slice] Ŵᵀ[slice, cols] for
    its slice of K into the fp32 `sums` (N,), then counts itself in `arrived` (one int32 per column tile); the
    last of the SPLIT_K programs of a tile reads the sums (an atomic add of 0, so from where the atomics add),
    zeroes them and its counter, adds b and writes `out`: the buffers are zero again for the next call. (A zeroed
    buffer and a copy out would be two more launches a layer, as many as the GEMV itself in a decode step.)

    No tl.dot: each thread multiplies the codes it read by x and adds them into its own registers, and the tile is
    summed over K once, after the loop. The tile is (S, BYTES, BLOCK_N): S groups of BYTES bytes, so a group's
    scale (S, 1, BLOCK_N) broadcasts over its bytes in registers and multiplies the two inputs of a byte once,
    (c_even x_even + c_odd x_odd) · scale. X_WORDS: x is 16-bit and read as int32 words, the inputs 2b and 2b + 1
    of byte b in one word, so x arrives in the tile's own layout, one 4-byte word a byte. The loop is software
    pipelined (`tl.range(num_stages=NUM_STAGES)`: Triton copies the next tiles into shared memory with cp.async
    while this one is multiplied), so several tiles a program are in flight: with one at a time the H200 read the
    weight at 1.2 TB/s, a third of its copy rate (Little's law: bytes in flight = bandwidth × latency)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    S: tl.constexpr = BLOCK_K // GROUP if BLOCK_K >= GROUP else 1
    BYTES: tl.constexpr = BLOCK_K // 2 // S  # bytes of one group inside the tile
    per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K  # K inputs per slice, whole blocks
    lo = pid_k * per_split
    hi = tl.minimum(lo + per_split, K)
    table = codebook_table(codebook_ptr, CODEBOOK)
    acc = tl.zeros((S, BYTES, BLOCK_N), dtype=tl.float32)  # partial sums of byte position (s, j), column n
    args = (cols, N, K, row_bytes, x_ptr, packed_ptr, scale_ptr, zero_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr)
    for k0 in tl.range(lo, hi, BLOCK_K, num_stages=NUM_STAGES):
        byte, xa, xb, scale, offset = gemv_loads(k0, *args, GROUP, DQ_GROUP, AFFINE, DOUBLE_QUANT, X_WORDS, BLOCK_K, S, BYTES)
        if X_WORDS:  # one int32 word holds x[2b] (low half) and x[2b + 1] (high half)
            if X_BF16:  # a bf16 is the top half of an fp32
                x_even, x_odd = (xa << 16).to(tl.float32, bitcast=True), (xa & -65536).to(tl.float32, bitcast=True)
            else:
                x_even = (xa & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
                x_odd = ((xa >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            x_even, x_odd = xa.to(tl.float32), xb.to(tl.float32)
        codes = byte.to(tl.int32)
        offset = offset[:, None, :]
        w_even, w_odd = code_values(codes >> 4, offset, table, CODEBOOK), code_values(codes & 0xF, offset, table, CODEBOOK)
        acc += (w_even * x_even + w_odd * x_odd) * scale[:, None, :]
    tl.atomic_add(sums_ptr + cols, tl.sum(tl.sum(acc, axis=1), axis=0), mask=cols < N)  # (BLOCK_N,) this slice's part
    if tl.atomic_add(arrived_ptr + pid_n, 1) == SPLIT_K - 1:  # acq_rel: the other slices' sums are in
        out = tl.atomic_add(sums_ptr + cols, 0.0, mask=cols < N)  # (BLOCK_N,) the whole sums, read where the atomics add
        tl.store(sums_ptr + cols, tl.zeros_like(out), mask=cols < N)  # every slice has added: nothing else touches them
        tl.store(arrived_ptr + pid_n, 0)
        if HAS_BIAS:
            out += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + cols, out.to(out_ptr.dtype.element_ty), mask=cols < N)


TILED_CONFIGS = [
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 3},
]  # fmt: skip
TILED_INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 128, "GROUP_M": 2}


@autotuned(TILED_CONFIGS, TILED_INTERPRETER_CONFIG, key=["M_CLASS", "N", "K"])
def w4a16_tiled_kernel(
    x_ptr, out_ptr, bias_ptr, M, N, K, row_bytes, M_CLASS,
    packed_ptr, scale_ptr, zero_ptr, codebook_ptr, dq_scale_ptr, dq_offset_ptr, dq_table_ptr, GROUP: tl.constexpr, DQ_GROUP: tl.constexpr,
    CODEBOOK: tl.constexpr, AFFINE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """out tile (BLOCK_M, BLOCK_N) in x's dtype = x Ŵᵀ + b over all of K."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) tokens
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    table = codebook_table(codebook_ptr, CODEBOOK)
    for k0 in range(0, K, BLOCK_K):
        acc = accumulate_tile(
            acc, x_ptr, rows, cols, k0, M, N, K, row_bytes, packed_ptr, scale_ptr, zero_ptr, table, dq_scale_ptr,
            dq_offset_ptr, dq_table_ptr, GROUP, DQ_GROUP, CODEBOOK, AFFINE, DOUBLE_QUANT, DOT_PRECISION, BLOCK_K,
        )  # fmt: skip
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * N + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def weight_args(w: Packed4Bit) -> tuple:
    """The weight's kernel arguments, packed_ptr to DQ_GROUP (None where a format has no such tensor)."""
    return (
        w.packed, w.scale.contiguous(), w.zero_point, w.codebook, w.absmax_scale, w.absmax_offset, w.absmax_table,
        w.group_size, w.absmax_block_size,
    )  # fmt: skip


GEMV_WORKSPACES: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}


def gemv_workspace(device: torch.device, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMV's fp32 sums (N,) and int32 arrival counters (one per column tile of the narrowest config), made
    zero once per device and width and left zero by every call. Calls on one stream take turns; two streams
    running GEMVs of the same width at once would share them, which this library never does. Every call of
    `w4a16_linear_triton` (any M) makes its width's, so that generate's eager prefill makes them before a
    compiled decode step runs: made inside torch.compile's CUDA-graph warm-up, they would sit in the graph's
    memory pool, which refuses tensors that outlive a call ("tensors in the cudagraph pool not tracked as outputs")."""
    key = (device, N)
    if key not in GEMV_WORKSPACES:
        tiles = triton.cdiv(N, min(c["BLOCK_N"] for c in [*GEMV_CONFIGS, GEMV_INTERPRETER_CONFIG]))
        GEMV_WORKSPACES[key] = torch.zeros(N, dtype=torch.float32, device=device), torch.zeros(tiles, dtype=torch.int32, device=device)
    return GEMV_WORKSPACES[key]


def pick_kernel(M: int) -> str:
    """One token: the GEMV; up to SMALL_M: split-K with tl.dot; more: the tiled GEMM."""
    return "gemv" if M == 1 else "splitk" if M <= SMALL_M else "tiled"


def w4a16_linear_triton(
    x: torch.Tensor, w: Packed4Bit, bias: torch.Tensor | None, out: torch.Tensor | None = None, kernel: str | None = None
) -> torch.Tensor:
    """The Triton version of `w4a16_linear_reference`, x (…, K) -> (…, N), written into `out` (M, N) when given (the
    tests fill it with NaN first, so that a tile left unwritten shows). `kernel` ("gemv", "splitk", "tiled"; default
    `pick_kernel(M)`) names the kernel, for tests and benchmarks. The split-K kernel adds into a zeroed fp32
    buffer, then copied into `out`; the GEMV writes `out` itself (see its docstring)."""
    if not w.kernel_ready:
        raise InputError(f"the W4A16 kernels need K even and a whole number of power-of-two groups; got (N, K) = {w.shape}, "
                         f"group {w.group_size}: use w4a16_linear, which sends such weights to the reference")
    (N, K), lead = w.shape, x.shape[:-1]
    sums, arrived = gemv_workspace(x.device, N)  # made here at any M: see gemv_workspace
    x2 = x.reshape(-1, K).contiguous()  # (M, K)
    M = x2.shape[0]
    kernel = kernel or pick_kernel(M)
    if (kernel == "gemv" and M != 1) or (kernel == "splitk" and M > SMALL_M):
        raise InputError(f"the {kernel} kernel takes M = 1 (gemv) or M ≤ {SMALL_M} (splitk) tokens, got M = {M}")
    flags = {"CODEBOOK": w.codebook is not None, "AFFINE": w.zero_point is not None, "DOUBLE_QUANT": w.double_quant,
             "HAS_BIAS": bias is not None}  # fmt: skip
    out = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    dot = {"DOT_PRECISION": "ieee" if x.dtype == torch.float32 else None}  # the tl.dot kernels; fp32: no TF32
    shape = (M, N, K, K // 2, triton.next_power_of_2(M))  # M, N, K, row_bytes, M_CLASS
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])  # noqa: E731
    if kernel == "gemv":
        words = x.dtype in (torch.bfloat16, torch.float16)  # two 16-bit inputs a 4-byte word: see the kernel
        w4a16_gemv_kernel[grid](x2.view(torch.int32) if words else x2, out, bias, sums, arrived, N, K, K // 2, *weight_args(w),
                                **flags, X_WORDS=words, X_BF16=x.dtype == torch.bfloat16)  # fmt: skip
        return out.view(*lead, N)
    if kernel == "splitk":
        acc = torch.zeros(M, N, dtype=torch.float32, device=x.device)
        w4a16_splitk_kernel[grid](x2, acc, bias, *shape, *weight_args(w), **flags, **dot, BLOCK_M=SMALL_M)
        return out.copy_(acc).view(*lead, N)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    w4a16_tiled_kernel[grid](x2, out, bias, *shape, *weight_args(w), **flags, **dot)
    return out.view(*lead, N)


@torch.library.custom_op("minitransformers::w4a16_linear", mutates_args=())
def w4a16_linear_op(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, codebook: torch.Tensor | None,
    absmax_scale: torch.Tensor | None, absmax_offset: torch.Tensor | None, absmax_table: torch.Tensor | None,
    bias: torch.Tensor | None, shape: list[int], group_size: int, absmax_block_size: int,
) -> torch.Tensor:  # fmt: skip
    """`w4a16_linear_triton` as one PyTorch operator over a Packed4Bit's fields, for torch.compile: it treats the
    operator as opaque and its kernels go into the step's CUDA graph with the rest. Traced instead, every call site
    of a Triton kernel is compiled to Triton IR again to find what it writes (torch 2.11's user-kernel support,
    `identify_accessed_tensors`): a tiny decoder's 14 int4 layers added 3.3 s to its warm-up, and Llama-8B's 225 ran
    past a 90 s budget, against 38 s in bf16 (experiments/results/kernels_notes.md)."""
    w = Packed4Bit(packed, scale, (shape[0], shape[1]), group_size, decode=None, zero_point=zero_point, codebook=codebook,
                   absmax_scale=absmax_scale, absmax_offset=absmax_offset, absmax_table=absmax_table, absmax_block_size=absmax_block_size)  # fmt: skip
    return w4a16_linear_triton(x, w, bias)


@w4a16_linear_op.register_fake
def _(x, packed, scale, zero_point, codebook, absmax_scale, absmax_offset, absmax_table, bias, shape, group_size, absmax_block_size):
    return x.new_empty(*x.shape[:-1], shape[0])  # (…, N)


def w4a16_linear(x: torch.Tensor, w: Packed4Bit, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Ŵᵀ + b, x (…, K) -> (…, N) in x's dtype. The Triton kernels on CUDA (through `w4a16_linear_op`), the
    reference elsewhere."""
    if triton_runs_on(x, w.packed) and w.kernel_ready:
        return w4a16_linear_op(x, w.packed, w.scale, w.zero_point, w.codebook, w.absmax_scale, w.absmax_offset, w.absmax_table, bias,
                               list(w.shape), w.group_size, w.absmax_block_size)  # fmt: skip
    return w4a16_linear_reference(x, w, bias)
