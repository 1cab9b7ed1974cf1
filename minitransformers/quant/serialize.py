"""Saving and loading a quantized SequenceClassifier: one folder, three files.

    config.json              the encoder and head, as SequenceClassifier.save_pretrained writes them (HF's keys)
    quantization.json        {"method": "nf4", "options": {...}, "modules": {name: {"class": ..., "layout": {...}}}}
    quantized.safetensors    the state dict under our names: each quantized layer's packed codes, scales,
                             codebooks and bias, and every other parameter and buffer as it is

The tensors file is not called model.safetensors: it is not an HF checkpoint, and `from_pretrained` on this folder
fails saying so, rather than on a list of unknown keys. Loading does no quantization work: it builds the model
from config.json (randomly initialised, as `from_pretrained` does), rebuilds each quantized layer from its saved
tensors and layout (`cls(layout, tensors)`), then loads the rest strictly. The layers compute from the same
tensors as before saving, so the logits are bit for bit the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..config import EncoderConfig
from ..io import hf
from ..io.safetensors import load_file, save_file
from ..model.encoder import Encoder
from ..model.heads import SequenceClassifier
from .qlinear import QuantizedLinear, SparseLinear, W8A8Linear, WeightOnlyLinear

TENSORS, QUANTIZATION = "quantized.safetensors", "quantization.json"
LAYERS = {cls.__name__: cls for cls in (W8A8Linear, WeightOnlyLinear, SparseLinear)}


def save_quantized(model: SequenceClassifier, path: str | Path, method: str, options: dict | None = None) -> None:
    """Write a quantized classifier (after `quantize_model(model, method, **options)`) to the folder `path`."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not modules:
        raise ValueError("the model has no quantized layers; call quantize_model(model, method) before save_quantized")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    quantization = {
        "method": method,
        "options": options or {},
        "modules": {name: {"class": type(m).__name__, "layout": m.layout} for name, m in modules.items()},
    }
    (path / "config.json").write_text(json.dumps(model.hf_config(), indent=2) + "\n", encoding="utf-8")
    (path / QUANTIZATION).write_text(json.dumps(quantization, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path / TENSORS, metadata={"format": "pt"})


def read_quantization(path: Path) -> dict:
    try:
        return json.loads((path / QUANTIZATION).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / QUANTIZATION}: cannot read it ({err}); is {path} a folder written by save_quantized?") from err


def load_quantized(path: str | Path) -> SequenceClassifier:
    """The SequenceClassifier that `save_quantized` wrote, its quantized layers rebuilt from their saved tensors."""
    path = Path(path)
    quantization = read_quantization(path)
    state = load_file(path / TENSORS)
    hf_config = hf.read_config(path)
    id2label = hf_config["id2label"]
    labels = [id2label[key] for key in sorted(id2label, key=int)]
    config = EncoderConfig.from_hf(hf_config)
    encoder = Encoder(config, add_pooler=any(k.startswith("encoder.pooler.") for k in state))
    encoder.resize_layers([(rows(f"encoder.layers.{i}.attention.query", quantization, state), rows(f"encoder.layers.{i}.ffn.up", quantization, state))
                           for i in range(config.num_layers)])  # fmt: skip  # a structurally pruned model's narrower layers
    model = SequenceClassifier(encoder, len(labels), hf_config.get("pooling", "pooler"), hf_config.get("classifier_dropout"), labels)
    for name, entry in quantization["modules"].items():
        model.set_submodule(name, rebuild(path, name, entry, state))
    try:
        model.load_state_dict(state)  # strict: a missing or unexpected tensor fails with the list of names
    except RuntimeError as err:
        raise ValueError(f"{path / TENSORS} does not match config.json and {QUANTIZATION}: {err}") from None
    return model


def rows(name: str, quantization: dict, state: dict[str, torch.Tensor]) -> int | None:
    """The output width of the Linear `name` as saved: its layout's shape if quantized, else its weight's."""
    if name in quantization["modules"]:
        return quantization["modules"][name]["layout"]["shape"][0]
    return state[f"{name}.weight"].shape[0] if f"{name}.weight" in state else None


def rebuild(path: Path, name: str, entry: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """One quantized layer from its class, layout and the saved tensors under `name.`."""
    if entry["class"] not in LAYERS:
        raise ValueError(f"{path / QUANTIZATION}: module {name} has class {entry['class']!r}; known: {sorted(LAYERS)}")
    prefix = f"{name}."
    tensors = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        return LAYERS[entry["class"]](entry["layout"], tensors)
    except ValueError as err:
        raise ValueError(f"{path / TENSORS}: module {name}: {err}") from None
