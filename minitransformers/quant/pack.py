"""4-bit packing: two codes per byte, in the nibble order of bitsandbytes.

A 4-bit code needs half a byte, so `pack_int4` stores two of them in each uint8. Kernels that read packed
weights (Triton included) rely on this layout:

    codes   c0 c1 c2 c3 c4            (…, n) uint8, each in [0, 15], row-major along the last dim
    bytes   [c0|c1] [c2|c3] [c4|0]    (…, ceil(n / 2)) uint8

    byte i = (c[2i] << 4) | c[2i + 1]

- Element 2i sits in the HIGH nibble (bits 7..4) of byte i, element 2i + 1 in the LOW nibble (bits 3..0).
  This is bitsandbytes' order: its `quantize_4bit` packs `(q[::2] << 4) | q[1::2]` over the flattened
  tensor, and its dequantize kernels read `byte >> 4` first.
- An odd n leaves the low nibble of the last byte spare; `pack_int4` puts 0 there and `unpack_int4` drops it.
- Other formats pick other orders (llama.cpp's Q4_0 puts element j in the low nibble and element j + 16 in
  the high one), so a packed tensor is only meaningful together with the layout it was written in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(…, n) integer codes in [0, 15] -> (…, ceil(n / 2)) uint8, element 2i in the high nibble of byte i."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"pack_int4 takes integer codes (uint8 in [0, 15]), got dtype {codes.dtype}; round and cast them first")
    if codes.dim() == 0:
        raise InputError("pack_int4 packs along the last dimension; got a 0-d tensor, give it at least one dimension")
    bad = ((codes < 0) | (codes > 15)).nonzero()  # (k, dims): indices of the out-of-range codes
    if len(bad):
        index = tuple(bad[0].tolist())
        raise InputError(f"pack_int4 takes 4-bit codes in [0, 15], found {codes[index].item()} at index {index}; "
                         f"{len(bad)} code(s) are out of range. Codes of more than 4 bits cannot share a byte")
    codes = codes.to(torch.uint8)
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))  # (…, n + 1): a 0 in the spare low nibble
    return (codes[..., 0::2] << 4) | codes[..., 1::2]  # (…, ceil(n / 2))


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(…, ceil(n / 2)) uint8 -> (…, n) uint8 codes in [0, 15]: the inverse of `pack_int4`."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 reads uint8 bytes, got dtype {packed.dtype}")
    if packed.dim() == 0 or packed.shape[-1] != (n + 1) // 2:
        raise InputError(f"{n} codes pack into {(n + 1) // 2} bytes along the last dim, but the packed tensor has shape "
                         f"{tuple(packed.shape)}; pass the n that was packed")
    nibbles = torch.stack((packed >> 4, packed & 0x0F), dim=-1)  # (…, ceil(n / 2), 2): high nibble first
    return nibbles.flatten(-2)[..., :n]  # (…, 2 · ceil(n / 2)) -> (…, n)
