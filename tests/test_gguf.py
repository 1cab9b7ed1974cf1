"""The GGUF reader: each block type dequantized bit for bit as the `gguf` package (llama.cpp's) does, the real
SmolLM2 file read as `gguf.GGUFReader` reads it, and malformed files that must each give a ValueError naming the
file and the entry, within a time and memory bound."""

import random
import re
import resource
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch

from conftest import fetched, gguf_bytes, random_blocks, write_gguf
from minitransformers.io.ggml_blocks import BLOCK_TYPES, dequantize
from minitransformers.io.gguf import read_gguf

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def reference_dequantize(gguf, raw: torch.Tensor, type_name: str) -> torch.Tensor:
    """`gguf.quants.dequantize`, the reference, on flat bytes; float32 like ours."""
    qtype = gguf.GGMLQuantizationType[type_name]
    out = gguf.quants.dequantize(raw.numpy().reshape(1, -1), qtype).astype(np.float32, copy=False)
    return torch.from_numpy(np.array(out)).reshape(-1)


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"{(a.view(torch.int32) != b.view(torch.int32)).sum()} of {a.numel()} differ"


# ---- the block types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_each_block_type_dequantizes_as_the_gguf_package_does(type_name):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    raw = torch.frombuffer(bytearray(random_blocks(type_name, 32 * 1000, torch.Generator().manual_seed(0))), dtype=torch.uint8)
    ours = dequantize(raw, type_name)
    assert ours.numel() == 32 * 1000 and ours.abs().sum() > 0
    assert_bit_equal(ours, reference_dequantize(gguf, raw, type_name))


def block(*halves: float, codes: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(struct.pack(f"<{len(halves)}e", *halves) + codes), dtype=torch.uint8)


def test_q8_0_is_d_times_the_signed_codes():
    codes = bytes(range(-16 & 0xFF, 256)) + bytes(range(16))  # int8 -16 .. -1, then 0 .. 15
    assert torch.equal(dequantize(block(0.5, codes=codes), "Q8_0"), 0.5 * torch.arange(-16, 16.0))


def test_q4_0_holds_weights_0_to_15_in_low_nibbles_and_16_to_31_in_high_ones():
    codes = bytes((15 - j) << 4 | j for j in range(16))  # weight j: code j; weight j + 16: code 15 - j
    q = torch.tensor([*range(16), *range(15, -1, -1)], dtype=torch.float32)
    assert torch.equal(dequantize(block(-0.25, codes=codes), "Q4_0"), -0.25 * (q - 8))


def test_q4_1_is_d_times_the_code_plus_m():
    codes = bytes((15 - j) << 4 | j for j in range(16))
    q = torch.tensor([*range(16), *range(15, -1, -1)], dtype=torch.float32)
    assert torch.equal(dequantize(block(0.125, -1.0, codes=codes), "Q4_1"), 0.125 * q - 1.0)


def test_bf16_is_the_top_half_of_an_f32():
    x = torch.randn(64)
    raw = x.view(torch.int32).bitwise_right_shift(16).to(torch.int16).view(torch.uint8)  # truncation, exact in bf16
    assert torch.equal(dequantize(raw, "BF16").view(torch.int32), x.view(torch.int32) & ~0xFFFF)


def test_dequantize_rejects_a_partial_block():
    with pytest.raises(ValueError, match="expected uint8 bytes of whole 20-byte blocks, got 30"):
        dequantize(torch.zeros(30, dtype=torch.uint8), "Q4_1")


# ---- the real file ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf(fetched("smollm2") / SMOLLM2)


def test_real_file_is_the_smollm2_checkpoint_its_card_describes(smollm2):
    m = smollm2.metadata
    assert smollm2.version == 3 and smollm2.data_start == 1_785_664 and len(m) == 33 and len(smollm2.tensors) == 272
    assert (m["general.architecture"], m["general.license"], m["llama.block_count"], m["llama.embedding_length"]) == ("llama", "apache-2.0", 30, 576)
    assert (m["llama.attention.head_count"], m["llama.attention.head_count_kv"], m["llama.feed_forward_length"]) == (9, 3, 1536)
    assert (m["llama.rope.freq_base"], m["llama.context_length"], m["llama.vocab_size"]) == (100_000.0, 8192, 49152)
    assert m["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert (m["tokenizer.ggml.model"], m["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    assert len(m["tokenizer.ggml.tokens"]) == len(m["tokenizer.ggml.token_type"]) == 49152 and len(m["tokenizer.ggml.merges"]) == 48900
    assert m["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and m["tokenizer.ggml.merges"][0] == "Ġ t"
    ids = ("bos", "eos", "unknown", "padding")
    assert [m[f"tokenizer.ggml.{k}_token_id"] for k in ids] == [1, 2, 0, 2]
    assert "<|im_start|>" in m["tokenizer.chat_template"]
    types = [t.type for t in smollm2.tensors.values()]
    assert (types.count("Q4_1"), types.count("F32"), types.count("Q8_0")) == (210, 61, 1)
    embed = smollm2.tensors["token_embd.weight"]
    assert (embed.shape, embed.type, embed.nbytes) == ((49152, 576), "Q8_0", 49152 * 576 // 32 * 34)
    assert smollm2.tensors["blk.0.attn_k.weight"].shape == (192, 576) and "output.weight" not in smollm2.tensors
    assert smollm2.raw("blk.0.ffn_down.weight").shape == (576, 1536 // 32 * 20)


def test_real_metadata_and_tensor_infos_equal_what_gguf_reader_reads(smollm2):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    reader = gguf.GGUFReader(smollm2.path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert smollm2.metadata == theirs
    assert [type(v) for v in smollm2.metadata.values()] == [type(v) for v in theirs.values()]
    assert list(smollm2.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        ours = smollm2.tensors[t.name]
        assert (ours.shape, ours.type, ours.offset, ours.nbytes) == (tuple(reversed(t.shape.tolist())), t.tensor_type.name, t.data_offset, t.n_bytes)


def test_every_real_tensor_dequantizes_as_the_gguf_package_does(smollm2):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    for name, info in smollm2.tensors.items():
        ours = smollm2.tensor(name)
        assert ours.shape == info.shape and ours.is_contiguous()
        assert_bit_equal(ours, reference_dequantize(gguf, smollm2.raw(name).reshape(-1), info.type).view(info.shape))


def test_tensors_own_their_memory_and_writes_to_raw_views_never_reach_the_file(tmp_path):
    path = write_gguf(tmp_path / "t.gguf", EVERY_VALUE, small_tensors())
    on_disk = path.read_bytes()
    f = read_gguf(path)
    w = f.tensor("F32.0")
    w.fill_(7.0)
    assert not torch.equal(f.tensor("F32.0"), w)  # tensor() gave fresh memory
    f.raw("Q4_1.0").fill_(0)  # raw() is a view of a copy-on-write mapping
    assert path.read_bytes() == on_disk
    assert f.tensor("F32.0", torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(KeyError, match="no tensor 'output.weight'"):
        f.tensor("output.weight")


# ---- round trips through small files -------------------------------------------------------------------------

EVERY_VALUE = {  # key -> (value type, value): all 13 types, nested arrays, UTF-8
    "general.architecture": (8, "llama"),
    "u8": (0, 255), "i8": (1, -128), "u16": (2, 65535), "i16": (3, -32768), "u32": (4, 2**32 - 1), "i32": (5, -(2**31)),
    "f32": (6, 0.5), "bool": (7, True), "u64": (10, 2**64 - 1), "i64": (11, -(2**63)), "f64": (12, 1e-300),
    "string": (8, "héllo ✓"), "empty string": (8, ""),
    "strings": (9, (8, ["a", "", "Ġt he"])), "bools": (9, (7, [True, False])), "floats": (9, (6, [1.5, -2.0])),
    "nested": (9, (9, [(5, [1, 2]), (8, ["x"])])), "empty": (9, (4, [])),
}  # fmt: skip
EVERY_VALUE_READ = {k: v[1] for k, v in EVERY_VALUE.items()} | {"strings": ["a", "", "Ġt he"], "bools": [True, False], "floats": [1.5, -2.0], "nested": [[1, 2], ["x"]], "empty": []}


def small_tensors(seed=0) -> dict:
    """Two tensors of each supported type, ne = [64, 2] and [32, 3], of random bytes with finite scales."""
    g = torch.Generator().manual_seed(seed)
    return {f"{t}.{i}": (t, ne, random_blocks(t, ne[0] * ne[1], g)) for t in BLOCK_TYPES for i, ne in enumerate([[64, 2], [32, 3]])}


def test_our_writer_round_trips_every_value_type_and_tensor_type(tmp_path):
    tensors = small_tensors()
    f = read_gguf(write_gguf(tmp_path / "t.gguf", EVERY_VALUE, tensors))
    assert f.metadata == EVERY_VALUE_READ
    assert {k: type(v) for k, v in f.metadata.items()} == {k: type(v) for k, v in EVERY_VALUE_READ.items()}
    assert list(f.tensors) == list(tensors)
    for name, (type_name, ne, raw) in tensors.items():
        assert f.tensors[name].shape == (ne[1], ne[0]) and f.tensors[name].offset % 32 == 0
        assert f.raw(name).numpy().tobytes() == raw
        assert torch.equal(f.tensor(name).reshape(-1), dequantize(torch.frombuffer(bytearray(raw), dtype=torch.uint8), type_name))


def test_version_2_has_the_same_layout(tmp_path):
    f = read_gguf(write_gguf(tmp_path / "v2.gguf", EVERY_VALUE, small_tensors(), version=2))
    assert f.version == 2 and f.metadata == EVERY_VALUE_READ and len(f.tensors) == 2 * len(BLOCK_TYPES)


def test_a_custom_alignment_places_the_data_section_and_offsets(tmp_path):
    f = read_gguf(write_gguf(tmp_path / "t.gguf", {"general.alignment": (4, 256)}, small_tensors()))
    assert f.data_start % 256 == 0 and all((t.offset - f.data_start) % 256 == 0 for t in f.tensors.values())


def gguf_writer_file(gguf, path, alignment=None):
    """A file written by the reference `gguf.GGUFWriter`: every value type, and small_tensors()."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        writer.add_custom_alignment(alignment)
    V = gguf.GGUFValueType
    for key, (vtype, value) in EVERY_VALUE.items():
        if key == "general.architecture" or key == "empty":  # the writer adds the first and refuses the second
            continue
        if vtype == 9:
            etype, items = value
            items = [v for _, v in items] if etype == 9 else items
            writer.add_key_value(key, items, V.ARRAY, sub_type=V(etype))
        else:
            writer.add_key_value(key, value, V(vtype))
    for name, (type_name, ne, raw) in small_tensors().items():
        data = np.frombuffer(raw, np.uint8).reshape(ne[1], -1)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[type_name])  # the shape from the bytes per row
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("alignment", [None, 64])
def test_files_of_the_gguf_writer_read_back_exactly(tmp_path, alignment):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    f = read_gguf(gguf_writer_file(gguf, tmp_path / "w.gguf", alignment))
    expected = {k: v for k, v in EVERY_VALUE_READ.items() if k != "empty"} | ({"general.alignment": alignment} if alignment else {})
    assert f.metadata == expected
    for name, (type_name, ne, raw) in small_tensors().items():
        assert f.raw(name).numpy().tobytes() == raw
        assert_bit_equal(f.tensor(name).reshape(-1), reference_dequantize(gguf, torch.frombuffer(bytearray(raw), dtype=torch.uint8), type_name))


def test_gguf_reader_reads_our_writers_files_as_we_do(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    path = write_gguf(tmp_path / "t.gguf", {k: v for k, v in EVERY_VALUE.items() if k not in ("nested", "empty")}, small_tensors())
    reader, ours = gguf.GGUFReader(path), read_gguf(path)
    assert {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")} == ours.metadata
    assert [(t.name, t.data_offset, t.n_bytes) for t in reader.tensors] == [(t.name, t.offset, t.nbytes) for t in ours.tensors.values()]


# ---- malformed files ------------------------------------------------------------------------------------------

ARCH = {"general.architecture": (8, "llama")}
TWO = lambda: {"a": ("Q4_1", [64, 2], random_blocks("Q4_1", 128, torch.Generator().manual_seed(1))), "b": ("F32", [8], bytes(range(32)))}  # noqa: E731
U64_MAX = 2**64 - 1


def header(tensor_count: int, kv_count: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count)


def kv(key, vtype, payload: bytes) -> dict:
    """A metadata entry written raw: its value type, then `payload`."""
    return {key: struct.pack("<I", vtype) + payload}


MALFORMED = {  # case -> (file bytes, the problem the error must name)
    "bad magic": (lambda: b"GGML" + gguf_bytes(ARCH, TWO())[4:], "header: starts with b'GGML', not the magic b'GGUF'"),
    "version 1": (lambda: gguf_bytes(ARCH, TWO(), version=1), "version 1 is not supported"),
    "version 4": (lambda: gguf_bytes(ARCH, TWO(), version=4), "version 4 is not supported"),
    "big-endian": (lambda: gguf_bytes(ARCH, TWO(), version=3 << 24), "a big-endian file"),
    "kv_count 2^60": (lambda: gguf_bytes(ARCH, TWO(), counts=(2, 2**60)), "1152921504606846976 metadata entries and 2 tensor infos cannot fit"),
    "tensor_count 2^64-1": (lambda: gguf_bytes(ARCH, TWO(), counts=(U64_MAX, 1)), f"1 metadata entries and {U64_MAX} tensor infos cannot fit"),
    "key length 2^63": (lambda: header(0, 1) + struct.pack("<Q", 2**63) + bytes(16), f"metadata entry 0: key of {2**63} bytes needs"),
    "string length past end": (lambda: gguf_bytes(kv("s", 8, struct.pack("<Q", 10_000) + b"abc"), {}), "metadata key 's': string of 10000 bytes needs 10000 bytes"),
    "array length 2^60": (lambda: gguf_bytes(kv("arr", 9, struct.pack("<IQ", 4, 2**60)), {}), "metadata key 'arr': array of 1152921504606846976 UINT32 needs"),
    "string array 2^60": (lambda: gguf_bytes(kv("arr", 9, struct.pack("<IQ", 8, 2**60)), {}), "array of 1152921504606846976 STRING needs at least"),
    "unknown value type": (lambda: gguf_bytes(kv("x", 13, b"\0" * 8), {}), "metadata key 'x': unknown value type 13; known: 0 to 12"),
    "unknown array type": (lambda: gguf_bytes(kv("x", 9, struct.pack("<IQ", 99, 1)), {}), "metadata key 'x': array of unknown value type 99"),
    "bool byte 2": (lambda: gguf_bytes(kv("flag", 7, b"\2"), {}), "metadata key 'flag': BOOL is a bool stored as byte 2"),
    "bool array byte 9": (lambda: gguf_bytes(kv("flags", 9, struct.pack("<IQ", 7, 2) + b"\1\x09"), {}), "array of 2 BOOL holds byte 9"),
    "nested too deep": (lambda: gguf_bytes(kv("deep", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0)), {}), "arrays nest more than 8 deep"),
    "key not utf-8": (lambda: header(0, 1) + struct.pack("<Q", 3) + b"\xff\xfe\xfd" + struct.pack("<II", 4, 1), "metadata entry 0: key is not valid UTF-8"),
    "duplicate key": (lambda: gguf_bytes([("k", (4, 1)), ("j", (4, 2)), ("k", (8, "again"))], {}), "metadata key 'k': appears twice"),
    "alignment 24": (lambda: gguf_bytes({"general.alignment": (4, 24)}, TWO()), "'general.alignment': is 24, expected a power of two"),
    "alignment a string": (lambda: gguf_bytes({"general.alignment": (8, "32")}, {}), "is '32', expected a power of two"),
    "duplicate tensor": (lambda: gguf_bytes(ARCH, [("a", TWO()["a"]), ("b", TWO()["b"]), ("a", TWO()["b"])]), "tensor 'a': appears twice"),
    "n_dims 5": (lambda: gguf_bytes(ARCH, {"w": ("F32", [1, 1, 1, 1, 8], bytes(32))}), "tensor 'w': has n_dims 5, expected 1 to 4"),
    "zero dim": (lambda: gguf_bytes(ARCH, {"w": ("F32", [8, 0], b"")}), "tensor 'w': has dims ne=[8, 0], expected positive dims"),
    "huge dims": (lambda: gguf_bytes(ARCH, {"w": ("F32", [2**32, 2**32], bytes(32))}), "whose product is below 2^63"),
    "dims past the file": (lambda: gguf_bytes(ARCH, {"w": ("F32", [2**20], bytes(32))}), "tensor 'w': F32 [1048576] needs bytes"),
    "partial block": (lambda: gguf_bytes(ARCH, {"w": ("Q4_1", [48, 2], bytes(60))}), "ne[0] = 48, not a multiple of the Q4_1 block of 32"),
    "unknown tensor type": (lambda: gguf_bytes(ARCH, {"w": (99, [8], bytes(32))}), "tensor 'w': has unknown ggml type 99"),
    "unsupported Q4_K": (lambda: gguf_bytes(ARCH, {"w": (12, [256], bytes(144))}), "Q4_K is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"),
    "misaligned offset": (lambda: gguf_bytes(ARCH, TWO(), offsets=[0, 164]), "tensor 'b': has offset 164, not a multiple of the alignment 32"),
    "offset past the end": (lambda: gguf_bytes(ARCH, TWO(), offsets=[0, 2**40]), "tensor 'b': F32 [8] needs bytes"),
    "offset 2^64-32": (lambda: gguf_bytes(ARCH, TWO(), offsets=[0, U64_MAX - 31]), "tensor 'b': F32 [8] needs bytes"),
    "overlapping offsets": (lambda: gguf_bytes(ARCH, TWO(), offsets=[0, 64]), "tensor 'b' at bytes [224, 256) overlaps tensor 'a', which ends at 240"),
    "same offset": (lambda: gguf_bytes(ARCH, TWO(), offsets=[0, 0]), "overlaps tensor 'a', which ends at"),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_gives_value_error_naming_the_file_entry_and_problem(tmp_path, case):
    make, problem = MALFORMED[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{re.escape(problem)}"):
        read_gguf(path)


def test_a_short_file_names_the_header_it_lacks(tmp_path):
    path = write_gguf(tmp_path / "short.gguf", {}, {})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: file is 20 bytes, shorter than the 24-byte GGUF header"):
        read_gguf(path)


def test_every_truncation_before_the_last_tensors_end_is_a_value_error(tmp_path):
    raw = gguf_bytes(EVERY_VALUE, small_tensors())
    last_end = max(t.offset + t.nbytes for t in read_gguf(write_gguf(tmp_path / "ok.gguf", EVERY_VALUE, small_tensors())).tensors.values())
    assert last_end == len(raw)
    path = tmp_path / "cut.gguf"
    for cut in range(len(raw)):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
            read_gguf(path)


def test_truncated_files_of_the_gguf_writer_are_value_errors(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    raw = gguf_writer_file(gguf, tmp_path / "w.gguf").read_bytes()
    last_end = max(t.offset + t.nbytes for t in read_gguf(tmp_path / "w.gguf").tensors.values())
    path = tmp_path / "cut.gguf"
    for cut in range(0, last_end, 7):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
            read_gguf(path)


@pytest.mark.parametrize(
    "at, value, problem",
    [
        (0, b"GGUG", "starts with b'GGUG', not the magic"),
        (4, struct.pack("<I", 1), "version 1 is not supported"),
        (8, struct.pack("<Q", 2**60), "tensor infos cannot fit"),
        (16, struct.pack("<Q", 2**62), "metadata entries and"),
        (24, struct.pack("<Q", 2**40), "metadata entry 0: key of 1099511627776 bytes needs"),
    ],
)
def test_a_damaged_header_of_a_gguf_writer_file_is_a_value_error(tmp_path, at, value, problem):
    gguf = pytest.importorskip("gguf", reason="the reference `gguf` package is not installed")
    raw = bytearray(gguf_writer_file(gguf, tmp_path / "w.gguf").read_bytes())
    raw[at : at + len(value)] = value
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{re.escape(problem)}"):
        read_gguf(path)


# ---- fuzzing ---------------------------------------------------------------------------------------------------


def mutate(raw: bytes, header_end: int, rng: random.Random) -> bytes:
    """One random damage: bytes overwritten, a big number written over a count or length, a cut, or bytes
    inserted or deleted, all within the header (where the bounds live) or anywhere for a cut."""
    out = bytearray(raw)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(header_end)] = rng.randrange(256)
    elif kind == 1:
        at = rng.randrange(header_end - 8)
        big = rng.choice([2**60, 2**63, 2**64 - 1, 2**32, 2**31 + rng.randrange(2**31), rng.randrange(2**64)])
        out[at : at + 8] = struct.pack("<Q", big)
    elif kind == 2:
        del out[rng.randrange(len(out)) :]
    else:
        at = rng.randrange(header_end)
        if rng.random() < 0.5:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del out[at : at + rng.randint(1, 8)]
    return bytes(out)


def fuzz(tmp_path, n: int, seed: int) -> dict:
    raw = gguf_bytes(EVERY_VALUE, small_tensors())
    header_end = read_gguf(write_gguf(tmp_path / "ok.gguf", EVERY_VALUE, small_tensors())).data_start
    rng = random.Random(seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = {"rejected": 0, "read": 0, "slowest rejection s": 0.0, "slowest read s": 0.0}
    tracemalloc.start()
    try:
        for i in range(n):
            path = tmp_path / f"fuzz{i % 8}.gguf"
            path.write_bytes(mutate(raw, header_end, rng))
            start = time.perf_counter()
            try:
                f = read_gguf(path)  # anything but a ValueError fails the test
                for name in f.tensors:
                    f.tensor(name)
            except ValueError as err:
                assert str(err).startswith(f"{path}: "), err
                stats["rejected"] += 1
                key = "slowest rejection s"
            else:
                stats["read"] += 1
                key = "slowest read s"
            stats[key] = max(stats[key], time.perf_counter() - start)
        stats["peak traced MB"] = tracemalloc.get_traced_memory()[1] / 2**20  # Python objects and numpy arrays
        stats["peak RSS growth MB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**10  # torch too
    finally:
        tracemalloc.stop()
    print(f"gguf fuzz, {n} mutations of a {len(raw)}-byte file: {stats}")
    return stats


def check_fuzz(stats: dict, n: int):
    assert stats["rejected"] + stats["read"] == n
    assert stats["rejected"] > n // 2, stats  # most damage is caught; each catch is a clean ValueError
    assert stats["slowest rejection s"] < 1.0 and stats["slowest read s"] < 1.0, stats  # no hang, no huge loop
    assert stats["peak traced MB"] < 16 and stats["peak RSS growth MB"] < 64, stats  # no count was allocated unchecked


def test_random_damage_gives_value_error_or_a_clean_read_quickly_and_in_little_memory(tmp_path):
    check_fuzz(fuzz(tmp_path, 400, seed=0), 400)


@pytest.mark.slow
def test_many_random_damages_give_value_error_or_a_clean_read(tmp_path):
    check_fuzz(fuzz(tmp_path, 5000, seed=1), 5000)
