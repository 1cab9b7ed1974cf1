"""The safetensors reader and writer: bit-exact round trips, the reference layout, parity with the
`safetensors` package, atomic saves, and malformed files that must each give a ValueError naming the file."""

import json
import os
import random
import re
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


def test_loaded_tensors_are_contiguous_and_own_their_memory(tmp_path):
    save_file(random_tensors(), tmp_path / "t.safetensors")
    for t in load_file(tmp_path / "t.safetensors").values():
        assert t.is_contiguous() and t.device.type == "cpu"
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # not a view into a shared buffer


def test_written_layout_is_sorted_names_and_a_space_padded_header(tmp_path):
    save_file({"b": torch.randn(3), "a": torch.randn(2, 2), "c": torch.randn(1)}, tmp_path / "t.safetensors", {"k": "v"})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8 : 8 + n].decode()
    assert n % 8 == 0 and text.rstrip(" ").endswith("}")  # padded with spaces only
    header = json.loads(text)
    assert header.pop("__metadata__") == {"k": "v"}
    assert [header[k]["data_offsets"] for k in sorted(header)] == [[0, 16], [16, 28], [28, 32]]
    assert len(raw) == 8 + n + 32


def test_metadata_of_a_file_without_metadata_is_empty(tmp_path):
    save_file({"w": torch.randn(3)}, tmp_path / "w.safetensors")
    assert read_metadata(tmp_path / "w.safetensors") == {}


def test_parity_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="the reference `safetensors` package is not installed")
    from safetensors import safe_open

    tensors = random_tensors()
    save_file(tensors, tmp_path / "ours.safetensors", metadata={"a": "b"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        assert f.metadata() == {"a": "b"}
    contiguous = {k: v.contiguous() for k, v in tensors.items()}  # the reference refuses non-contiguous tensors
    st.save_file(contiguous, str(tmp_path / "theirs.safetensors"), metadata={"c": "d"})
    ours = load_file(tmp_path / "theirs.safetensors")
    assert theirs.keys() == ours.keys() == tensors.keys()
    for name in tensors:
        assert_bit_equal(theirs[name], tensors[name])
        assert_bit_equal(ours[name], tensors[name])
    assert read_metadata(tmp_path / "theirs.safetensors") == {"c": "d"}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "w.safetensors"
    old = torch.randn(3)
    save_file({"w": old}, path)
    assert os.listdir(tmp_path) == ["w.safetensors"]
    with pytest.raises(NotImplementedError):  # fails while writing the data: a meta tensor has none
        save_file({"a": torch.randn(2), "b": torch.empty(4, device="meta")}, path)
    assert os.listdir(tmp_path) == ["w.safetensors"]
    assert torch.equal(load_file(path)["w"], old)


def test_saved_file_has_the_permissions_of_a_plain_new_file(tmp_path):
    save_file({"w": torch.randn(3)}, tmp_path / "w.safetensors")
    (tmp_path / "plain").write_bytes(b"")
    assert os.stat(tmp_path / "w.safetensors").st_mode == os.stat(tmp_path / "plain").st_mode


@pytest.mark.parametrize(
    "tensors, metadata, problem",
    [
        ({"w": [1.0, 2.0]}, None, "'w' is list, expected a tensor"),
        ({"w": torch.zeros(2, dtype=torch.complex64)}, None, "'w' is torch.complex64, expected a tensor of dtype"),
        ({1: torch.randn(2)}, None, "tensor name 1 must be a string"),
        ({"__metadata__": torch.randn(2)}, None, "other than '__metadata__'"),
        ({"w": torch.randn(2)}, {"k": 1}, "metadata must be a dict of strings to strings"),
    ],
)
def test_save_rejects_what_it_cannot_write_and_writes_nothing(tmp_path, tensors, metadata, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        save_file(tensors, tmp_path / "w.safetensors", metadata)
    assert os.listdir(tmp_path) == []


# ---- malformed files --------------------------------------------------------------------------------


def write_raw(path, header: dict | bytes, data: bytes, length: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def two_tensors():
    """A valid header for two F32 tensors of 2x2 and 3, and their 28 bytes of random data."""
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]}}
    return header, torch.randn(7, generator=torch.Generator().manual_seed(1)).numpy().tobytes()


def edited(**changes):
    """two_tensors() with fields replaced: edited(a__shape=[4]) sets header["a"]["shape"]."""
    header, data = two_tensors()
    for key, value in changes.items():
        name, field = key.split("__")
        header[name][field] = value
    return header, data


EIGHT_BYTES = torch.randn(2, generator=torch.Generator().manual_seed(2)).numpy().tobytes()

MALFORMED = {  # case -> (file parts, the problem the error must name)
    "huge header length": (lambda: (*two_tensors(), 2**63), "exceeds the 100000000-byte limit"),
    "header length past the end": (lambda: (*two_tensors(), 10_000), "header length 10000 needs 10008 bytes but the file has"),
    "invalid json": (lambda: (b'{"a": {"dtype": "F32",', b""), "not valid UTF-8 JSON"),
    "invalid utf-8": (lambda: (b'{"\xff": 1}', b""), "not valid UTF-8 JSON"),
    "deeply nested json": (lambda: (b"[" * 100_000 + b"]" * 100_000, b""), "not valid UTF-8 JSON (RecursionError"),
    "json array": (lambda: (b"[1, 2, 3]", b""), "header is a JSON list, expected an object"),
    "unknown dtype": (lambda: edited(a__dtype="F42"), "unknown dtype 'F42'"),
    "negative offset": (lambda: edited(a__data_offsets=[-4, 16]), "expected [begin, end] of non-negative ints"),
    "begin after end": (lambda: edited(b__data_offsets=[28, 16]), "begin is after its end"),
    "end out of range": (lambda: edited(b__data_offsets=[16, 40], b__shape=[6]), "past the data section of 28 bytes"),
    "overlapping offsets": (lambda: edited(b__data_offsets=[12, 24]), "overlaps the previous tensor"),
    "hole in data": (lambda: (edited(b__data_offsets=[20, 32])[0], two_tensors()[1] + b"\1\2\3\4"), "leaves a hole at bytes [16, 20)"),
    "uncovered tail": (lambda: (two_tensors()[0], two_tensors()[1] + b"\1\2\3\4"), "cover 28 bytes of a 32-byte"),
    "byte count mismatch": (lambda: edited(a__shape=[2, 3]), "shape [2, 3] of F32 needs 24 bytes"),
    "non-int shape": (lambda: edited(a__shape=[2, "2"]), "list of non-negative ints"),
    "float shape": (lambda: edited(a__shape=[2.0, 2]), "list of non-negative ints"),
    "negative dim": (lambda: edited(a__shape=[-2, -2]), "list of non-negative ints"),
    "zero-size tensor with huge dims": (lambda: ({"a": {"dtype": "F32", "shape": [0, 2**62, 4], "data_offsets": [0, 0]}}, b""), "too large"),
    "missing field": (lambda: ({"a": {"dtype": "F32", "shape": [2]}}, EIGHT_BYTES), "needs dtype, shape and data_offsets"),
    "bool byte not 0 or 1": (lambda: ({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\1\7"), "holds byte 7"),
    "metadata not strings": (lambda: ({**two_tensors()[0], "__metadata__": {"k": 1}}, two_tensors()[1]), "strings to strings"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_gives_value_error_naming_the_file_and_problem(tmp_path, case):
    parts, problem = MALFORMED[case]
    path = write_raw(tmp_path / "bad.safetensors", *parts())
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{re.escape(problem)}"):
        load_file(path)


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -13])  # in the length, at its end, in the header, in the data
def test_truncated_file_gives_value_error(tmp_path, cut):
    save_file({"a": torch.randn(2, 2), "b": torch.randn(3)}, tmp_path / "ok.safetensors")
    raw = (tmp_path / "ok.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
        load_file(path)
    if cut in (0, 5, 8, 20):
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
            read_metadata(path)


def test_random_byte_flips_give_value_error_or_a_clean_load(tmp_path):
    save_file({"a": torch.randn(2, 2), "b": torch.randn(3).to(torch.bfloat16), "c": torch.rand(5) > 0.5}, tmp_path / "ok.safetensors")
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
            loaded = load_file(path)  # anything but a ValueError fails the test
        except ValueError as err:
            assert str(err).startswith(f"{path}: ")
            outcomes["error"] += 1
        else:
            assert sum(t.numel() * t.element_size() for t in loaded.values()) == len(raw) - header_end
            outcomes["loaded"] += 1
    assert outcomes["error"] > 100  # most flips break the header; each one that does is a clean ValueError
