"""Shared fixtures and helpers: the real data folders (fetched by `make test`), seeded RNG, tiny random configs,
the tiny fine-tuning setup (a WordPiece vocabulary, a 2-layer BERT and synthetic reviews), and a small classifier
for the quantization tests. Test modules import helpers from here, never from each other."""

import csv
import importlib.abc
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import SequenceClassifier
from minitransformers.text.tokenizer import Tokenizer, train_wordpiece
from minitransformers.train import checkpoint

class _Hidden(importlib.abc.MetaPathFinder):
    """`MINITRANSFORMERS_HIDE=transformers,peft` makes those packages unimportable, as on a machine without the
    test extra: `make test-without-extras` runs the suite so, to show that only the parity tests skip."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by MINITRANSFORMERS_HIDE)", name=fullname)
        return None


if hidden := {name for name in os.environ.get("MINITRANSFORMERS_HIDE", "").split(",") if name}:
    sys.meta_path.insert(0, _Hidden(hidden))

DATA = Path(__file__).resolve().parent.parent / "data"
POSITIVE, NEGATIVE = ["good", "great", "love", "fine"], ["bad", "awful", "hate", "poor"]
FILLER = ["the", "movie", "was", "plot", "actor", "film", "and", "a", "story", "really"]


def fetched(name: str) -> Path:
    """The folder of a fetched source, or skip the test saying how to fetch it."""
    path = DATA / name
    if not (path / ".fetched").is_file():
        pytest.skip(f"data/{name} is not fetched; run `python -m minitransformers fetch {name}` (make test does)")
    return path


@pytest.fixture
def minilm_dir() -> Path:
    return fetched("minilm")


@pytest.fixture
def transformers():
    """The `transformers` module, for the parity tests alone: they skip without it, the invariants never do."""
    return pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")


@pytest.fixture
def peft():
    """The `peft` module, for the parity tests alone."""
    return pytest.importorskip("peft", reason="peft is not installed; pip install the test extra")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- tiny random encoders -------------------------------------------------------------------------------------------

TINY_CONFIGS = [
    EncoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=24, hidden_act="gelu"),
    EncoderConfig(vocab_size=61, hidden_size=48, num_layers=3, num_heads=6, intermediate_size=64, max_position_embeddings=16, type_vocab_size=3, hidden_act="gelu_new", layer_norm_eps=1e-5),
    EncoderConfig(vocab_size=50, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_position_embeddings=32, hidden_act="gelu_pytorch_tanh", pad_token_id=3),
]


def hf_bert(config: EncoderConfig):
    """A random `transformers.BertModel` of `config` (the test skips without transformers)."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(**config.to_hf(), attn_implementation="eager")
    model = transformers.BertModel(hf_config).eval()
    with torch.no_grad():  # HF inits LayerNorm at identity and biases at zero; randomise them so they are tested
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(mean=1.0 if name.endswith("LayerNorm.weight") else 0.0, std=0.1)
    return model


def random_batch(config: EncoderConfig, B=4, T=11):
    """Random ids, token types, and padding of different lengths per row (one row fully unpadded)."""
    input_ids = torch.randint(0, config.vocab_size, (B, T))
    token_type_ids = torch.randint(0, config.type_vocab_size, (B, T))
    lengths = torch.tensor([T] + torch.randint(1, T, (B - 1,)).tolist())
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    return input_ids, attention_mask, token_type_ids


def save_edited(model, tmp_path, edit):
    """Save `model`, then change its weights file on disk with `edit(state)`."""
    from minitransformers.io.safetensors import load_file, save_file

    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors")


# --- the tiny fine-tuning setup ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer, 32-wide BERT (dropout 0, so processes agree) with a WordPiece vocabulary, and a CSV of
    250 synthetic reviews whose label is the sentiment word they contain (`make_tiny`)."""
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def make_tiny(root: Path) -> Path:
    """The `tiny` fixture's files in ROOT: model/ (config, weights, tokenizer), reviews.csv and corpus.txt."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for _ in range(250):
        label = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 14))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"text": " ".join(words), "label": int(label)})
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "corpus.txt").write_text("\n".join(r["text"] for r in rows))
    tok = train_wordpiece([root / "corpus.txt"], vocab_size=100, min_frequency=1)
    config = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    Encoder(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def finetune_argv(tiny, out, *extra) -> list[str]:
    """`finetune` on the tiny model and reviews, into `out`, with `extra` flags (later ones win); --max-length is its 32 positions."""
    return ["finetune", "--model", str(tiny / "model"), "--data", str(tiny / "reviews.csv"), "--out", str(out), "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--max-length", "32", *extra]


def final_weights(out) -> dict:
    """Every tensor of the model at the end of the run in `out`, from its checkpoint."""
    return checkpoint.load(Path(out) / "checkpoint.pt")["model"]


def review_batch(tiny) -> dict:
    """Three reviews of different lengths, so that one is padded."""
    return Tokenizer.from_pretrained(tiny / "model")(["the film was great", "awful plot and a really poor story", "love it"])


# --- a small classifier for the quantization tests ---------------------------------------------------------------

SMALL_CONFIG = EncoderConfig(vocab_size=97, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512, max_position_embeddings=24)
LINEARS = 2 * 6 + 1  # query, key, value, out, up, down per layer, and the pooler; the classifier is skipped
CSR_WARNING = "ignore:Sparse CSR tensor support is in beta"


def small_classifier() -> SequenceClassifier:
    """A random classifier (BERT's N(0, 0.02) weights) with nonzero biases, so a dropped bias shows."""
    model = SequenceClassifier(Encoder(SMALL_CONFIG), 3).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return model


def ragged_batch(B=8, T=16):
    ids = torch.randint(0, SMALL_CONFIG.vocab_size, (B, T))
    mask = (torch.arange(T)[None] < torch.randint(4, T + 1, (B, 1))).long()  # (B, T), ragged
    return ids, mask


def finetune_config(tiny, out, **fields):
    """`finetune_argv`'s run as a recipe config: the tiny model and reviews, into `out`, with `fields` set."""
    from minitransformers.recipes.finetune import FinetuneConfig

    return FinetuneConfig(model=str(tiny / "model"), data=str(tiny / "reviews.csv"), out=str(out), **{"batch_size": 8, "lr": 1e-3, "device": "cpu", "max_length": 32, **fields})


# --- GGUF files written from scratch (tests/test_gguf.py, tests/test_llama_weights.py) -----------------------------

GGUF_TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "BF16": 30}  # ggml.h's ggml_type
_GGUF_PACK = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_value(vtype: int, value) -> bytes:
    """One GGUF value of type `vtype` (docs/gguf.md); an array's `value` is (element type, [values])."""
    import struct

    if vtype == 8:
        data = value.encode("utf-8")
        return struct.pack("<Q", len(data)) + data
    if vtype == 9:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, v) for v in items)
    return struct.pack("<" + _GGUF_PACK[vtype], value)


def gguf_bytes(metadata: dict, tensors: dict, *, version=3, counts=None, offsets=None) -> bytes:
    """A GGUF file. `metadata` maps each key to (value type, value), or to bytes written after the key as they are
    (the value type and value of a malformed entry); `tensors` maps each name to (ggml type name or id, ne, data
    bytes), laid out in order at general.alignment (32 unless set). Either may be a list of (name, entry) pairs,
    to repeat a name. `counts` = (tensor_count, kv_count) and `offsets` (one per tensor) replace the true ones."""
    import struct

    metadata, tensors = [list(d.items()) if isinstance(d, dict) else d for d in (metadata, tensors)]
    string = lambda s: gguf_value(8, s)  # noqa: E731
    alignment = dict(metadata).get("general.alignment", (4, 32))[1]
    alignment = alignment if type(alignment) is int else 32  # a malformed one is written, but laid out at 32
    tensor_count, kv_count = counts or (len(tensors), len(metadata))
    out = b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count)
    for key, value in metadata:
        out += string(key) + (value if isinstance(value, bytes) else struct.pack("<I", value[0]) + gguf_value(*value))
    data, starts = b"", []
    for _, (type_name, ne, raw) in tensors:
        data += b"\0" * (-len(data) % alignment)
        starts.append(len(data))
        data += raw
    for (name, (type_name, ne, raw)), offset in zip(tensors, offsets or starts):
        out += string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, GGUF_TYPE_IDS.get(type_name, type_name), offset)
    return out + b"\0" * (-len(out) % alignment) + data


def write_gguf(path: Path, metadata: dict, tensors: dict, **changes) -> Path:
    path.write_bytes(gguf_bytes(metadata, tensors, **changes))
    return path


def random_blocks(type_name: str, n: int, generator: torch.Generator) -> bytes:
    """The bytes of `n` weights of a ggml type: random codes, and random finite float16 scales (never zero)."""
    if type_name in ("F32", "F16", "BF16"):
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[type_name]
        return torch.randn(n, generator=generator).to(dtype).view(torch.uint8).numpy().tobytes()
    nbytes, halves = {"Q8_0": (34, 1), "Q4_0": (18, 1), "Q4_1": (20, 2)}[type_name]
    blocks = torch.randint(0, 256, (n // 32, nbytes), dtype=torch.uint8, generator=generator)
    scales = (torch.rand(n // 32, halves, generator=generator) + 0.5) * torch.randn(n // 32, halves, generator=generator).sign()
    blocks[:, : 2 * halves] = (scales * 0.01).half().view(torch.uint8)  # d (and m): finite, nonzero, either sign
    return blocks.numpy().tobytes()


# --- SmolLM2's tokenizer and chat template (tests/test_bpe.py, tests/test_chat.py) ---------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_metadata() -> dict:
    """The metadata of the fetched SmolLM2 GGUF, read by io/gguf.py."""
    from minitransformers.io.gguf import read_gguf

    return read_gguf(fetched("smollm2") / SMOLLM2_GGUF).metadata


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_metadata):
    from minitransformers.text.bpe import BPETokenizer

    return BPETokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer():
    """transformers' tokenizer built from the same GGUF (`gguf_file=`), for the parity tests alone."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed; pip install the test extra")
    return transformers.AutoTokenizer.from_pretrained(fetched("smollm2"), gguf_file=SMOLLM2_GGUF)


# --- a tiny random causal LM and its transformers twin (tests/test_peft_decoder.py) --------------------------------


def random_causal_lm(config):
    """A random CausalLM of a DecoderConfig, weights N(0, 0.1) (wider than Llama's 0.02, so that a change shows in
    the logits) and RMSNorm gains N(1, 0.1), so that every parameter matters."""
    from minitransformers.model.causal_lm import CausalLM

    model = CausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(mean=1.0 if "norm" in name else 0.0, std=0.1)
    return model


def left_padded_batch(config, B=3, T=7):
    """Random ids left-padded to different lengths (row 0 unpadded), as generate.py takes them: ids, mask (B, T)."""
    ids = torch.randint(0, config.vocab_size, (B, T))
    lengths = torch.tensor([T] + torch.randint(2, T, (B - 1,)).tolist())
    return ids, (torch.arange(T)[None, :] >= T - lengths[:, None]).long()


def hf_llama_of(model, transformers):
    """`transformers.LlamaForCausalLM` holding the weights of our CausalLM `model` (io/llama.py's names), eager attention."""
    from minitransformers.io.llama import to_hf

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf(), attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict(to_hf(model.state_dict(), model.config), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # a tied lm_head is the embedding, loaded with it
    return hf


# --- GGUF blocks kept quantized (tests/test_quant_ggml.py, tests/test_quant_format.py) -----------------------------


def random_ggml(type_name: str, shape, generator: torch.Generator | None = None):
    """A GGMLQuantized weight (out, in) of random `type_name` blocks (`random_blocks`: finite nonzero half scales);
    without a generator, one seeded from the test's RNG."""
    from minitransformers.quant.ggml import GGMLQuantized

    generator = generator or torch.Generator().manual_seed(int(torch.randint(2**31, ())))
    rows, cols = shape
    raw = random_blocks(type_name, rows * cols, generator)
    return GGMLQuantized(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(rows, -1), type_name)


def llama_gguf(path: Path, c: dict, type_of, seed: int = 0) -> Path:
    """A llama GGUF file of hyperparameters `c` (DecoderConfig's field names) with random tensors: the norms F32,
    every other weight in the ggml type `type_of(gguf name)` gives (random_blocks' codes and scales)."""
    import math

    from minitransformers.io.llama import shapes, weight_map

    u32, f32 = 4, 6
    metadata = {
        "general.architecture": (8, "llama"), "llama.vocab_size": (u32, c["vocab_size"]), "llama.block_count": (u32, c["num_layers"]),
        "llama.context_length": (u32, c["max_position_embeddings"]), "llama.embedding_length": (u32, c["hidden_size"]),
        "llama.feed_forward_length": (u32, c["intermediate_size"]), "llama.attention.head_count": (u32, c["num_heads"]),
        "llama.attention.head_count_kv": (u32, c["num_kv_heads"]), "llama.rope.freq_base": (f32, c["rope_theta"]),
        "llama.attention.layer_norm_rms_epsilon": (f32, c["rms_norm_eps"]),
    }  # fmt: skip
    g, tensors = torch.Generator().manual_seed(seed), {}
    for ours, name in weight_map(c["num_layers"], c["tie_word_embeddings"], "gguf").items():
        shape = shapes(c)[ours]
        type_name = "F32" if len(shape) == 1 else type_of(name)
        tensors[name] = (type_name, list(reversed(shape)), random_blocks(type_name, math.prod(shape), g))
    return write_gguf(path, metadata, tensors)


# --- QLoRA's base, built without the method's code (tests/test_peft_lifecycle.py, tests/test_peft_decoder.py) -------


def quantized_base(base):
    """A copy of `base` with every adaptable Linear in NF4 with double quantization: what add_qlora freezes."""
    import copy

    from minitransformers.peft.common import adaptable_linears
    from minitransformers.peft.qlora import NF4Linear

    model = copy.deepcopy(base)
    for name in adaptable_linears(model):
        model.set_submodule(name, NF4Linear.from_linear(model.get_submodule(name), double_quant=True))
    return model


# --- experiment scripts loaded as modules (tests/test_bench_outputs.py, tests/test_decode_bench.py) ------------------

EXPERIMENTS = DATA.parent / "experiments"


def load_experiment(name: str):
    """experiments/NAME.py as a module, with experiments/ on sys.path as when the script runs (it imports `common`)."""
    import importlib.util

    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_prefix_to_peft(prefix, encoder, reparameterize: bool) -> None:
    """Put our prefix (a PrefixMLP, or a PrefixTable (L, 2, n, Hkv)) into peft's PrefixEncoder `encoder`, whose table
    is (n, L·2·Hkv) and whose MLP is transform[0], tanh, transform[2]."""
    with torch.no_grad():
        if reparameterize:
            encoder.embedding.weight.copy_(prefix.embedding)
            encoder.transform[0].load_state_dict(prefix.up.state_dict())
            encoder.transform[2].load_state_dict(prefix.down.state_dict())
        else:
            n = prefix.table.size(2)
            encoder.embedding.weight.copy_(prefix.table.permute(2, 0, 1, 3).reshape(n, -1))  # (L, 2, n, Hkv) -> (n, L·2·Hkv)


# --- the command line's errors ------------------------------------------------------------------------------------


def cli_error(argv: list[str], capsys) -> str:
    """Run `python -m minitransformers ARGV` in this process, expecting the one-line error of a bad input: exit
    status 2, no traceback, and the last line of stderr `error: ...` (after argparse's usage line, for a flag).
    Returns that line."""
    from minitransformers.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, f"exit status {exit_info.value.code!r}, stderr: {err}"
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last, err
    return last
