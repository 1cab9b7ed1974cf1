"""The safetensors format, read and written from scratch (github.com/huggingface/safetensors).

    ┌──────────────┬──────────────────────────────┬──────────────────────────────────────┐
    │ N: u64, LE   │ header: N bytes of UTF-8 JSON │ data: raw little-endian tensor bytes │
    └──────────────┴──────────────────────────────┴──────────────────────────────────────┘
    header = {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, …,
              "__metadata__": {"key": "value"}}              (optional, strings only)

Offsets count from the start of the data section. The reader checks every bound before it reads a tensor,
so a malformed file is a `ValueError` naming the file and the problem, never a crash or a half load:
the header length fits the file, the JSON is an object of well-formed entries with known dtypes, each
byte range holds exactly prod(shape) × itemsize bytes, and the ranges tile the data section with no
overlap and no hole (as the reference implementation requires).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit: 100 MB of JSON


def _parse_header(path: Path, raw: bytes) -> tuple[dict, dict, int]:
    """Validate the file's framing and header; return (entries, metadata, start of the data section)."""
    if len(raw) < 8:
        raise ValueError(f"{path}: file is {len(raw)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} does not fit a file of {len(raw)} bytes (limit {MAX_HEADER})")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: header is not valid UTF-8 JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    return header, metadata, 8 + n


def _check_entry(path: Path, name: str, entry, data_len: int) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ValueError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, found {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; known: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"{path}: tensor {name!r} has shape {shape!r}, expected a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets!r}, expected [begin, end]")
    begin, end = offsets
    if begin > end or end > data_len:
        raise ValueError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the data section of {data_len} bytes")
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != need:
        raise ValueError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] but shape {shape} of {dtype} needs {need} bytes")
    return DTYPES[dtype], shape, begin, end


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a .safetensors file into CPU memory, after checking the whole header."""
    path = Path(path)
    raw = path.read_bytes()
    header, _, start = _parse_header(path, raw)
    data_len = len(raw) - start
    entries = {name: _check_entry(path, name, entry, data_len) for name, entry in header.items()}

    covered = 0  # the ranges, in order, must tile [0, data_len): no overlap, no hole
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != covered:
            problem = "overlaps the previous tensor" if begin < covered else f"leaves a hole at bytes [{covered}, {begin})"
            raise ValueError(f"{path}: tensor {name!r} at data_offsets [{begin}, {end}] {problem}")
        covered = end
    if covered != data_len:
        raise ValueError(f"{path}: tensors cover {covered} bytes of a {data_len}-byte data section")

    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        chunk = bytearray(raw[start + begin : start + end])  # a copy the tensor owns
        flat = torch.frombuffer(chunk, dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(shape)
    return tensors


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` strings of a file, reading only its header."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        raw = head + f.read(min(n, MAX_HEADER))
    return _parse_header(path, raw)[1]


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (sorted by name) atomically: to a temporary file in the same folder, then rename."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: metadata must map strings to strings, got {metadata!r}")
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or t.dtype not in NAMES:
            raise ValueError(f"{path}: {name!r} is not a tensor of a supported dtype ({sorted(DTYPES)})")
        blob = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the data section starts 8-byte aligned
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
