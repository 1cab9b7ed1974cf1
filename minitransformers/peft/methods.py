"""`finetune --method NAME`: every way to fine-tune a classifier, applied, saved and loaded by name.

    full      every weight trains (Devlin et al. 2019)
    head      the task head alone: a linear probe on frozen features
    bitfit    biases and the head (bitfit.py)
    lora      low-rank updates of chosen projections (lora.py)
    qlora     LoRA on every Linear over a frozen NF4 base (qlora.py)
    houlsby   two bottleneck adapters per layer, LayerNorms train (adapters.py)
    pfeiffer  one bottleneck adapter per layer, after the FFN (adapters.py)
    prompt    learned input vectors (prompts.py, prompt tuning)
    prefix    learned key/value prefixes in every layer (prompts.py, prefix tuning)

A full fine-tune saves a whole model. Every other method saves only what it trained: `adapter.json` (the
method, its options, the base model's folder as it was given and the head's labels) and `adapter.safetensors` (the trained
tensors, `common.trainable_state_dict`): kilobytes to a few MB instead of the whole model. `load_classifier`
rebuilds the model from the base and those two files, whichever kind of folder it is given. A relative base
folder stays relative, read from the current directory at load time; `base=` (`--base`) names another, for
a run folder copied elsewhere. Prefix tuning's
reparameterisation MLP is dropped at save time (Li & Liang section 4.3): the saved prefix is the table P.
QLoRA saves A, B and the head too; loading quantizes the base model to NF4 again, which is deterministic, so
the rebuilt base is the trained one bit for bit.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..io import hf, manifest
from ..io.safetensors import load_file, save_file
from ..model import SequenceClassifier
from ..text.tokenizer import Tokenizer
from .adapters import AdapterConfig, add_adapters, remove_adapters
from .bitfit import add_bitfit, remove_bitfit
from .common import attached, load_trainable_state_dict, mark_only_trainable, trainable_state_dict
from .lora import LoRAConfig, add_lora, remove_lora
from .prompts import PrefixTuningConfig, PromptTuningConfig, add_prefix_tuning, add_prompt_tuning, merge_prefix, remove_prefix_tuning, remove_prompt_tuning
from .qlora import QLoRAConfig, add_qlora, remove_qlora

CONFIG_FILE, WEIGHTS_FILE = "adapter.json", "adapter.safetensors"
# method -> (the dataclass of its options or None, how it prepares a model: (model, tokenizer, **options) -> model)
METHOD_TABLE = {
    "full": (None, lambda model, tokenizer: model),
    "head": (None, lambda model, tokenizer: mark_only_trainable(model)),
    "bitfit": (None, lambda model, tokenizer: add_bitfit(model)),
    "lora": (LoRAConfig, lambda model, tokenizer, **o: add_lora(model, **o)),
    "qlora": (QLoRAConfig, lambda model, tokenizer, **o: add_qlora(model, **o)),
    "houlsby": (AdapterConfig, lambda model, tokenizer, **o: add_adapters(model, "houlsby", **o)),
    "pfeiffer": (AdapterConfig, lambda model, tokenizer, **o: add_adapters(model, "pfeiffer", **o)),
    "prompt": (PromptTuningConfig, lambda model, tokenizer, **o: add_prompt_tuning(model, **o, tokenizer=tokenizer)),
    "prefix": (PrefixTuningConfig, lambda model, tokenizer, **o: add_prefix_tuning(model, **o)),
}
METHOD_CONFIGS = {name: config for name, (config, _) in METHOD_TABLE.items()}
METHODS = tuple(METHOD_TABLE)
# what `common.attach` recorded -> the function that gives the base back
REMOVE = {"lora": remove_lora, "qlora": remove_qlora, "adapters": remove_adapters, "bitfit": remove_bitfit,
          "prompt_tuning": remove_prompt_tuning, "prefix_tuning": remove_prefix_tuning}  # fmt: skip


def method_config(method: str, options=None):
    """The options of `method` as its dataclass: from a dict (adapter.json's) or a dataclass, or its defaults."""
    if method not in METHOD_TABLE:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    cls = METHOD_CONFIGS[method]
    if cls is None:
        if options:
            raise InputError(f"method {method!r} takes no options, got {options}")
        return None
    if options is None:
        return cls()
    return options if isinstance(options, cls) else cls(**options)


def apply_method(model: SequenceClassifier, method: str, options=None, tokenizer: Tokenizer | None = None) -> SequenceClassifier:
    """Prepare `model` for `method` in place. `options`: the method's config dataclass (METHOD_CONFIGS), a dict
    of its fields, or None for its defaults; the tokenizer is needed only by prompt tuning's "text"
    initialisation. Returns the model."""
    config = method_config(method, options)
    return METHOD_TABLE[method][1](model, tokenizer, **({} if config is None else asdict(config)))


def remove_method(model: nn.Module) -> nn.Module:
    """Whatever method prepared the model, removed: the base model back (each remove_X says how exactly)."""
    method = attached(model)
    if method not in REMOVE:
        raise InputError(f"{type(model).__name__} carries no removable parameter-efficient method (found {method or 'none'})")
    return REMOVE[method](model)


def save_finetuned(model: SequenceClassifier, path: str | Path, method: str, options: dict, base_model: str | Path) -> None:
    """Save what `method` trained into `path`: the whole model for "full"; otherwise `adapter.safetensors`
    and `adapter.json`, which says how to rebuild the model over `base_model` (kept as given: relative stays
    relative)."""
    if method == "full":
        return model.save_pretrained(path)
    if method == "prefix" and options.get("reparameterize", True):
        model, options = merge_prefix(copy.deepcopy(model)), {**options, "reparameterize": False, "projection_dim": None}
    options = {k: v for k, v in options.items() if k != "init_text"}  # the prompt is saved; its init is history
    config = {
        "method": method, "options": options, "base_model": str(base_model),
        "labels": model.labels, "pooling": model.pooling, "classifier_dropout": model.dropout.p,
    }  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainable_state_dict(model).items()}, path / WEIGHTS_FILE, metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_classifier(path: str | Path, base: str | Path | None = None) -> SequenceClassifier:
    """A fine-tuned classifier from its folder: a whole model (`SequenceClassifier.from_pretrained`), or an
    adapter folder, rebuilt as base model + method + the saved trained tensors. The base is BASE if given,
    else adapter.json's, a relative one read from the current directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        if base is not None:
            raise InputError(f"{path}: holds a whole model, not an adapter ({CONFIG_FILE}); --base applies to adapter folders only")
        return SequenceClassifier.from_pretrained(path)
    trained_over = manifest.verify(path, CONFIG_FILE, WEIGHTS_FILE).get("model_sha256")
    config = read_adapter_config(path / CONFIG_FILE)
    base = Path(config["base_model"] if base is None else base)
    if not base.is_dir():
        raise FileNotFoundError(f"{path / CONFIG_FILE}: its base model {base} is missing (from {Path.cwd()}); the adapter needs the model it was trained on: pass --base FOLDER")
    if trained_over and manifest.fingerprint(base) != trained_over:
        raise InputError(f"{path}: trained over a base whose weights have sha256 {trained_over[:12]}…, but {base} has {manifest.fingerprint(base)[:12]}…; "
                         "an adapter only fits the model it was trained on: pass that one with --base")  # fmt: skip
    model = SequenceClassifier.from_encoder(base, len(config["labels"]), config["pooling"], labels=config["labels"])
    model.dropout.p = config["classifier_dropout"]
    options = config["options"]
    if config["method"] == "prompt":
        options = {**options, "init": "random"}  # any start will do: the saved prompt replaces it
    try:
        expected = trained_shapes(model, config["method"], options)
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # an option of the wrong type or range
        raise InputError(f"{path / CONFIG_FILE}: options {options} do not build {config['method']} ({type(err).__name__}: {err})") from None
    tensors = load_file(path / WEIGHTS_FILE)
    hint = f"was it trained over {base} with the options of {CONFIG_FILE}?"
    hf.check_keys(tensors, expected, path / WEIGHTS_FILE, f"{config['method']} over {base}", hint)  # names, shapes, finite floats
    apply_method(model, config["method"], options)  # the dry run's code, now over real tensors of the sizes just checked
    return load_trainable_state_dict(model, tensors, path / WEIGHTS_FILE)


def trained_shapes(model: SequenceClassifier, method: str, options: dict) -> dict[str, torch.Tensor]:
    """What `method` with `options` trains over `model`: name -> an empty tensor of its shape, from a dry run on a copy
    on the meta device, which allocates nothing, so that a saved adapter is checked against it before a rank of 10⁹
    allocates. QLoRA trains exactly LoRA's A and B with its options (its NF4 base, which the meta device cannot
    compute, is frozen), so its dry run is LoRA's."""
    if method == "qlora":
        method, options = "lora", {k: v for k, v in asdict(method_config("qlora", options)).items() if k != "double_quant"}
    meta = copy.deepcopy(model).to("meta")
    with hf.shapes_only():
        apply_method(meta, method, options)
    return {name: p for name, p in meta.named_parameters() if p.requires_grad}


def read_adapter_config(path: Path) -> dict:
    """adapter.json, checked: a known method other than full, options that are its dataclass's fields, the base
    folder as a string, the labels as a list of names, a known pooling and a dropout in [0, 1)."""
    config = hf.read_json(path, "an adapter folder's adapter.json")
    kinds = {"method": str, "options": dict, "base_model": str, "labels": list, "pooling": str, "classifier_dropout": (int, float)}
    if not isinstance(config, dict) or any(not isinstance(config.get(k), kind) for k, kind in kinds.items()):
        found = {k: type(config.get(k)).__name__ for k in kinds} if isinstance(config, dict) else type(config).__name__
        raise InputError(f"{path}: expected an object with method, options, base_model, labels, pooling and classifier_dropout; found {found}")
    if config["method"] not in METHODS or config["method"] == "full":
        raise InputError(f"{path}: method {config['method']!r} is not an adapter method; one of {', '.join(m for m in METHODS if m != 'full')}")
    if not config["labels"] or not all(isinstance(name, str) for name in config["labels"]):
        raise InputError(f"{path}: labels {config['labels']!r} should be a non-empty list of names")
    if config["pooling"] not in ("pooler", "cls", "mean") or not 0 <= config["classifier_dropout"] < 1:
        raise InputError(f"{path}: pooling {config['pooling']!r} / classifier_dropout {config['classifier_dropout']!r}: expected pooler, cls or mean and a dropout in [0, 1)")
    cls = METHOD_CONFIGS[config["method"]]
    allowed = {f.name for f in fields(cls)} if cls else set()
    if set(config["options"]) - allowed:
        raise InputError(f"{path}: options {sorted(set(config['options']) - allowed)} are not {config['method']}'s; it takes {sorted(allowed)}")
    return config
