"""The safetensors reader and writer: bit-exact round trips, parity with the `safetensors` package, and
fuzz-style malformed files that must each give a ValueError naming the file."""

import json
import os
import random
import struct

import pytest
import torch

from minitransformers.io.safetensors import DTYPES, load_file, read_metadata, save_file


def random_tensors():
    g = torch.Generator().manual_seed(0)
    floats = {f"f_{n}": torch.randn(3, 5, generator=g).to(DTYPES[n]) for n in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")}
    ints = {f"i_{n}": torch.randint(-100, 100, (4, 2), generator=g).to(DTYPES[n]) for n in ("I64", "I32", "I16", "I8")}
    return {
        **floats,
        **ints,
        "u8": torch.randint(0, 256, (7,), generator=g).to(torch.uint8),
        "bool": torch.rand(2, 3, generator=g) > 0.5,
        "scalar": torch.randn((), generator=g),
        "empty": torch.randn(0, 4, generator=g),
        "transposed": torch.randn(4, 6, generator=g).T,  # not contiguous
    }


def assert_bit_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path):
    tensors = random_tensors()
    save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    for name in tensors:
        assert_bit_equal(loaded[name], tensors[name])
    assert read_metadata(tmp_path / "t.safetensors") == {"format": "pt"}


def test_parity_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {k: v.contiguous() for k, v in random_tensors().items()}
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"a": "b"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"c": "d"})
    ours = load_file(tmp_path / "theirs.safetensors")
    for name in tensors:
        assert_bit_equal(theirs[name], tensors[name])
        assert_bit_equal(ours[name], tensors[name])
    assert read_metadata(tmp_path / "theirs.safetensors") == {"c": "d"}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_file({"w": torch.randn(3)}, tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == ["w.safetensors"]
    with pytest.raises(ValueError, match="not a tensor"):
        save_file({"w": [1.0, 2.0]}, tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == ["w.safetensors"]


# ---- malformed files --------------------------------------------------------------------------------


def write_raw(path, header: dict | bytes, data: bytes, length: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def two_tensors():
    """A valid header for two F32 tensors of 2x2 and 3, and their 28 bytes of random data."""
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]}}
    return header, torch.randn(7).numpy().tobytes()


def edited(**changes):
    header, data = two_tensors()
    for key, value in changes.items():
        name, field = key.split("__")
        header[name][field] = value
    return header, data


MALFORMED = {  # case -> (file parts, the problem the error must name)
    "huge header length": (lambda: (*two_tensors(), 2**63), "does not fit a file"),
    "header length past the end": (lambda: (*two_tensors(), 10_000), "does not fit a file"),
    "invalid json": (lambda: (b'{"a": {"dtype": "F32",', b""), "not valid UTF-8 JSON"),
    "json array": (lambda: (b"[1, 2, 3]", b""), "expected an object"),
    "unknown dtype": (lambda: edited(a__dtype="F42"), "unknown dtype 'F42'"),
    "negative offset": (lambda: edited(a__data_offsets=[-4, 16]), "expected \\[begin, end\\]"),
    "begin after end": (lambda: edited(b__data_offsets=[28, 16]), "outside the data section"),
    "end out of range": (lambda: edited(b__data_offsets=[16, 40], b__shape=[6]), "outside the data section"),
    "overlapping offsets": (lambda: edited(b__data_offsets=[12, 24]), "overlaps the previous tensor"),
    "hole in data": (lambda: (edited(b__data_offsets=[20, 32])[0], torch.randn(8).numpy().tobytes()), "leaves a hole"),
    "uncovered tail": (lambda: (two_tensors()[0], torch.randn(8).numpy().tobytes()), "cover 28 bytes of a 32-byte"),
    "byte count mismatch": (lambda: edited(a__shape=[2, 3]), "needs 24 bytes"),
    "non-int shape": (lambda: edited(a__shape=[2, "2"]), "list of non-negative ints"),
    "negative dim": (lambda: edited(a__shape=[-2, -2]), "list of non-negative ints"),
    "missing field": (lambda: ({"a": {"dtype": "F32", "shape": [4]}}, b"\0" * 16), "needs dtype, shape and data_offsets"),
    "metadata not strings": (lambda: ({**two_tensors()[0], "__metadata__": {"k": 1}}, two_tensors()[1]), "strings to strings"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_gives_value_error_naming_the_file_and_problem(tmp_path, case):
    parts, problem = MALFORMED[case]
    path = write_raw(tmp_path / "bad.safetensors", *parts())
    with pytest.raises(ValueError, match=f"^{path}: .*{problem}"):
        load_file(path)


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -13])
def test_truncated_file_gives_value_error(tmp_path, cut):
    save_file({"a": torch.randn(2, 2), "b": torch.randn(3)}, tmp_path / "ok.safetensors")
    raw = (tmp_path / "ok.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=str(path)):
        load_file(path)


def test_random_byte_flips_give_value_error_or_a_clean_load(tmp_path):
    save_file({"a": torch.randn(2, 2), "b": torch.randn(3).to(torch.bfloat16)}, tmp_path / "ok.safetensors")
    raw = (tmp_path / "ok.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    rng = random.Random(0)
    outcomes = {"error": 0, "loaded": 0}
    for i in range(300):
        mutated = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(header_end)] = rng.randrange(256)
        path = tmp_path / f"fuzz{i}.safetensors"
        path.write_bytes(mutated)
        try:
            load_file(path)
            outcomes["loaded"] += 1
        except ValueError as err:
            assert str(path) in str(err)
            outcomes["error"] += 1
    assert outcomes["error"] > 100  # most flips break the header; each one that does is a clean ValueError
