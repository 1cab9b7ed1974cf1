"""GGUF, llama.cpp's file format, read from scratch (github.com/ggml-org/ggml, docs/gguf.md; versions 2 and 3).

    ┌──────────────┬──────────────┬───────────────────┬───────────────┐
    │ magic "GGUF" │ version: u32 │ tensor_count: u64 │ kv_count: u64 │
    ├──────────────┴──────────────┴───────────────────┴───────────────┤
    │ kv_count × (key: string, value_type: u32, value)                │
    ├─────────────────────────────────────────────────────────────────┤
    │ tensor_count × (name: string, n_dims: u32, ne: n_dims × u64,    │
    │                 ggml_type: u32, offset: u64)                    │
    ├─────────────────────────────────────────────────────────────────┤
    │ padding to general.alignment (a u32 key; 32 when absent)        │
    ├─────────────────────────────────────────────────────────────────┤
    │ data section: each tensor's blocks at data start + its offset   │
    └─────────────────────────────────────────────────────────────────┘
    string = length: u64, then that many bytes of UTF-8 (no terminating zero)
    value  = by value_type: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (one byte, 0 or 1),
             8 string, 9 array = (element type: u32, length: u64, length × value; arrays may nest), 10 u64,
             11 i64, 12 f64

ne[0] is the contiguous dimension, so torch's shape is ne reversed: a (rows, cols) weight has ne = [cols, rows].
Offsets count from the start of the data section and are multiples of the alignment; a tensor of type T
takes prod(ne) / block size × block bytes (io/ggml_blocks.py draws the blocks). Every number is little-endian
(big-endian GGUF files are not supported). Version 1 (u32 counts) is not read.

`read_gguf` checks the whole header before any tensor data is touched, so a malformed file is a ValueError that
names the file, the entry (metadata key or tensor name) and the problem, never a crash, a hang or a huge
allocation: each count, length and offset is compared with the bytes the file has left before anything it
points to is read, so reading costs time linear in the file's size. The file is memory-mapped copy-on-write:
`raw` returns views into the mapping (writes to them never reach the file) and `tensor` returns fresh memory.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .ggml_blocks import BLOCK_TYPES, dequantize

# value_type -> (name, struct code); strings and arrays have no fixed size. Bools are read as bytes and checked.
VALUE_TYPES = {
    0: ("UINT8", "B"), 1: ("INT8", "b"), 2: ("UINT16", "H"), 3: ("INT16", "h"), 4: ("UINT32", "I"), 5: ("INT32", "i"),
    6: ("FLOAT32", "f"), 7: ("BOOL", "B"), 8: ("STRING", ""), 9: ("ARRAY", ""), 10: ("UINT64", "Q"), 11: ("INT64", "q"),
    12: ("FLOAT64", "d"),
}  # fmt: skip
BOOL, STRING, ARRAY = 7, 8, 9
MAX_NESTING = 8  # arrays of arrays of ...: the spec sets no limit; real files nest at most once

# ggml_type ids of ggml.h, by name, so that an unsupported type is named in the error.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
HEADER_BYTES = 24  # magic, version, tensor_count, kv_count
MIN_KV_BYTES = 8 + 4 + 1  # an empty key, its value type, a one-byte value
MIN_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # an empty name, n_dims, one dim, the type, the offset


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: GGUF's ne reversed
    type: str  # the ggml type's name, a key of ggml_blocks.BLOCK_TYPES
    offset: int  # of its first byte, from the start of the file
    nbytes: int


class _Cursor:
    """Reads the header's little-endian values in order, checking each read against the end of the file first."""

    def __init__(self, path: Path, buf: mmap.mmap):
        self.path, self.buf, self.pos, self.entry = path, buf, 0, "header"

    def fail(self, problem: str):
        raise InputError(f"{self.path}: {self.entry}: {problem}")

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> int:
        """Step over n bytes; return where they start."""
        if n > self.left():
            self.fail(f"{what} needs {n} bytes at offset {self.pos} but the file has {len(self.buf)}; is it truncated?")
        self.pos += n
        return self.pos - n

    def scalar(self, vtype: int, what: str):
        code = VALUE_TYPES[vtype][1]
        (value,) = struct.unpack_from("<" + code, self.buf, self.take(struct.calcsize(code), what))
        if vtype == BOOL:
            if value > 1:
                self.fail(f"{what} is a bool stored as byte {value}, expected 0 or 1")
            return bool(value)
        return value

    def string(self, what: str) -> str:
        n = self.scalar(10, f"{what}'s length")
        start = self.take(n, f"{what} of {n} bytes")
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError as err:
            self.fail(f"{what} is not valid UTF-8 ({err})")

    def value(self, vtype: int, depth: int = 0):
        if vtype not in VALUE_TYPES:
            self.fail(f"unknown value type {vtype}; known: 0 to {len(VALUE_TYPES) - 1}")
        if vtype == STRING:
            return self.string("string")
        if vtype != ARRAY:
            return self.scalar(vtype, VALUE_TYPES[vtype][0])
        etype, n = self.scalar(4, "array element type"), self.scalar(10, "array length")
        if etype not in VALUE_TYPES:
            self.fail(f"array of unknown value type {etype}; known: 0 to {len(VALUE_TYPES) - 1}")
        name, code = VALUE_TYPES[etype]
        if code:  # numbers: one read for the whole array
            dtype = np.dtype("<" + code)
            values = np.frombuffer(self.buf, dtype, n, self.take(n * dtype.itemsize, f"array of {n} {name}"))
            if etype == BOOL and n and values.max() > 1:
                self.fail(f"array of {n} BOOL holds byte {values.max()}, expected 0 or 1")
            return values.astype(bool).tolist() if etype == BOOL else values.tolist()
        least = 8 if etype == STRING else 12  # a string's length; an array's type and length
        if n * least > self.left():
            self.fail(f"array of {n} {name} needs at least {n * least} bytes but {self.left()} are left; is it truncated?")
        if etype == ARRAY and depth == MAX_NESTING:
            self.fail(f"arrays nest more than {MAX_NESTING} deep")
        return [self.value(etype, depth + 1) for _ in range(n)]


def _read_header(path: Path, buf: mmap.mmap) -> tuple[int, dict, list[tuple], int]:
    """Parse magic, counts, metadata and tensor infos; return (version, metadata, infos, data start)."""
    c = _Cursor(path, buf)
    if buf[:4] != b"GGUF":
        c.fail(f"starts with {buf[:4]!r}, not the magic b'GGUF'; is this a GGUF file?")
    c.pos = 4
    version = c.scalar(4, "version")
    if version not in (2, 3):
        hint = "a big-endian file, which is not supported" if version.to_bytes(4, "big")[0] in (2, 3) else "versions 2 and 3 are read"
        c.fail(f"version {version} is not supported ({hint})")
    tensor_count, kv_count = c.scalar(10, "tensor_count"), c.scalar(10, "kv_count")
    if kv_count * MIN_KV_BYTES + tensor_count * MIN_INFO_BYTES > c.left():
        c.fail(f"{kv_count} metadata entries and {tensor_count} tensor infos cannot fit in the {c.left()} bytes left")
    metadata = {}
    for i in range(kv_count):
        c.entry = f"metadata entry {i}"
        key = c.string("key")
        c.entry = f"metadata key {key!r}"
        if key in metadata:
            c.fail("appears twice")
        metadata[key] = c.value(c.scalar(4, "value type"))
    infos = []
    for i in range(tensor_count):
        c.entry = f"tensor info {i}"
        name = c.string("name")
        c.entry = f"tensor {name!r}"
        n_dims = c.scalar(4, "n_dims")
        if not 1 <= n_dims <= 4:
            c.fail(f"has n_dims {n_dims}, expected 1 to 4")
        ne = [c.scalar(10, f"ne[{d}]") for d in range(n_dims)]
        infos.append((name, ne, c.scalar(4, "ggml type"), c.scalar(10, "offset")))
    c.entry = "metadata key 'general.alignment'"
    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        c.fail(f"is {alignment!r}, expected a power of two")
    return version, metadata, infos, c.pos + -c.pos % alignment


def _check_tensor(path: Path, info: tuple, data_start: int, alignment: int, size: int) -> TensorInfo:
    """Check one tensor info against its type and the file's bytes."""
    name, ne, type_id, offset = info
    fail = lambda problem: InputError(f"{path}: tensor {name!r}: {problem}")  # noqa: E731
    if type_id not in GGML_TYPES:
        raise fail(f"has unknown ggml type {type_id}")
    type_name = GGML_TYPES[type_id]
    if type_name not in BLOCK_TYPES:
        raise fail(f"{type_name} is not supported; supported: {', '.join(BLOCK_TYPES)}")
    block = BLOCK_TYPES[type_name]
    if not all(d >= 1 for d in ne) or math.prod(ne) >= 2**63:
        raise fail(f"has dims ne={ne}, expected positive dims whose product is below 2^63")
    if ne[0] % block.size:
        raise fail(f"has ne[0] = {ne[0]}, not a multiple of the {type_name} block of {block.size} weights")
    if offset % alignment:
        raise fail(f"has offset {offset}, not a multiple of the alignment {alignment}")
    begin, nbytes = data_start + offset, math.prod(ne) // block.size * block.nbytes
    if begin + nbytes > size:
        raise fail(f"{type_name} {ne} needs bytes [{begin}, {begin + nbytes}) but the file has {size}; is it truncated?")
    return TensorInfo(name, tuple(reversed(ne)), type_name, begin, nbytes)


def _check_overlaps(path: Path, tensors: list[TensorInfo]) -> None:
    end, previous = 0, None
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset < end:
            raise InputError(f"{path}: tensor {t.name!r} at bytes [{t.offset}, {t.offset + t.nbytes}) overlaps tensor {previous!r}, which ends at {end}")
        end, previous = t.offset + t.nbytes, t.name


class GGUFFile:
    """A checked GGUF file: its `metadata` (plain Python values), its `tensors` (TensorInfo by name), and the
    mapping they point into. `tensor(name)` dequantizes one; `raw(name)` gives its bytes."""

    def __init__(self, path: Path, buf: mmap.mmap):
        self.path = path
        self.version, self.metadata, infos, self.data_start = _read_header(path, buf)
        alignment = self.metadata.get("general.alignment", 32)
        self.tensors: dict[str, TensorInfo] = {}
        for info in infos:
            if info[0] in self.tensors:
                raise InputError(f"{path}: tensor {info[0]!r}: appears twice")
            self.tensors[info[0]] = _check_tensor(path, info, self.data_start, alignment, len(buf))
        _check_overlaps(path, list(self.tensors.values()))
        self._buf = buf

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor {name!r}; it has {len(self.tensors)}, e.g. {list(self.tensors)[:5]}")
        return self.tensors[name]

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes as uint8 (*shape[:-1], bytes per row): a view of the copy-on-write mapping."""
        t = self._info(name)
        raw = torch.frombuffer(self._buf, dtype=torch.uint8, count=t.nbytes, offset=t.offset)
        return raw.view(*t.shape[:-1], -1)

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor dequantized to float32, then cast to `dtype`, in memory of its own."""
        t = self._info(name)
        return dequantize(self.raw(name), t.type).view(t.shape).to(dtype)


def read_gguf(path: str | Path) -> GGUFFile:
    """Map a GGUF file and check its whole header; ValueError naming the file, the entry and the problem if malformed."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER_BYTES:
            raise InputError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte GGUF header; is it truncated?")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # stays valid once the file is closed
    return GGUFFile(path, buf)
