"""Seeded random mutations of every file the loaders read: each must load or raise InputError (or FileNotFoundError,
where a mutated name points at a missing file), never another exception, and no load may grow the process by
hundreds of MiB. 300 mutations here (50 a target), 3,000 in `make test-slow`.

Targets: a safetensors file (io/safetensors.load_file), a classifier folder's config.json and model.safetensors
(SequenceClassifier.from_pretrained), an adapter folder (load_classifier), a quantized folder (load_quantized), a
checkpoint.pt (train/checkpoint.load) and a GGUF file (CausalLM.from_pretrained); a model that loads must then run
on a batch (`classify`, `continue_text`), so that "loads, then fails at the first prediction" is a finding too. Folders are fuzzed without their
manifest.json, so that the loaders' own checks are what is tested; with the manifest every byte change is refused
by it (tests/test_manifest.py). Mutations: flip, zero or set random bytes; truncate; append; and for JSON files,
replace a random value with one of another type or an absurd size, delete a key, or write the text back with a
key repeated. The slowest rejection and the largest peak of resident memory above the start of a load are printed (pytest -s shows them).
"""

import json
import random
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import llama_gguf, make_tiny

from minitransformers.cli import main
from minitransformers.errors import InputError
from minitransformers.io.safetensors import load_file, save_file
from minitransformers.model import CausalLM, SequenceClassifier
from minitransformers.peft.methods import load_classifier
from minitransformers.quant.serialize import load_quantized
from minitransformers.train import checkpoint

ODD_VALUES = [None, -1, 0, 1.5, 10**12, 2**70, "x", "", [], [1, 2], {}, {"a": 1}, True, float("nan")]
GGUF_CONFIG = dict(vocab_size=40, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96, rope_theta=10000.0,
                   rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip


def mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    raw = bytearray(raw)
    kind = rng.choice(["flip", "zero", "set", "truncate", "append", "header"])
    if kind == "truncate":
        return bytes(raw[: rng.randrange(len(raw))])
    if kind == "append":
        return bytes(raw) + rng.randbytes(rng.randint(1, 64))
    start = rng.randrange(min(len(raw), 4096) if kind == "header" else len(raw))  # headers live at the start
    span = rng.choice([1, 1, 2, 8, 64])
    for i in range(start, min(start + span, len(raw))):
        raw[i] = {"flip": raw[i] ^ (1 << rng.randrange(8)), "zero": 0, "set": rng.randrange(256), "header": rng.randrange(256)}[kind]
    return bytes(raw)


def mutate_json(text: str, rng: random.Random) -> str:
    obj = json.loads(text)
    path, node = [], obj
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:  # walk down to a random place
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return json.dumps(rng.choice(ODD_VALUES))
    parent, key = path[-1]
    kind = rng.choice(["value", "value", "delete", "repeat"])
    if kind == "delete":
        del parent[key]
    elif kind == "value" or not isinstance(parent, dict):
        parent[key] = rng.choice(ODD_VALUES)
    else:  # the same key twice in the text: a reader that keeps the last would be fooled
        repeated = json.dumps({key: rng.choice(ODD_VALUES)})[1:-1]
        return json.dumps(obj).replace("{", "{" + repeated + ", ", 1) if isinstance(obj, dict) else json.dumps(obj)
    return json.dumps(obj)


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """name -> (the pristine files, the file names to mutate, the loader of a mutated copy, and what to do with what it
    loaded: `classify` or `continue_text`, or nothing)."""
    root = tmp_path_factory.mktemp("fuzz")
    tiny = make_tiny(root / "tiny")
    run = root / "run"
    common = ["--data", str(tiny / "reviews.csv"), "--batch-size", "8", "--device", "cpu", "--max-length", "32", "--max-steps", "2"]
    main(["finetune", "--model", str(tiny / "model"), "--out", str(run), *common])
    main(["finetune", "--model", str(tiny / "model"), "--out", str(root / "adapter"), "--method", "lora", *common])
    main(["quantize", "--model", str(run), "--method", "nf4", "--out", str(root / "quantized")])
    (root / "st").mkdir()
    save_file({"a": torch.randn(3, 5), "b": torch.randint(0, 9, (7,)), "c": torch.randn(2, dtype=torch.float16)}, root / "st" / "x.safetensors")
    (root / "gguf").mkdir()
    llama_gguf(root / "gguf" / "m.gguf", GGUF_CONFIG, lambda name: "Q4_0" if ".attn" in name else "Q8_0")
    for folder in (run, root / "adapter", root / "quantized"):
        (folder / "manifest.json").unlink()
    shutil.copy(run / "checkpoint.pt", root / "checkpoint.pt")
    return {
        "safetensors": (root / "st", ["x.safetensors"], lambda d: load_file(d / "x.safetensors"), None),
        "classifier": (run, ["config.json", "model.safetensors"], SequenceClassifier.from_pretrained, classify),
        "adapter": (root / "adapter", ["adapter.json", "adapter.safetensors"], load_classifier, classify),
        "quantized": (root / "quantized", ["quantization.json", "quantized.safetensors", "config.json"], load_quantized, classify),
        "checkpoint": (root, ["checkpoint.pt"], lambda d: checkpoint.load(d / "checkpoint.pt"), None),
        "gguf": (root / "gguf", ["m.gguf"], lambda d: CausalLM.from_pretrained(d / "m.gguf"), continue_text),
    }


@torch.no_grad()
def classify(model: SequenceClassifier) -> None:
    """What a loaded classifier is for: logits (B, labels) for a padded batch. Loading is not enough: a layout or a
    tensor that its layers cannot compute with must be refused at load, not at the first prediction. (The logits
    may be inf: a mutated float byte can make a weight 1e38, which is finite, so it loads.)"""
    ids = torch.randint(0, model.encoder.embeddings.word.num_embeddings, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    assert model.eval()(ids, mask).shape == (2, len(model.labels))


@torch.no_grad()
def continue_text(model: CausalLM) -> None:
    """What a loaded causal LM is for: next-token logits (B, T, vocabulary)."""
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    assert model.eval()(ids).shape == (2, 5, model.config.vocab_size)


def status_kib(field: str) -> int:
    """A /proc/self/status field in KiB: VmRSS (resident now) or VmHWM (the peak since the last reset)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_rss() -> int:
    """Reset the peak resident size to the current one (Linux: clear_refs 5); -> the current one, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def fuzz(targets, tmp_path, count: int, seed: int) -> dict:
    """`count` mutations of each target; -> the outcomes, the slowest rejection and the largest growth of the
    resident memory during one load (MiB)."""
    stats = {"loaded": 0, "refused": 0, "slowest_s": 0.0, "slowest": "", "peak_mb": 0.0}
    for name, (source, files, load, use) in targets.items():
        for i in range(count):
            rng = random.Random(f"{seed}-{name}-{i}")
            work = tmp_path / f"{name}{i}"
            shutil.copytree(source, work, ignore=shutil.ignore_patterns("checkpoint.pt") if name != "checkpoint" else None)
            file = work / rng.choice(files)
            raw = file.read_bytes()
            file.write_bytes(mutate_json(raw.decode(), rng).encode() if file.suffix == ".json" else mutate_bytes(raw, rng))
            base = reset_peak_rss()
            start = time.perf_counter()
            try:
                loaded = load(work)
                stats["loaded"] += 1
            except (InputError, FileNotFoundError):  # the CLI prints both as one line (a FileNotFoundError names the missing file)
                stats["refused"] += 1
                loaded = None
            except Exception as err:  # noqa: BLE001  # the finding: anything but the project's own error
                pytest.fail(f"{name} mutation {i} (seed {seed}) of {file.name}: {type(err).__name__}: {err}")
            finally:
                seconds = time.perf_counter() - start
                peak = (status_kib("VmHWM") - base) / 2**10
            if loaded is not None and use is not None:
                try:
                    use(loaded)
                except Exception as err:  # noqa: BLE001  # loaded, then unusable: a check that load lacks
                    pytest.fail(f"{name} mutation {i} (seed {seed}) of {file.name} loaded, then failed in use: {type(err).__name__}: {err}")
            if seconds > stats["slowest_s"]:
                stats["slowest_s"], stats["slowest"] = seconds, f"{name} {i} ({file.name})"
            stats["peak_mb"] = max(stats["peak_mb"], peak)
            shutil.rmtree(work)
    print(f"\nfuzz: {stats}; max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    return stats


def check(stats: dict) -> None:
    """Some mutations are refused, and none made a load grow the process by more than 512 MiB (the files are
    a few hundred KiB). The slowest rejection is printed, not asserted: tests check correctness, not speed."""
    assert stats["refused"] > 0 and stats["peak_mb"] < 512, stats


def test_mutated_files_load_or_raise_input_error(targets, tmp_path):
    check(fuzz(targets, tmp_path, count=50, seed=0))


@pytest.mark.slow
def test_thousands_of_mutated_files_load_or_raise_input_error(targets, tmp_path):
    check(fuzz(targets, tmp_path, count=500, seed=1))


def test_a_huge_claimed_tensor_is_refused_without_allocating(tmp_path):
    """A header that claims a 1 TiB tensor over a short file: refused from the header, before any read."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}).encode()
    (tmp_path / "big.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    with pytest.raises(InputError, match="big.safetensors"):
        load_file(tmp_path / "big.safetensors")
    assert Path(tmp_path / "big.safetensors").stat().st_size < 1000


def test_a_sparse_terabyte_file_is_refused_for_the_memory_it_would_need(tmp_path):
    """The header's byte ranges fit the file, which is sparse on disk: refused before a byte of it is read."""
    n = 2**40
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + n)
    with pytest.raises(InputError, match=r"sparse.safetensors: its tensors need 1024.0 GiB, but .* GiB of memory is available"):
        load_file(path)


def test_a_header_of_a_million_tiny_tensors_is_refused_before_parsing(tmp_path):
    """Issue 18 measured 47 s and 2.7 GB for such a header; it is refused from a count of its entries."""
    n = 150_000
    entry = '"t{}":{{"dtype":"U8","shape":[1],"data_offsets":[{},{}]}}'
    header = ("{" + ",".join(entry.format(i, i, i + 1) for i in range(n)) + "}").encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "many.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(n))
    with pytest.raises(InputError, match=r"many.safetensors: header lists 150,000 tensors, more than the 100,000"):
        load_file(tmp_path / "many.safetensors")
