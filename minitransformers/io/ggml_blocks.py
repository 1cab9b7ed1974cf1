"""The ggml tensor types that io/gguf.py reads, dequantized to float32: one small function per type.

The block layouts are those of llama.cpp's ggml-common.h (`ggml_half` is an IEEE float16, every number
little-endian). A quantized tensor is cut into blocks of 32 consecutive weights along its contiguous dimension
(GGUF's ne[0], torch's last); each block is stored as one struct:

    #define QK8_0 32
    typedef struct { ggml_half d; int8_t qs[QK8_0]; } block_q8_0;                   34 bytes
        ┌──────────┬───────────────────────────────────────┐
        │ d: f16   │ qs[0..31]: int8                       │          w[j] = d · qs[j]
        └──────────┴───────────────────────────────────────┘
    #define QK4_0 32
    typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;              18 bytes
        ┌──────────┬───────────────────────┐
        │ d: f16   │ qs[0..15]: 2 × uint4  │                          w[j] = d · (q[j] − 8)
        └──────────┴───────────────────────┘
    #define QK4_1 32
    typedef struct { ggml_half d; ggml_half m; uint8_t qs[QK4_1 / 2]; } block_q4_1; 20 bytes
        ┌──────────┬──────────┬───────────────────────┐
        │ d: f16   │ m: f16   │ qs[0..15]: 2 × uint4  │             w[j] = d · q[j] + m
        └──────────┴──────────┴───────────────────────┘

    the 4-bit codes of byte qs[j], j = 0..15:   q[j] = qs[j] & 0x0F  (low nibble: weights 0..15)
                                                q[j + 16] = qs[j] >> 4  (high nibble: weights 16..31)

F32, F16 and BF16 have no blocks (a block of one element); BF16 is the top half of an F32. The arithmetic is
float32 and in the order written (d · q first, then + m), as ggml-quants.c's reference `dequantize_row_*` and
the `gguf` package do, so the results agree bit for bit.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..errors import InputError


def _f32(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.float32).clone()  # a copy: the caller owns its memory, never a view of the file


def _f16(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.float16).float()


def _bf16(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.bfloat16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) bytes -> (n, 32) codes: the low nibbles are weights 0..15, the high nibbles 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _half(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The f16 field at byte `at` of each block, as a float32 column (n, 1)."""
    return blocks[:, at : at + 2].view(torch.float16).float()


def _q8_0(raw: torch.Tensor) -> torch.Tensor:
    blocks = raw.view(-1, 34)  # (n, 34)
    d, qs = _half(blocks, 0), blocks[:, 2:].view(torch.int8)  # (n, 1), (n, 32)
    return (d * qs.float()).reshape(-1)


def _q4_0(raw: torch.Tensor) -> torch.Tensor:
    blocks = raw.view(-1, 18)  # (n, 18)
    d, q = _half(blocks, 0), _nibbles(blocks[:, 2:])  # (n, 1), (n, 32)
    return (d * (q.float() - 8)).reshape(-1)


def _q4_1(raw: torch.Tensor) -> torch.Tensor:
    blocks = raw.view(-1, 20)  # (n, 20)
    d, m, q = _half(blocks, 0), _half(blocks, 2), _nibbles(blocks[:, 4:])  # (n, 1), (n, 1), (n, 32)
    return (d * q.float() + m).reshape(-1)


class BlockType(NamedTuple):
    size: int  # weights per block
    nbytes: int  # bytes per block
    dequantize: Callable[[torch.Tensor], torch.Tensor]  # flat uint8 bytes of whole blocks -> flat float32


BLOCK_TYPES: dict[str, BlockType] = {
    "F32": BlockType(1, 4, _f32),
    "F16": BlockType(1, 2, _f16),
    "BF16": BlockType(1, 2, _bf16),
    "Q8_0": BlockType(32, 34, _q8_0),
    "Q4_0": BlockType(32, 18, _q4_0),
    "Q4_1": BlockType(32, 20, _q4_1),
}


def dequantize(raw: torch.Tensor, type_name: str) -> torch.Tensor:
    """The float32 weights, flat and in file order, of `raw`: the uint8 bytes of whole blocks of one type."""
    block = BLOCK_TYPES[type_name]
    raw = raw.reshape(-1)
    if raw.dtype != torch.uint8 or raw.numel() % block.nbytes:
        raise InputError(f"{type_name}: expected uint8 bytes of whole {block.nbytes}-byte blocks, got {raw.numel()} of {raw.dtype}")
    return block.dequantize(raw)
