"""The safetensors format, read and written from scratch (github.com/huggingface/safetensors, "safetensors format").

    ┌──────────────┬───────────────────────────────┬──────────────────────────────────────┐
    │ N: u64, LE   │ header: N bytes of UTF-8 JSON │ data: raw little-endian tensor bytes │
    └──────────────┴───────────────────────────────┴──────────────────────────────────────┘
    header = {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, …,
              "__metadata__": {"key": "value"}}              (optional, strings only)

Offsets count from the start of the data section; every number is little-endian (big-endian hosts are not
supported). The reader checks the whole header before it reads a single tensor, so a malformed file is a
`ValueError` that names the file and the problem, never a crash or a half load: the header length fits the
file, the JSON is an object of well-formed entries with known dtypes, each byte range holds exactly
prod(shape) × itemsize bytes, and the ranges tile the data section with no overlap and no hole (as the
reference implementation requires). The writer puts tensors in name order and pads the header with spaces
to a multiple of 8 bytes, as the reference does, and replaces the target file only once it is complete.
"""

from __future__ import annotations

import json
import math
import os
import reprlib  # repr cut short: a message stays one line whatever a header holds
import secrets
import struct
from pathlib import Path

import torch

from ..errors import InputError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference implementation's limit on the JSON header, in bytes
# A checkpoint holds a few thousand tensors at most (a shard of Llama 3 405B: about 1,100); a header of a million
# tiny entries would take a minute and gigabytes to read, so more than this is refused before the JSON is parsed.
MAX_TENSORS = 100_000
# Python's json holds each value as an object of 30 to 60 bytes, from as little as 3 bytes of text ("[],"): 99 MB of
# header is 3 GB and 20 s. Each value but the first of a container follows a comma or a colon, which no escape can
# hide, so counting those bounds the parse. An entry takes about 10 ("name":{"dtype":…,"shape":[…],"data_offsets":[b,e]}).
MAX_VALUES = 20 * MAX_TENSORS


def unique_keys(pairs: list[tuple]) -> dict:
    """A JSON object whose keys are all different: with a repeated tensor name json.loads would keep the last."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {reprlib.repr(key)} is repeated")
        obj[key] = value
    return obj


def _read_header(path: Path, f) -> tuple[dict, dict, int]:
    """Check the framing and the JSON of an open file; return (entries, metadata, start of the data section)."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise InputError(f"{path}: file is {size} bytes, shorter than the 8-byte header length; is it truncated?")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER:
        raise InputError(f"{path}: header length {n} exceeds the {MAX_HEADER}-byte limit; is this a safetensors file?")
    if 8 + n > size:
        raise InputError(f"{path}: header length {n} needs {8 + n} bytes but the file has {size}; is it truncated?")
    raw = f.read(n)
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS:
        raise InputError(f"{path}: header lists {entries:,} tensors, more than the {MAX_TENSORS:,} a checkpoint has; is this a safetensors file?")
    values = raw.count(b",") + raw.count(b":")  # in strings they only overcount
    if values > MAX_VALUES:
        raise InputError(f"{path}: header holds about {values:,} JSON values, more than the {MAX_VALUES:,} of {MAX_TENSORS:,} tensors; is this a safetensors file?")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{path}: header is not valid UTF-8 JSON ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{path}: __metadata__ must map strings to strings, found {reprlib.repr(metadata)}")
    return header, metadata, 8 + n


def _check_entry(path: Path, name: str, entry, data_len: int) -> tuple[torch.dtype, list[int], int, int]:
    """Check one header entry against the data section; return (dtype, shape, begin, end)."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise InputError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, found {reprlib.repr(entry)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InputError(f"{path}: tensor {name!r} has unknown dtype {reprlib.repr(dtype)}; known: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{path}: tensor {name!r} has shape {reprlib.repr(shape)}, expected a list of non-negative ints")
    if math.prod(max(d, 1) for d in shape) >= 2**63:  # only a zero-size tensor gets this far past the byte count
        raise InputError(f"{path}: tensor {name!r} has shape {shape}, too large for torch's 64-bit strides")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise InputError(f"{path}: tensor {name!r} has data_offsets {reprlib.repr(offsets)}, expected [begin, end] of non-negative ints")
    begin, end = offsets
    if begin > end:
        raise InputError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}], whose begin is after its end")
    if end > data_len:
        raise InputError(
            f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] past the data section of {data_len} bytes; is the file truncated?"
        )
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != need:
        raise InputError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] but shape {shape} of {dtype} needs {need} bytes")
    return DTYPES[dtype], shape, begin, end


def _check_tiling(path: Path, spans: dict[str, tuple], data_len: int) -> None:
    """The byte ranges, sorted, must cover [0, data_len) exactly: no overlap and no hole."""
    covered = 0
    for name, (_, _, begin, end) in sorted(spans.items(), key=lambda item: item[1][2:]):
        if begin != covered:
            problem = "overlaps the previous tensor" if begin < covered else f"leaves a hole at bytes [{covered}, {begin})"
            raise InputError(f"{path}: tensor {name!r} at data_offsets [{begin}, {end}] {problem}")
        covered = end
    if covered != data_len:
        raise InputError(f"{path}: tensors cover {covered} bytes of a {data_len}-byte data section")


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a .safetensors file into CPU memory that it owns, after checking the whole header."""
    path = Path(path)
    with open(path, "rb") as f:
        entries, _, start = _read_header(path, f)
        data_len = os.fstat(f.fileno()).st_size - start
        spans = {name: _check_entry(path, name, entry, data_len) for name, entry in entries.items()}
        _check_tiling(path, spans, data_len)
        check_memory(path, data_len)
        tensors = {}
        for name, (dtype, shape, begin, end) in spans.items():
            chunk = bytearray(end - begin)  # a fresh buffer for each tensor, read straight from the file
            f.seek(start + begin)
            if f.readinto(chunk) != len(chunk):
                raise InputError(f"{path}: file ended inside tensor {name!r}; did it change while being read?")
            flat = torch.frombuffer(chunk, dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
            if dtype is torch.bool and flat.numel() and flat.max() > 1:
                raise InputError(f"{path}: tensor {name!r} is BOOL but holds byte {flat.max().item()}, expected 0 or 1")
            tensors[name] = flat.view(dtype).reshape(shape)
    return tensors


def available_memory() -> int:
    """Bytes this machine can still give (Linux's MemAvailable), or no limit where /proc/meminfo is missing."""
    try:
        line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 2**63
    return int(line.split()[1]) * 1024


def check_memory(path: Path, need: int) -> None:
    """Refuse, before reading, tensors larger than the memory left (a sparse file can claim a terabyte)."""
    free = available_memory()
    if need > free:
        raise InputError(f"{path}: its tensors need {need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB of memory is available")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` strings of a file ({} if it has none), reading and checking only its header."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_header(path, f)[1]


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors, in name order, to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    strings = isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    if metadata is not None and not strings:
        raise InputError(f"{path}: metadata must be a dict of strings to strings, got {metadata!r}")
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise InputError(f"{path}: tensor name {name!r} must be a string other than '__metadata__'")
        if not isinstance(t, torch.Tensor) or t.dtype not in NAMES:
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{path}: {name!r} is {found}, expected a tensor of dtype {sorted(DTYPES)}")
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad with spaces so the data section starts 8-byte aligned
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for name in sorted(tensors):
                f.write(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
