"""The one interface of a quantized weight, and the registry of formats that WeightOnlyLinear reads.

A format is a class that subclasses `QuantizedWeight` and is registered under its `format` name:

    q = quantize_nf4(w)                        a QuantizedWeight: what a quantizer returns
    q.dequantize(torch.bfloat16)               Ŵ, w's shape, in the dtype asked for
    q.nbytes, q.bits_per_weight                its real storage, and 8 · nbytes / numel
    layout, tensors = q.to_storage()           a JSON-able dict and named tensors: what WeightOnlyLinear keeps
    FORMATS[layout["format"]].from_storage(layout, tensors)     the same q back, bit for bit

`layout` always holds "shape" and "format"; `stored_names(layout)` lists the tensor names that layout stores, so a
saved folder is checked before anything is rebuilt. Granularity is torchao's `block_size` (torchao
quant_primitives): a tuple with one entry per dimension of the tensor the format quantizes, each block of that shape
sharing its parameters (a scale, a zero point, an absmax, a codebook). For a weight (out, in): (out, in) is
per-tensor, (1, in) per output row, (1, 64) groups of 64 inputs. bitsandbytes' formats quantize the weight
flattened row-major to (out · in,), so their block_size is the 1-tuple (B,) of that flat tensor: a block may span
two rows, and the last one is zero-padded when B does not divide out · in.

A new format (for example GGUF's Q4_0) is one new file with a `@register`ed subclass; WeightOnlyLinear, its
forward, `save_quantized` and `load_quantized` find it by name. `packed_4bit` is the hook for the W4A16 kernels
(kernels/int4_mm.py): a format whose stored tensors they read returns their view of them.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import InputError


class QuantizedWeight:
    """A weight in compact form. Subclasses are dataclasses holding their tensors; they give `shape` and
    `block_size` and define every method below that raises NotImplementedError (`bits_per_weight` and
    `packed_4bit` have defaults)."""

    format: ClassVar[str]  # the registry key, written to layout["format"]
    shape: torch.Size  # the weight's shape (not its codes'); a field or a property of the subclass
    block_size: tuple[int, ...]  # torchao's granularity, one entry per dimension quantized (see the module docstring)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Ŵ in the weight's shape. dtype=None gives the format's own dtype (float32, or the quantized weight's dtype
        for bitsandbytes' formats, as bnb's dequantize_4bit); a dtype is the same values cast to it."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Real storage in bytes: codes counted packed, plus every stored scale, zero point or codebook."""
        raise NotImplementedError

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / math.prod(self.shape)

    def to_storage(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(layout, tensors): a JSON-able dict with "shape" and "format", and the tensors to keep, codes packed."""
        raise NotImplementedError

    @classmethod
    def from_storage(cls, layout: dict, tensors: dict[str, torch.Tensor]) -> QuantizedWeight:
        """The weight back from `to_storage`'s layout and tensors (codes unpacked where they were packed)."""
        raise NotImplementedError

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        """The names of the tensors `to_storage` writes for this layout."""
        raise NotImplementedError

    @classmethod
    def packed_4bit(cls, layout: dict, tensors: dict[str, torch.Tensor]):
        """The W4A16 kernels' view of the stored tensors (kernels/int4_mm.py Packed4Bit), read in place, or None
        when the kernels do not read this layout. None unless a format says otherwise."""
        return None


FORMATS: dict[str, type[QuantizedWeight]] = {}


def register(cls: type[QuantizedWeight]) -> type[QuantizedWeight]:
    """Class decorator: FORMATS[cls.format] = cls."""
    if cls.format in FORMATS:
        taken = FORMATS[cls.format].__name__
        raise InputError(f"a quantized-weight format named {cls.format!r} is already registered ({taken}); pick another name")
    FORMATS[cls.format] = cls
    return cls


def format_of(layout: dict) -> type[QuantizedWeight]:
    """The registered class of a layout's "format"."""
    name = layout.get("format")
    if name not in FORMATS:
        raise InputError(f"unknown quantized-weight format {name!r} in layout {layout}; registered: {sorted(FORMATS)}")
    return FORMATS[name]


def cast(w: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """w, or w cast to dtype: `dequantize(dtype)` is the format's own result, then one cast."""
    return w if dtype is None else w.to(dtype)


def check_stored_bits(bits: int) -> None:
    """Formats that store b-bit codes in whole nibbles or bytes take 4 or 8 bits only."""
    if bits not in (4, 8):
        raise InputError(f"WeightOnlyLinear stores 4-bit codes two per byte and 8-bit codes one per byte, got bits={bits} "
                         "(whole bytes would overstate its size's report); quantize to 4 or 8 bits")
