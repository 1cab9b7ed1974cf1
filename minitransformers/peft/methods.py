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
method, its options, the base model's folder and the head's shape) and `adapter.safetensors` (the trained
tensors, `common.trainable_state_dict`): kilobytes to a few MB instead of the whole model. `load_classifier`
rebuilds the model from the base and those two files, whichever kind of folder it is given. Prefix tuning's
reparameterisation MLP is dropped at save time (Li & Liang section 4.3): the saved prefix is the table P.
QLoRA saves A, B and the head too; loading quantizes the base model to NF4 again, which is deterministic, so
the rebuilt base is the trained one bit for bit.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

from ..io.safetensors import load_file, save_file
from ..model import SequenceClassifier
from ..text.tokenizer import Tokenizer
from .adapters import AdapterConfig, add_adapters
from .bitfit import add_bitfit
from .common import load_trainable_state_dict, mark_only_trainable, trainable_state_dict
from .lora import LoRAConfig, add_lora
from .prompts import PrefixTuningConfig, PromptTuningConfig, add_prefix_tuning, add_prompt_tuning, merge_prefix
from .qlora import QLoRAConfig, add_qlora

# method -> the dataclass of its options (None: it has none)
CONFIG_FILE, WEIGHTS_FILE = "adapter.json", "adapter.safetensors"
METHOD_CONFIGS = {
    "full": None, "head": None, "bitfit": None, "lora": LoRAConfig, "qlora": QLoRAConfig,
    "houlsby": AdapterConfig, "pfeiffer": AdapterConfig, "prompt": PromptTuningConfig, "prefix": PrefixTuningConfig,
}  # fmt: skip
METHODS = tuple(METHOD_CONFIGS)


def method_config(method: str, options=None):
    """The options of `method` as its dataclass: from a dict (adapter.json's) or a dataclass, or its defaults."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    cls = METHOD_CONFIGS[method]
    if cls is None:
        if options:
            raise ValueError(f"method {method!r} takes no options, got {options}")
        return None
    if options is None:
        return cls()
    return options if isinstance(options, cls) else cls(**options)


def apply_method(model: SequenceClassifier, method: str, options=None, tokenizer: Tokenizer | None = None) -> SequenceClassifier:
    """Prepare `model` for `method` in place. `options`: the method's config dataclass (METHOD_CONFIGS), a dict
    of its fields, or None for its defaults; the tokenizer is needed only by prompt tuning's "text"
    initialisation. Returns the model."""
    config = method_config(method, options)
    options = {} if config is None else asdict(config)
    if method == "full":
        return model
    if method == "head":
        return mark_only_trainable(model)
    if method == "bitfit":
        return add_bitfit(model)
    if method == "lora":
        return add_lora(model, **options)
    if method == "qlora":
        return add_qlora(model, **options)
    if method in ("houlsby", "pfeiffer"):
        return add_adapters(model, kind=method, **options)
    if method == "prompt":
        return add_prompt_tuning(model, **options, tokenizer=tokenizer)
    if method == "prefix":
        return add_prefix_tuning(model, **options)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def save_finetuned(model: SequenceClassifier, path: str | Path, method: str, options: dict, base_model: str | Path) -> None:
    """Save what `method` trained into `path`: the whole model for "full"; otherwise `adapter.safetensors`
    and `adapter.json`, which says how to rebuild the model over `base_model`."""
    if method == "full":
        return model.save_pretrained(path)
    if method == "prefix" and options.get("reparameterize", True):
        model, options = merge_prefix(copy.deepcopy(model)), {**options, "reparameterize": False, "projection_dim": None}
    options = {k: v for k, v in options.items() if k != "init_text"}  # the prompt is saved; its init is history
    config = {
        "method": method, "options": options, "base_model": str(Path(base_model).resolve()),
        "labels": model.labels, "pooling": model.pooling, "classifier_dropout": model.dropout.p,
    }  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainable_state_dict(model).items()}, path / WEIGHTS_FILE, metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_classifier(path: str | Path) -> SequenceClassifier:
    """A fine-tuned classifier from its folder: a whole model (`SequenceClassifier.from_pretrained`), or an
    adapter folder, rebuilt as base model + method + the saved trained tensors."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        return SequenceClassifier.from_pretrained(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    base = Path(config["base_model"])
    if not base.is_dir():
        raise FileNotFoundError(f"{path / CONFIG_FILE}: its base model {base} is missing; the adapter needs the model it was trained on")
    model = SequenceClassifier.from_encoder(base, len(config["labels"]), config["pooling"], labels=config["labels"])
    model.dropout.p = config["classifier_dropout"]
    options = config["options"]
    if config["method"] == "prompt":
        options = {**options, "init": "random"}  # any start will do: the saved prompt replaces it
    apply_method(model, config["method"], options)
    return load_trainable_state_dict(model, load_file(path / WEIGHTS_FILE))
