"""The catalogue of bad inputs that issue 18 tried, one builder per case, shared by tests/test_bad_inputs.py (in
process, against this checkout) and scripts/bad_inputs_report.py (a subprocess per case, against any checkout,
for the before/after table).

A builder gets `Artifacts` (a tiny model, its data, and a full run, an adapter run and a quantized folder made
from them, all read-only for the cases) and a fresh folder `tmp` of its own; it makes its bad input there and
returns a `Case`: the CLI arguments, the stdin, what the one-line error must contain (a file or flag name), and
the folders the command must not change. `ok=True` marks the few cases that must succeed (a torn last log line, a
moved copy of the data). Every case is a class from the issue; the comments say which finding it reproduces.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Case:
    argv: list[str]
    expect: str  # a substring of the error line: the file or flag it names
    stdin: str = ""
    ok: bool = False  # the command must succeed instead
    keep: list[Path] = field(default_factory=list)  # folders the command must leave unchanged (the artifacts always)


@dataclass
class Artifacts:
    root: Path  # the tiny fixture: model/, reviews.csv, corpus.txt
    full: Path  # a finetune --method full run folder (best model, checkpoint.pt, manifest.json)
    adapter: Path  # a finetune --method bitfit run folder over `model`
    quantized: Path  # quantize --method int8 of `full`

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "reviews.csv"


def train_args(a: Artifacts, out, *extra) -> list[str]:
    return ["finetune", "--model", str(a.model), "--data", str(a.data), "--out", str(out), "--batch-size", "8", "--lr", "1e-3",
            "--device", "cpu", "--max-length", "32", "--max-steps", "2", *extra]  # fmt: skip


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    (folder / "manifest.json").unlink(missing_ok=True)  # a hand-edited folder: the check under test, not the manifest's
    return folder


def write_safetensors(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def model_with_tensor(a: Artifacts, tmp: Path, name: str, change) -> Path:
    """A copy of the tiny model whose tensor NAME is replaced by change(tensor)."""
    from minitransformers.io.safetensors import load_file, save_file

    folder = copy_of(a.model, tmp / "model")
    state = load_file(folder / "model.safetensors")
    state[name] = change(state[name])
    save_file(state, folder / "model.safetensors")
    return folder


def flip_bytes(path: Path, offset_from_end: int = 100, count: int = 4096) -> None:
    raw = bytearray(path.read_bytes())
    start = max(0, len(raw) - offset_from_end - count)
    raw[start : start + count] = bytes(b ^ 0xFF for b in raw[start : start + count])
    path.write_bytes(bytes(raw))


def csv_file(tmp: Path, rows: list[str], header: str = "text,label") -> Path:
    path = tmp / "data.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def reviews(n: int, labels=(0, 1)) -> list[str]:
    words = ["good film", "bad plot", "great actor", "awful story"]
    return [f"{words[i % 4]} number {i},{labels[i % len(labels)]}" for i in range(n)]


# ---- flags ----------------------------------------------------------------------------------------------------------
def flag_cases() -> dict:
    bad = {  # flag value -> the flag named in the error
        "grad-accum 0": ["--grad-accum", "0"], "epochs 0": ["--epochs", "0"], "epochs -1": ["--epochs", "-1"],
        "max-length 0": ["--max-length", "0"], "warmup 5": ["--warmup", "5"], "warmup -1": ["--warmup", "-1"],
        "max-steps -3": ["--max-steps", "-3"], "eval-every -1": ["--eval-every", "-1"], "max-train-examples -5": ["--max-train-examples", "-5"],
        "batch-size 0": ["--batch-size", "0"], "lr nan": ["--lr", "nan"], "lr -1": ["--lr", "-1"], "lora-dropout 1.5": ["--lora-dropout", "1.5"],
        "seed -1": ["--seed", "-1"], "weight-decay x": ["--weight-decay", "x"],
    }  # fmt: skip
    cases = {f"finetune --{k}": (lambda a, tmp, v=v: Case(train_args(a, tmp / "out", *v), v[0])) for k, v in bad.items()}
    cases["finetune --max-length 100000 (the model has 32 positions)"] = lambda a, tmp: Case(train_args(a, tmp / "out", "--max-length", "100000"), "--max-length 100000")
    cases["finetune --lora-r with --method head"] = lambda a, tmp: Case(train_args(a, tmp / "out", "--method", "head", "--lora-r", "4"), "--lora-r")
    cases["finetune --num-virtual-tokens with --method lora"] = lambda a, tmp: Case(train_args(a, tmp / "out", "--method", "lora", "--num-virtual-tokens", "4"), "--num-virtual-tokens")
    if not torch.cuda.is_available():
        cases["finetune --device cuda without a GPU"] = lambda a, tmp: Case(train_args(a, tmp / "out", "--device", "cuda"), "--device")
    cases["finetune --device nonsense"] = lambda a, tmp: Case(train_args(a, tmp / "out", "--device", "gpu0"), "--device")
    cases["predict with no text"] = lambda a, tmp: Case(["predict", "--model", str(a.full), "--device", "cpu"], "no TEXT")
    cases["embed with no text"] = lambda a, tmp: Case(["embed", "--model", str(a.model), "--device", "cpu"], "no TEXT")
    cases["predict --max-length 100000"] = lambda a, tmp: Case(["predict", "--model", str(a.full), "--device", "cpu", "--max-length", "100000", "hi"], "--max-length")
    cases["evaluate --batch-size 0"] = lambda a, tmp: Case(["evaluate", "--model", str(a.full), "--data", str(a.data), "--batch-size", "0"], "--batch-size")
    cases["quantize --group-size 0"] = lambda a, tmp: Case(["quantize", "--model", str(a.full), "--method", "int4", "--group-size", "0", "--out", str(tmp / "q")], "--group-size")
    cases["generate --top-p 0"] = lambda a, tmp: Case(["generate", "--model", str(tmp), "--top-p", "0", "hi"], "--top-p")
    cases["generate --temperature -1"] = lambda a, tmp: Case(["generate", "--model", str(tmp), "--temperature", "-1", "hi"], "--temperature")
    cases["generate --max-new-tokens 0"] = lambda a, tmp: Case(["generate", "--model", str(tmp), "--max-new-tokens", "0", "hi"], "--max-new-tokens")
    return cases


# ---- where a run writes -------------------------------------------------------------------------------------------
def out_cases() -> dict:
    def existing_file(a, tmp):
        (tmp / "file").write_text("mine")
        return Case(train_args(a, tmp / "file"), "is an existing file", keep=[tmp])

    def rerun(a, tmp):
        run = copy_of(a.full, tmp / "run")
        return Case(train_args(a, run), "already holds a run", keep=[run])

    def data_inside_out(a, tmp):
        (tmp / "run").mkdir()
        data = Path(shutil.copy(a.data, tmp / "run" / "reviews.csv"))
        return Case([*train_args(a, tmp), "--data", str(data)], "contains --data", keep=[tmp])

    return {
        "finetune --out = --model": lambda a, tmp: Case(train_args(a, a.model), "inside --model"),
        "finetune --out inside --model": lambda a, tmp: Case(train_args(a, a.model / "run"), "inside --model"),
        "finetune --out ''": lambda a, tmp: Case(train_args(a, ""), "--out is empty"),
        "finetune --out an existing file": existing_file,
        "finetune into an existing run without --resume": rerun,
        "finetune --out containing --data": data_inside_out,
        "quantize --out = --model": lambda a, tmp: Case(["quantize", "--model", str(a.full), "--method", "int8", "--out", str(a.full)], "inside --model"),
        "compress --out = --model": lambda a, tmp: Case(["compress", "--model", str(a.full), "--data", str(a.data), "--out", str(a.full), "--device", "cpu"], "inside --model"),
        "pretrain --out ''": lambda a, tmp: Case(["pretrain", "--steps", "1", "--out", ""], "--out is empty"),
    }


# ---- checkpoints and resuming -------------------------------------------------------------------------------------
def resume_cases() -> dict:
    def damaged(mutate, drop_manifest=False):
        def build(a, tmp):
            run = copy_of(a.full, tmp / "run")
            mutate(run / "checkpoint.pt")
            if drop_manifest:
                (run / "manifest.json").unlink()
            return Case(train_args(a, run, "--resume"), "checkpoint.pt")

        return build

    def zero_4k(path):
        raw = bytearray(path.read_bytes())
        raw[8192 : 8192 + 4096] = bytes(4096)
        path.write_bytes(bytes(raw))

    def malicious(path):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > /tmp/minitransformers_pwned",))

        with open(path, "wb") as f:
            pickle.dump({"model": Evil()}, f)

    def drop_key(key):
        def mutate(path):
            ckpt = torch.load(path, weights_only=True)
            del ckpt[key]
            torch.save(ckpt, path)

        return mutate

    def torn_log(middle: bool):
        def build(a, tmp):
            run = copy_of(a.full, tmp / "run")
            lines = (run / "metrics.jsonl").read_text().splitlines()
            lines.insert(1 if middle else len(lines), '{"step": 99, "lo')
            (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            return Case(train_args(a, run, "--resume"), "metrics.jsonl:2" if middle else "", ok=not middle)

        return build

    def changed(*flags, expect):
        return lambda a, tmp: Case([*train_args(a, copy_of(a.full, tmp / "run"), "--resume"), *flags], expect)

    def changed_data(a, tmp):
        data = tmp / "other.csv"
        data.write_bytes(a.data.read_bytes() + b"one more good review,1\n")
        return Case([*train_args(a, copy_of(a.full, tmp / "run"), "--resume"), "--data", str(data)], "data_sha256")

    def moved_data(a, tmp):
        data = Path(shutil.copy(a.data, tmp / "copy.csv"))
        return Case([*train_args(a, copy_of(a.full, tmp / "run"), "--resume"), "--data", str(data)], "", ok=True)

    def anyway(a, tmp):
        return Case([*train_args(a, copy_of(a.full, tmp / "run"), "--resume-anyway"), "--lr", "2e-3"], "", ok=True)

    return {
        "resume: checkpoint.pt with 4 KB zeroed": damaged(zero_4k),
        "resume: checkpoint.pt with 4 KB inverted": damaged(flip_bytes),
        "resume: checkpoint.pt truncated to 0 bytes": damaged(lambda p: p.write_bytes(b"")),
        "resume: checkpoint.pt with 4 KB zeroed, no manifest": damaged(zero_4k, drop_manifest=True),
        "resume: zero-byte checkpoint.pt, no manifest": damaged(lambda p: p.write_bytes(b""), drop_manifest=True),
        "resume: a malicious pickle as checkpoint.pt": damaged(malicious, drop_manifest=True),
        "resume: checkpoint.pt without its optimizer": damaged(drop_key("optimizer"), drop_manifest=True),
        "resume: checkpoint.pt without its rng": damaged(drop_key("rng"), drop_manifest=True),
        "resume with no checkpoint": lambda a, tmp: Case(train_args(a, tmp / "new", "--resume"), "no checkpoint"),
        "resume with another --lr": changed("--lr", "2e-3", expect="lr 0.001 -> 0.002"),
        "resume with another --batch-size": changed("--batch-size", "4", expect="batch_size 8 -> 4"),
        "resume with another --model": lambda a, tmp: Case([*train_args(a, copy_of(a.full, tmp / "run"), "--resume"), "--model", str(
            model_with_tensor(a, tmp, "embeddings.word_embeddings.weight", lambda t: t + 0.01))], "model_sha256"),
        "resume with edited --data": changed_data,
        "resume with the same data copied elsewhere": moved_data,
        "resume --resume-anyway with another --lr": anyway,
        "resume: a torn last line in metrics.jsonl": torn_log(middle=False),
        "resume: a torn line inside metrics.jsonl": torn_log(middle=True),
    }


# ---- model, adapter and quantized folders ---------------------------------------------------------------------------
def folder_cases() -> dict:
    def predict(folder, expect):
        return Case(["predict", "--model", str(folder), "--device", "cpu", "a good film"], expect)

    def config_edit(**changes):
        return lambda a, tmp: predict(edit_config(copy_of(a.full, tmp / "m"), **changes), "config.json")

    def config_text(text):
        def build(a, tmp):
            folder = copy_of(a.full, tmp / "m")
            (folder / "config.json").write_text(text)
            (folder / "manifest.json").unlink()
            return predict(folder, "config.json")

        return build

    def weights(name, change, expect):
        def build(a, tmp):
            folder = model_with_tensor(a, tmp, name, change)
            return Case(["embed", "--model", str(folder), "--device", "cpu", "a good film"], expect)

        return build

    def relabelled_i32(a, tmp):
        from minitransformers.io.safetensors import load_file

        folder = copy_of(a.model, tmp / "model")
        state = load_file(folder / "model.safetensors")
        header, offset, data = {}, 0, b""
        for name in sorted(state):
            raw = state[name].contiguous().view(torch.uint8).numpy().tobytes()
            dtype = "I32" if name == "embeddings.word_embeddings.weight" else "F32"
            header[name] = {"dtype": dtype, "shape": list(state[name].shape), "data_offsets": [offset, offset + len(raw)]}
            offset, data = offset + len(raw), data + raw
        write_safetensors(folder / "model.safetensors", header, data)
        return Case(["embed", "--model", str(folder), "--device", "cpu", "hi"], "embeddings.word_embeddings.weight")

    def damaged_file(source, name, drop_manifest=False, expect=None):
        def build(a, tmp):
            folder = copy_of(getattr(a, source), tmp / "m")
            flip_bytes(folder / name, offset_from_end=64, count=64)
            if drop_manifest:
                (folder / "manifest.json").unlink()
            return predict(folder, expect or name)

        return build

    def edit_json(source, name, edit, expect=None):
        def build(a, tmp):
            folder = copy_of(getattr(a, source), tmp / "m")
            obj = json.loads((folder / name).read_text())
            edit(obj)
            (folder / name).write_text(json.dumps(obj))
            (folder / "manifest.json").unlink()
            return predict(folder, expect or name)

        return build

    def other_base(a, tmp):
        base = model_with_tensor(a, tmp, "encoder.layer.0.attention.self.query.weight", lambda t: t.flip(0))
        return Case(["predict", "--model", str(a.adapter), "--base", str(base), "--device", "cpu", "a good film"], "trained over a base")

    def duplicate_keys(a, tmp):
        folder = copy_of(a.model, tmp / "model")
        raw = (folder / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = raw[8 : 8 + n].decode().rstrip()
        first = header[1 : header.index("},") + 1]  # the first entry, repeated: the last would win
        text = ("{" + first + "," + header[1:]).encode()
        text += b" " * (-len(text) % 8)
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
        return Case(["embed", "--model", str(folder), "--device", "cpu", "hi"], "model.safetensors")

    return {
        "config.json: num_hidden_layers a string": config_edit(num_hidden_layers="6"),
        "config.json: hidden_size a float": config_edit(hidden_size=32.5),
        "config.json: num_attention_heads 0": config_edit(num_attention_heads=0),
        "config.json: vocab_size 0": config_edit(vocab_size=0),
        "config.json: pad_token_id past the vocabulary": config_edit(pad_token_id=10**6),
        "config.json: num_hidden_layers 10000": config_edit(num_hidden_layers=10000),
        "config.json: id2label a list": config_edit(id2label=["a", "b"]),
        "config.json: a JSON list": config_text("[1, 2, 3]"),
        "config.json: not JSON": config_text("{'hidden_size': 32"),
        "weights: NaN in a tensor": weights("encoder.layer.0.attention.self.query.weight", lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "encoder.layer.0.attention.self.query.weight"),
        "weights: inf in a tensor": weights("embeddings.LayerNorm.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "embeddings.LayerNorm.weight"),
        "weights: an I64 tensor": weights("embeddings.LayerNorm.bias", lambda t: t.long(), "embeddings.LayerNorm.bias"),
        "weights: an F32 tensor relabelled I32": relabelled_i32,
        "weights: duplicate keys in the safetensors header": duplicate_keys,
        "model folder that is empty": lambda a, tmp: predict(tmp, "config.json"),
        "model folder without weights": lambda a, tmp: predict(Path(shutil.copy(a.full / "config.json", tmp / "config.json")).parent, "model.safetensors"),
        "run folder: model.safetensors damaged": damaged_file("full", "model.safetensors"),
        "adapter over another base of the same shape": other_base,
        "adapter: adapter.safetensors damaged": damaged_file("adapter", "adapter.safetensors"),
        "adapter.json: an unknown option": edit_json("adapter", "adapter.json", lambda c: c.update(method="lora", options={"bogus": 1})),
        "adapter.json: no base_model": edit_json("adapter", "adapter.json", lambda c: c.pop("base_model")),
        "adapter.json: labels a number": edit_json("adapter", "adapter.json", lambda c: c.update(labels=3)),
        "quantized: data bytes flipped": damaged_file("quantized", "quantized.safetensors"),
        "quantized: quantization.json without modules": edit_json("quantized", "quantization.json", lambda q: q.pop("modules")),
        "quantized: a layout without its shape": edit_json("quantized", "quantization.json", lambda q: next(iter(q["modules"].values()))["layout"].clear()),
        "quantized: a layer the model lacks": edit_json("quantized", "quantization.json", lambda q: q["modules"].update(
            {"encoder.layers.5.ffn.up": next(iter(q["modules"].values()))})),
        "quantized: a layout of [1e6, 1e6]": edit_json("quantized", "quantization.json", lambda q: [e["layout"].update(shape=[10**6, 10**6]) for e in q["modules"].values()]),
    }


# ---- datasets ---------------------------------------------------------------------------------------------------------
def data_cases() -> dict:
    def with_data(make, expect):
        return lambda a, tmp: Case([*train_args(a, tmp / "out"), "--data", str(make(tmp))], expect)

    def imdb(empty: str):
        def make(tmp):
            for split in ("train", "test"):
                for name in ("pos", "neg"):
                    folder = tmp / "aclImdb" / split / name
                    folder.mkdir(parents=True)
                    if f"{split}/{name}" != empty:
                        for i in range(12):
                            (folder / f"{i}_7.txt").write_text(f"a {'good' if name == 'pos' else 'bad'} film {i}")
            return tmp / "aclImdb"

        return make

    return {
        "data: a label 7 in a 0/1 set": with_data(lambda tmp: csv_file(tmp, [*reviews(40), "good film,7"]), "data.csv"),
        "data: a label 100000": with_data(lambda tmp: csv_file(tmp, [*reviews(40), "good film,100000"]), "data.csv"),
        "data: a label 1e12": with_data(lambda tmp: csv_file(tmp, [*reviews(40), "good film,1000000000000"]), "data.csv"),
        "data: a label -1": with_data(lambda tmp: csv_file(tmp, [*reviews(40), "bad film,-1"]), "data.csv"),
        "data: labels 1 and 2 (class 0 unused)": with_data(lambda tmp: csv_file(tmp, reviews(40, labels=(1, 2))), "data.csv"),
        "data: a label 1.5": with_data(lambda tmp: csv_file(tmp, [*reviews(40), "good film,1.5"]), "data.csv"),
        "data: a duplicate text column": with_data(lambda tmp: csv_file(tmp, [r + ",x" for r in reviews(40)], header="text,label,text"), "text"),
        "data: an empty train/neg in aclImdb": with_data(imdb("train/neg"), "neg"),
        "data: an empty test/pos in aclImdb": with_data(imdb("test/pos"), "pos"),
        "data: a CSV too small for a validation split": with_data(lambda tmp: csv_file(tmp, reviews(4)), "validation"),
        "data: a CSV with only a header": with_data(lambda tmp: csv_file(tmp, []), "data.csv"),
        "data: a CSV field of 200,000 characters (trains)": lambda a, tmp: Case([*train_args(a, tmp / "out"), "--data", str(csv_file(tmp, [*reviews(40), "good " * 40000 + ",1"]))], "", ok=True),
        "data: a file that is not UTF-8": with_data(lambda tmp: (tmp / "data.csv").write_bytes(b"text,label\n\xff\xfe good,1\n") and tmp / "data.csv", "data.csv:2"),
        "search: an empty corpus": lambda a, tmp: Case(["search", "--model", str(a.model), "--device", "cpu", "--corpus", str(csv_file(tmp, [], header="")), "film"], "data.csv"),
    }


def all_cases() -> dict:
    return {**flag_cases(), **out_cases(), **resume_cases(), **folder_cases(), **data_cases()}


def make_artifacts(root: Path, tiny: Path) -> Artifacts:
    """The run folders the cases damage copies of: made once, by the CLI itself."""
    from minitransformers.cli import main

    a = Artifacts(tiny, root / "full", root / "adapter", root / "quantized")
    main(train_args(a, a.full))
    main(train_args(a, a.adapter, "--method", "bitfit"))
    main(["quantize", "--model", str(a.full), "--method", "int8", "--out", str(a.quantized)])
    return a
