"""HF BERT checkpoints: one explicit weight map between our parameter names and `transformers`' names.

A folder as `BertModel.save_pretrained` writes it holds `config.json` and `model.safetensors` (or the older
`pytorch_model.bin`). Its keys carry a `bert.` prefix when they come from a model with a head
(BertForSequenceClassification, BertForMaskedLM) and none when they come from a bare BertModel; both load.
Loading is strict: any missing, unexpected or mis-shaped key fails with the list, never a partial load.

    ours                              transformers
    embeddings.word.weight            embeddings.word_embeddings.weight
    layers.{i}.attention.query.*      encoder.layer.{i}.attention.self.query.*
    layers.{i}.attention.out.*        encoder.layer.{i}.attention.output.dense.*
    layers.{i}.attention_norm.*       encoder.layer.{i}.attention.output.LayerNorm.*
    layers.{i}.ffn.up.* / ffn.down.*  encoder.layer.{i}.intermediate.dense.* / output.dense.*
    layers.{i}.ffn_norm.*             encoder.layer.{i}.output.LayerNorm.*
    pooler.dense.*                    pooler.dense.*

A BertForSequenceClassification folder holds the encoder under `bert.` and the head as `classifier.weight`
and `classifier.bias`; our SequenceClassifier names them `encoder.*` and `classifier.*`.
"""

from __future__ import annotations

import contextlib
import json
import re
import reprlib
from pathlib import Path

import torch

from ..errors import InputError
from . import manifest
from .safetensors import load_file, save_file, unique_keys

# Buffers that older checkpoints saved alongside the weights; they hold no learned values.
IGNORED_KEYS = {"embeddings.position_ids"}

_EMBEDDINGS = {"word": "word_embeddings", "position": "position_embeddings", "token_type": "token_type_embeddings", "norm": "LayerNorm"}
_LAYER = {
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def weight_map(num_layers: int, pooler: bool) -> dict[str, str]:
    """Our parameter name -> the HF BertModel parameter name (no `bert.` prefix)."""
    modules = {f"embeddings.{ours}": f"embeddings.{theirs}" for ours, theirs in _EMBEDDINGS.items()}
    for i in range(num_layers):
        modules.update({f"layers.{i}.{ours}": f"encoder.layer.{i}.{theirs}" for ours, theirs in _LAYER.items()})
    if pooler:
        modules["pooler.dense"] = "pooler.dense"
    tables = {f"embeddings.{ours}" for ours in ("word", "position", "token_type")}  # no bias
    return {
        f"{ours}.{p}": f"{theirs}.{p}"
        for ours, theirs in modules.items()
        for p in (("weight",) if ours in tables else ("weight", "bias"))
    }


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an HF folder: model.safetensors, else pytorch_model.bin (tensors only)."""
    path = Path(path)
    manifest.verify(path, "model.safetensors", "pytorch_model.bin")
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        # weights_only=True: unpickling only tensors and plain containers, never arbitrary code.
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such folder"
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin (found: {found}); is this an HF model folder?")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "bert.") -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def has_pooler(hf_state: dict[str, torch.Tensor]) -> bool:
    return "pooler.dense.weight" in strip_prefix(hf_state)


def layer_widths(hf_state: dict[str, torch.Tensor], num_layers: int) -> list[tuple[int | None, int | None]]:
    """(attention width = heads × head size, FFN width) of each layer as the checkpoint stores them: rows of
    query and of the intermediate dense. A structurally pruned model (quant/prune.py) has fewer than
    config.json says. None where a key is missing (the strict load names it)."""
    state = strip_prefix(hf_state)
    rows = lambda key: state[key].shape[0] if key in state else None  # noqa: E731
    return [(rows(f"encoder.layer.{i}.attention.self.query.weight"), rows(f"encoder.layer.{i}.intermediate.dense.weight")) for i in range(num_layers)]


def check_keys(found: dict, expected: dict, path, what: str, hint: str) -> None:
    """Fail, listing them, on missing, unexpected or mis-shaped keys of `found` against `expected`."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: checkpoint does not match {what}; missing keys {missing}, unexpected keys {unexpected}; {hint}")
    wrong = [f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)}" for k, v in expected.items() if found[k].shape != v.shape]
    if wrong:
        raise InputError(f"{path}: mis-shaped keys {wrong}; does config.json match the weights?")
    check_values(path, {k: found[k] for k in expected if isinstance(found[k], torch.Tensor)})  # a GGUF's entries are headers only


def check_values(path, tensors: dict[str, torch.Tensor]) -> None:
    """Weights are floating point and finite: an integer tensor (an I64 one, or F32 bytes relabelled I32) would
    load as nonsense, and one NaN or inf makes every output NaN."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise InputError(f"{path}: tensor {name!r} is {t.dtype}, but a weight must be floating point; is the file damaged or foreign?")
        bad = t.numel() - int(torch.isfinite(t).sum())
        if bad:
            raise InputError(f"{path}: tensor {name!r} holds {bad} NaN or inf value(s) of {t.numel()}; the weights are damaged or the training diverged")


def check_layer_count(hf_state: dict, num_layers: int, path, prefix: str = "encoder.layer.", count: str | None = None, fewer_ok: bool = False) -> None:
    """A layer count against the layers the weights hold (names `prefix`{i}.…), before a model of that size, or its
    map of names, is built: config.json's num_hidden_layers in the folder `path`, or the `count` of the file `path`
    (a GGUF file's metadata llama.block_count). With `fewer_ok` only a count above the layers held fails (a strict
    key check then names the surplus tensors)."""
    found = {int(m.group(1)) for k in strip_prefix(hf_state) if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    exact = len(found) == num_layers and (not found or max(found) == num_layers - 1)  # distinct ints ≥ 0: so exactly 0 … n−1
    if not (exact or fewer_ok and num_layers < len(found)):
        held = f"{len(found)} layers" + (f" numbered {min(found)} … {max(found)}" if found else "")
        where, hint = (f"{path}: {count}", "is the file damaged?") if count else (f"{Path(path) / 'config.json'}: num_hidden_layers", "does config.json belong to these weights?")
        raise InputError(f"{where} is {num_layers}, but the weights hold {held}; {hint}")


INIT_FUNCTIONS = ("normal_", "uniform_", "zeros_", "ones_", "constant_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_")


@contextlib.contextmanager
def shapes_only():
    """Build modules with shapes only, for a checkpoint to fill: on the meta device, which allocates nothing (so
    the checkpoint is checked against the shapes before anything is), with torch.nn.init's random initialisation
    skipped meanwhile. The weights would lose it at once, and on the meta device its first call in a process
    costs more than a second of one-time imports (torch._refs)."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """A model built on the meta device (shapes only, to check a checkpoint against before allocating) given real,
    uninitialised CPU storage for load_state_dict to fill; its tied weights (`tied_weights`) tied again."""
    model = model.to_empty(device="cpu")
    for alias, owner in getattr(model, "tied_weights", {}).items():
        module, _, name = alias.rpartition(".")
        setattr(model.get_submodule(module), name, model.get_parameter(owner))
    return model


def to_ours(hf_state: dict, num_layers: int, expected: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """Rename an HF state dict to ours, checking it against `expected` (our model's state dict)."""
    hf_state = {k: v for k, v in strip_prefix(hf_state).items() if k not in IGNORED_KEYS}
    names = weight_map(num_layers, pooler="pooler.dense" in {k.rsplit(".", 1)[0] for k in expected})
    what = f"a {num_layers}-layer BERT encoder"
    check_keys(hf_state, {t: expected[o] for o, t in names.items()}, path, what, "is this a BERT checkpoint with this config.json?")
    return {o: hf_state[t] for o, t in names.items()}


def to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename our state dict to HF BertModel names."""
    names = weight_map(num_layers, pooler="pooler.dense.weight" in state)
    return {names[k]: v for k, v in state.items()}


def split_classifier(hf_state: dict, path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A BertForSequenceClassification state dict -> (its encoder part, its `classifier.*` part)."""
    head = {k: v for k, v in hf_state.items() if k.startswith("classifier.")}
    if not head:
        raise InputError(
            f"{path}: no classifier.* keys, only an encoder's; to put a new head on this encoder use "
            "SequenceClassifier.from_encoder(path, num_labels)"
        )
    return {k: v for k, v in hf_state.items() if k not in head}, head


def classifier_to_ours(encoder_state: dict, head: dict, num_layers: int, expected: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """Rename the two parts to our SequenceClassifier's names (`encoder.*`, `classifier.*`), strictly."""
    expected_head = {k: v for k, v in expected.items() if k.startswith("classifier.")}
    what = f"a {len(expected_head['classifier.bias'])}-label classifier head"
    check_keys(head, expected_head, path, what, "does config.json's id2label list one name per row of classifier.weight?")
    expected_encoder = {k.removeprefix("encoder."): v for k, v in expected.items() if k.startswith("encoder.")}
    encoder = to_ours(encoder_state, num_layers, expected_encoder, path)
    return {**{f"encoder.{k}": v for k, v in encoder.items()}, **head}


def classifier_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Our SequenceClassifier's state dict -> BertForSequenceClassification names (`bert.*`, `classifier.*`)."""
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    head = {k: v for k, v in state.items() if k.startswith("classifier.")}
    return {**{f"bert.{k}": v for k, v in to_hf(encoder, num_layers).items()}, **head}


# A config.json holds hundreds of values, an id2label of 100,000 classes 200,000. Python's json takes 30 to 60 bytes a
# value from as little as 3 bytes of text ("[],"), so a large file of tiny values would take gigabytes: it is refused
# from a count made before parsing, of the commas and colons that precede every value but a container's first.
MAX_JSON_VALUES = 1_000_000


def read_json(path: Path, what: str):
    """A small JSON file that a loader reads (config.json, adapter.json, quantization.json), each object's keys distinct;
    an InputError naming the file and `what` it should be if it cannot be read, is too large or is not JSON."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None
    if (values := raw.count(b",") + raw.count(b":")) > MAX_JSON_VALUES:
        raise InputError(f"{path}: holds about {values:,} JSON values, more than the {MAX_JSON_VALUES:,} of {what}; is it the right file?")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors, as is a repeated key
        raise InputError(f"{path}: cannot read {what} ({type(err).__name__}: {err})") from None


def read_config(path: str | Path) -> dict:
    """The config.json of an HF folder, as a dict."""
    manifest.verify(path, "config.json")
    path = Path(path) / "config.json"
    config = read_json(path, "an HF config.json")
    if not isinstance(config, dict):
        raise InputError(f"{path}: is a JSON {type(config).__name__}, expected an object of hyperparameters")
    return config


def labels_of(config: dict, path, rows: int) -> list[str]:
    """A classifier's label names, id order, from config.json's id2label ({"0": name, ...}; LABEL_i by num_labels
    without it: at most the `rows` of the saved head, checked before that many names are made, so that a num_labels of
    10⁸ costs nothing; the strict key check names a head of other rows). Refuses keys that are not the ids 0 … K−1
    and names that are not strings."""
    where = Path(path) / "config.json"
    id2label = config.get("id2label")
    if not id2label:
        count = config.get("num_labels", 2)
        if type(count) is not int or not 0 < count <= rows:
            raise InputError(f"{where}: num_labels is {reprlib.repr(count)}, but the saved head has {rows} rows; give id2label or a num_labels of {rows}")
        id2label = {str(i): f"LABEL_{i}" for i in range(count)}
    if not isinstance(id2label, dict) or sorted(id2label) != sorted(str(i) for i in range(len(id2label))):
        raise InputError(f"{where}: id2label {str(id2label)[:100]} should map the ids \"0\" … \"K−1\" to names (num_labels a positive int)")
    if not all(isinstance(name, str) for name in id2label.values()):
        raise InputError(f"{where}: id2label's names must be strings, found {list(id2label.values())[:5]}")
    return [id2label[str(i)] for i in range(len(id2label))]


def save(path: str | Path, config: dict, hf_state: dict[str, torch.Tensor]) -> None:
    """Write an HF model folder: config.json and model.safetensors."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in hf_state.items()}, path / "model.safetensors", metadata={"format": "pt"})


# Our MaskedLM's head -> BertForMaskedLM's `cls.predictions`; the tied decoder weight is handled apart.
MLM_HEAD = {
    "head.transform.weight": "cls.predictions.transform.dense.weight",
    "head.transform.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.bias": "cls.predictions.bias",
}


def mlm_to_ours(hf_state: dict, num_layers: int, expected: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """A BertForMaskedLM state dict -> our MaskedLM's names, strictly.

        ours                 transformers
        encoder.*            bert.*, as `to_ours` maps them (with or without the pooler)
        head.*               cls.predictions.*, as MLM_HEAD maps them
        head.decoder.weight  cls.predictions.decoder.weight: tied to the word embeddings, so usually not
                             saved; where saved, it must equal them
        (none)               cls.predictions.decoder.bias: in some checkpoints, a copy of cls.predictions.bias
    """
    head = {k: v for k, v in hf_state.items() if k.startswith("cls.")}
    decoder = head.pop("cls.predictions.decoder.weight", None)
    head.pop("cls.predictions.decoder.bias", None)
    hint = "is this a BertForMaskedLM folder? To put a new head on an encoder use MaskedLM.from_encoder(path)"
    check_keys(head, {t: expected[o] for o, t in MLM_HEAD.items()}, path, "BERT's masked-LM head", hint)
    expected_encoder = {k.removeprefix("encoder."): v for k, v in expected.items() if k.startswith("encoder.")}
    encoder = to_ours({k: v for k, v in hf_state.items() if not k.startswith("cls.")}, num_layers, expected_encoder, path)
    word = encoder["embeddings.word.weight"]
    if decoder is not None and not torch.equal(decoder, word):
        raise InputError(
            f"{path}: cls.predictions.decoder.weight differs from the word embeddings; MaskedLM ties them "
            "(one Parameter) and cannot hold an untied decoder"
        )
    return {**{f"encoder.{k}": v for k, v in encoder.items()}, **{o: head[t] for o, t in MLM_HEAD.items()}, "head.decoder.weight": word}


def mlm_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Our MaskedLM's state dict -> BertForMaskedLM names, without the tied decoder weight, as `transformers` saves it."""
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return {**{f"bert.{k}": v for k, v in to_hf(encoder, num_layers).items()}, **{t: state[o] for o, t in MLM_HEAD.items()}}
