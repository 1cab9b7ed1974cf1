"""GGUF's block formats as a quantized weight (format "ggml"): Q4_0, Q4_1 and Q8_0 blocks kept as llama.cpp stores them.

io/ggml_blocks.py draws the blocks (llama.cpp's ggml-common.h): 32 consecutive weights of a row share a float16 scale
d (and, for Q4_1, a float16 offset m), and each block is one struct of 18, 20 or 34 bytes,

    Q4_0  │ d │ qs[16] │            w = d · (q − 8)      18 bytes / 32 weights = 4.5 bits a weight
    Q4_1  │ d │ m │ qs[16] │        w = d · q + m        20 bytes / 32 weights = 5.0 bits a weight
    Q8_0  │ d │ qs[32]      │       w = d · q            34 bytes / 32 weights = 8.5 bits a weight

so a weight (out, in) is stored as `blocks`, (out, in / 32 · bytes per block) uint8: row r of W is the in / 32 blocks
of row r of `blocks`, byte for byte as they lie in the GGUF file. The blocks are kept whole rather than split into
codes, scales and offsets: `dequantize` is then io/ggml_blocks.py's own function, the one definition of each block
(and what `read_gguf(...).tensor` computes), `nbytes` is the file's bytes, and the tensor saved is the file's. Its
torchao granularity is block_size (1, 32), one (d, m) per 32 inputs of a row.

A row permutation of W is the same permutation of the rows of `blocks`, since no block spans two rows. llama.cpp
permutes the rows of W_q and W_k (io/llama.py, `unpermute`); `llama.blocks_from_gguf` undoes it on the rows of
blocks, so the layer computes exactly what the dequantized-then-unpermuted float weight computes.

No W4A16 kernel view (`packed_4bit` is None for every type), so WeightOnlyLinear computes F.linear over the
dequantized weight, on CUDA too. The kernels of kernels/int4_mm.py read two codes a byte with input 2i in the high
nibble of byte i and fp32 scales in a tensor of their own; a ggml block interleaves d (and m) with its codes and puts
inputs 0..15 in the low nibbles and 16..31 in the high ones. Reading these blocks in place, a kernel would need:
  - per block, its half d (and m) at bytes 0 (and 2), the codes from byte 2 (Q4_0) or 4 (Q4_1);
  - Q4_0: (q − 8) · d, the kernels' symmetric int4 arithmetic (Z = 8) exactly, with d cast from half;
  - Q4_1: d · q + m, one extra FMA per element. m is a float offset, not an integer zero point (the kernels'
    affine int4 is (q − Z) · s, and m / d is rarely an integer), so the int4 kernels cannot compute it exactly;
  - Q8_0: an 8-bit code a byte, which no W4A16 kernel reads.
Making those kernels (or repacking at load) is issue 21; this file is the correct reference they will be held to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InputError
from ..io.ggml_blocks import BLOCK_TYPES, dequantize
from .format import QuantizedWeight, cast, register

TYPES = ("Q4_0", "Q4_1", "Q8_0")  # the ggml block types kept quantized; F32 / F16 / BF16 tensors load as floats


@register
@dataclass
class GGMLQuantized(QuantizedWeight):
    """A weight (out, in) as rows of llama.cpp blocks of one type: Q4_0, Q4_1 or Q8_0 (see the module docstring)."""

    format: ClassVar[str] = "ggml"
    blocks: torch.Tensor  # (out, in / 32 · bytes per block) uint8, the file's bytes
    type: str  # "Q4_0", "Q4_1" or "Q8_0"

    def __post_init__(self):
        if self.type not in TYPES:
            raise InputError(f"ggml type {self.type!r} is not a block format kept quantized; expected one of {TYPES} (F32 / F16 / BF16 load as floats)")
        nbytes = BLOCK_TYPES[self.type].nbytes
        if self.blocks.dtype != torch.uint8 or self.blocks.dim() != 2 or self.blocks.shape[1] % nbytes:
            raise InputError(f"{self.type} blocks must be uint8 (rows, whole {nbytes}-byte blocks per row), got "
                             f"{self.blocks.dtype} {tuple(self.blocks.shape)}; pass GGUFFile.raw(name) of a 2-D weight")  # fmt: skip

    @property
    def shape(self) -> torch.Size:
        block = BLOCK_TYPES[self.type]
        return torch.Size([self.blocks.shape[0], self.blocks.shape[1] // block.nbytes * block.size])

    @property
    def block_size(self) -> tuple[int, ...]:
        return (1, BLOCK_TYPES[self.type].size)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Ŵ (out, in) in float32 by io/ggml_blocks.py's dequantizer (bit for bit llama.cpp's reference), then cast."""
        return cast(dequantize(self.blocks, self.type).view(self.shape), dtype)

    @property
    def nbytes(self) -> int:
        """The blocks' bytes: out · in / 32 · (18, 20 or 34)."""
        return self.blocks.numel()

    def to_storage(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return {"shape": list(self.shape), "format": self.format, "type": self.type}, {"blocks": self.blocks}

    @classmethod
    def from_storage(cls, layout: dict, tensors: dict[str, torch.Tensor]) -> GGMLQuantized:
        q = cls(tensors["blocks"], layout["type"])
        if list(q.shape) != list(layout["shape"]):
            raise InputError(f"{layout['type']} blocks {tuple(q.blocks.shape)} hold a weight {tuple(q.shape)}, but the layout says {layout['shape']}")
        return q

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return ["blocks"]
