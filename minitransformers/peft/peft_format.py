"""The `peft` library's adapter folder, written and read for a LoRA SequenceClassifier (peft 0.21.2's format).

`PeftModel.save_pretrained` writes two files for a LoRA model over `transformers`' BertForSequenceClassification
(task_type "SEQ_CLS"):

    adapter_config.json         LoraConfig's fields: r, lora_alpha, lora_dropout, target_modules, modules_to_save, …
    adapter_model.safetensors   the adapter and the head, named from the root of the peft model:

    ours (lora.py, heads.py)                      peft
    encoder.layers.{i}.attention.query.lora_A     base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_A.weight
    encoder.layers.{i}.attention.query.lora_B     base_model.model.bert.encoder.layer.{i}.attention.self.query.lora_B.weight
    classifier.weight / .bias                     base_model.model.classifier.weight / .bias
    encoder.pooler.dense.weight / .bias           base_model.model.bert.pooler.dense.weight / .bias  (if it trains)

Module names map as io/hf.py's weight map says (`attention.out` -> `attention.output.dense`, …). A (r, in) and
B (out, r) have the same layout in both, so nothing is transposed. peft chooses modules by name: a target
matches a module whose name equals it or ends with "." + it (a string is a regex on the full name). The head
is a "module to save": trained in full and saved whole; for SEQ_CLS peft always adds "classifier" and "score".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import nn

from ..errors import InputError
from ..io import hf
from ..io.safetensors import load_file, save_file
from .common import head_names, in_head, load_trainable_state_dict, mark_only_trainable
from .lora import LoRALinear, add_lora, is_lora, lora_layers, matches

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
SEQ_CLS_HEAD = ["classifier", "score"]  # what peft appends to modules_to_save for task_type SEQ_CLS

# adapter_config.json as peft 0.21.2 writes it for `LoraConfig(task_type="SEQ_CLS", ...)`, every field at its
# default; `save_peft` fills in the rank, alpha, dropout, targets, head and base model.
PEFT_CONFIG = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": SEQ_CLS_HEAD,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": None, "target_parameters": None, "task_type": "SEQ_CLS",
    "trainable_token_indices": None, "use_bdlora": None, "use_dora": False, "use_qalora": False, "use_rslora": False,
    "velora_config": None,
}  # fmt: skip
# Options that change which layers adapt or what they compute, and that lora.py does not implement.
UNSUPPORTED = (
    "alpha_pattern", "bias", "exclude_modules", "fan_in_fan_out", "layer_replication", "layers_to_transform", "lora_bias",
    "rank_pattern", "target_parameters", "trainable_token_indices", "use_dora", "use_qalora", "use_rslora",
)  # fmt: skip


def hf_module_names(model: nn.Module) -> dict[str, str]:
    """Our SequenceClassifier's module names -> BertForSequenceClassification's, from io/hf.py's weight map:
    `encoder.layers.0.attention.query` -> `bert.encoder.layer.0.attention.self.query`."""
    encoder = model.encoder
    weights = hf.weight_map(encoder.config.num_layers, pooler=encoder.pooler is not None)
    modules = {o.removesuffix(".weight"): t.removesuffix(".weight") for o, t in weights.items() if o.endswith(".weight")}
    names = {f"encoder.{o}": f"bert.{t}" for o, t in modules.items()}
    names["classifier"] = "classifier"
    if encoder.pooler is not None:
        names["encoder.pooler"] = "bert.pooler"
    return names


def shortest_targets(adapted: set[str], linear: list[str]) -> list[str]:
    """For each adapted module, the shortest name suffix that, by peft's rule, selects adapted modules only.
    Query and value in every layer give ["query", "value"], as peft writes for `target_modules=["query", "value"]`."""
    targets = set()
    for name in adapted:
        parts = name.split(".")
        suffixes = (".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1))  # "query", "self.query", …
        targets.add(next(s for s in suffixes if all(n in adapted for n in linear if matches(n, [s]))))
    return sorted(targets)


def peft_keys(model: nn.Module, head: tuple[str, ...]) -> dict[str, str]:
    """peft's tensor name -> our parameter name, for every LoRA matrix and the parameters of the `head` modules."""
    names = hf_module_names(model)
    keys = {f"{PREFIX}{names[layer]}.{m}.weight": f"{layer}.{m}" for layer in lora_layers(model) for m in ("lora_A", "lora_B")}
    for name, _ in model.named_parameters():
        if name.startswith(head):
            module, param = name.rsplit(".", 1)
            keys[f"{PREFIX}{names[module]}.{param}"] = name
    return keys


def save_peft(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` as peft 0.21.2 writes them, so that
    `PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base), path)` loads the adapter."""
    layers = lora_layers(model)
    if not layers:
        raise InputError("the model has no LoRA layers to save; call add_lora(model) first")
    (r, alpha, dropout), *rest = {(m.r, m.alpha, m.dropout.p) for m in layers.values()}
    if rest:
        raise InputError(f"peft's format holds one r, alpha and dropout for all layers, found {sorted([(r, alpha, dropout), *rest])}")
    names = hf_module_names(model)
    linear = [names[n] for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and n in names]
    pooler_trains = "encoder.pooler" in head_names(model) and any(p.requires_grad for p in model.encoder.pooler.parameters())
    head = ("classifier", "encoder.pooler") if pooler_trains else ("classifier",)
    config = {
        **PEFT_CONFIG,
        "base_model_name_or_path": None if base_model_name_or_path is None else str(base_model_name_or_path),
        "r": r, "lora_alpha": alpha, "lora_dropout": dropout,
        "target_modules": shortest_targets({names[n] for n in layers}, linear),
        "modules_to_save": ["pooler"] * pooler_trains + SEQ_CLS_HEAD,  # peft's order: the user's, then SEQ_CLS's
    }  # fmt: skip
    params = dict(model.named_parameters())
    tensors = {key: params[ours] for key, ours in peft_keys(model, head).items()}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path / WEIGHTS_FILE, metadata={"format": "pt"})


def read_config(path: Path) -> dict:
    """adapter_config.json, checked for what lora.py can compute (and that the weights file is there too)."""
    for file in (path / CONFIG_FILE, path / WEIGHTS_FILE):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; a peft adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    file = path / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{file}: cannot read it as JSON ({err})") from err
    if config.get("peft_type") != "LORA":
        raise InputError(f"{file}: peft_type {config.get('peft_type')!r} is not supported; load_peft reads LoRA adapters ('LORA')")
    if config.get("task_type") != "SEQ_CLS":
        raise InputError(f"{file}: task_type {config.get('task_type')!r}; load_peft reads adapters of sequence classifiers, 'SEQ_CLS'")
    if changed := {k: config[k] for k in UNSUPPORTED if k in config and config[k] != PEFT_CONFIG[k]}:
        defaults = {k: PEFT_CONFIG[k] for k in changed}
        raise InputError(f"{file}: options {changed} are not supported; lora.py implements plain LoRA, with {defaults}")
    if not isinstance(config.get("target_modules"), (str, list)):
        raise InputError(f"{file}: target_modules {config.get('target_modules')!r}, expected a list of names or a regex string")
    return config


def load_peft(model: nn.Module, path: str | Path) -> nn.Module:
    """Put the LoRA adapter and head of a peft folder onto our SequenceClassifier (a fresh base, as
    `BertForSequenceClassification` was for peft): add LoRA with the folder's r, alpha, dropout and targets,
    train what peft trains, then load the tensors strictly. Returns the model. The folder is checked before the
    model changes, its tensor names and shapes only after LoRA is added: on that error, start from a fresh base."""
    path = Path(path)
    config = read_config(path)
    targets, names = config["target_modules"], hf_module_names(model)
    pick = (lambda n: re.fullmatch(targets, n) is not None) if isinstance(targets, str) else (lambda n: matches(n, targets))
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in names]
    chosen = [n for n in linear if pick(names[n]) and not in_head(n, head_names(model))]
    if not chosen:
        raise InputError(f"{path / CONFIG_FILE}: target_modules {targets!r} match no Linear module of this model; its names "
                         f"as peft sees them: {[names[n] for n in linear][:6]}…")  # fmt: skip
    add_lora(model, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0), targets=chosen)
    head = tuple(n for n in head_names(model) if matches(names[n], config.get("modules_to_save") or []))
    mark_only_trainable(model, lambda n: is_lora(n) or in_head(n, head), train_head=False)

    weights = path / WEIGHTS_FILE
    found, keys, params = load_file(weights), peft_keys(model, head), dict(model.named_parameters())
    hint = f"was it saved by peft for a BertForSequenceClassification of this shape, modules_to_save {config.get('modules_to_save')}?"
    hf.check_keys(found, {k: params[ours] for k, ours in keys.items()}, weights, "this model with LoRA", hint)
    return load_trainable_state_dict(model, {ours: found[k] for k, ours in keys.items()})
