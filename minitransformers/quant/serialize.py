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
import reprlib
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..config import EncoderConfig, naming
from ..io import hf, manifest
from ..io.safetensors import load_file, save_file
from ..model.encoder import Encoder
from ..model.heads import SequenceClassifier, head_config
from .qlinear import QuantizedLinear, SparseLinear, W8A8Linear, WeightOnlyLinear

TENSORS, QUANTIZATION = "quantized.safetensors", "quantization.json"
LAYERS = {cls.__name__: cls for cls in (W8A8Linear, WeightOnlyLinear, SparseLinear)}


def save_quantized(model: SequenceClassifier, path: str | Path, method: str, options: dict | None = None) -> None:
    """Write a quantized classifier (after `quantize_model(model, method, **options)`) to the folder `path`."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not modules:
        raise InputError("the model has no quantized layers; call quantize_model(model, method) before save_quantized")
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
    return hf.read_json(path / QUANTIZATION, f"the {QUANTIZATION} of a folder written by save_quantized")


def load_quantized(path: str | Path) -> SequenceClassifier:
    """The SequenceClassifier that `save_quantized` wrote, its quantized layers rebuilt from their saved tensors."""
    path = Path(path)
    manifest.verify(path, "config.json", QUANTIZATION, TENSORS)
    quantization = read_quantization(path)
    state = load_file(path / TENSORS)
    check_quantization(path, quantization, state)
    hf_config = hf.read_config(path)
    config = EncoderConfig.from_hf(hf_config, path / "config.json")
    head_options = head_config(hf_config, path, {k: t for k, t in state.items() if k.startswith("classifier.")})
    hf.check_layer_count({k.replace("encoder.layers.", "encoder.layer."): v for k, v in state.items()}, config.num_layers, path)
    with hf.shapes_only():  # the saved tensors are assigned to it below, so config.json's sizes allocate nothing
        encoder = Encoder(config, add_pooler=any(k.startswith("encoder.pooler.") for k in state))
        encoder.resize_layers([(rows(f"encoder.layers.{i}.attention.query", quantization, state), rows(f"encoder.layers.{i}.ffn.up", quantization, state))
                               for i in range(config.num_layers)])  # fmt: skip  # a structurally pruned model's narrower layers
        with naming(path / "config.json"):
            model = SequenceClassifier(encoder, **head_options)
    for name, entry in quantization["modules"].items():
        if not isinstance(model.get_submodule(name) if has_module(model, name) else None, nn.Linear):
            raise InputError(f"{path / QUANTIZATION}: module {name} is not a Linear layer of this model (config.json: {config.num_layers} layers)")
        model.set_submodule(name, rebuild(path, name, entry, state))
    try:
        model.load_state_dict(state, assign=True)  # strict: a missing, unexpected or mis-shaped tensor fails, naming it
    except RuntimeError as err:
        raise InputError(f"{path / TENSORS} does not match config.json and {QUANTIZATION}: {' '.join(str(err).split())[:300]}") from None
    return model


def check_quantization(path: Path, quantization, state: dict[str, torch.Tensor]) -> None:
    """quantization.json's shape, checked before anything is built from it: {"method": str, "options": {...},
    "modules": {name: {"class": str, "layout": {"shape": [out, in], ...}}}}, each layout's weight count bounded by
    the bytes saved under its name (at most 64 weights a byte: no format here stores fewer than 1/64 of a byte a
    weight) and its other numbers by that count (`check_counts`), so a layout cannot make the loader allocate more
    than the file backs. The tensors: every float one finite (weights, scales, codebooks), and every one outside a
    quantized layer floating point, all of one dtype."""
    where = path / QUANTIZATION
    kinds = {"method": str, "options": dict, "modules": dict}
    if not isinstance(quantization, dict) or any(not isinstance(quantization.get(k), kind) for k, kind in kinds.items()):
        raise InputError(f"{where}: expected an object with a method (string), options and modules (objects); is {path} a folder written by save_quantized?")
    saved = Counter()  # module name -> the bytes stored under it, in one pass (quantization.json may list many modules)
    for k, t in state.items():
        saved[k.rpartition(".")[0]] += t.numel() * t.element_size()
    for name, entry in quantization["modules"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("class"), str) and isinstance(entry.get("layout"), dict)):
            raise InputError(f"{where}: module {name}: expected {{\"class\": ..., \"layout\": {{...}}}}, found {str(entry)[:100]}")
        shape = entry["layout"].get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and d > 0 for d in shape)):
            raise InputError(f"{where}: module {name}: layout shape {shape!r}, expected [out_features, in_features] of positive ints")
        if shape[0] * shape[1] > 64 * saved[name]:
            raise InputError(f"{where}: module {name}: layout shape {shape} claims {shape[0] * shape[1]:,} weights, but {TENSORS} holds {saved[name]:,} bytes for it")
        check_counts(where, name, entry["layout"])
    outside = {k: t for k, t in state.items() if k.rpartition(".")[0] not in quantization["modules"]}  # the float model's own tensors
    hf.check_values(path / TENSORS, {k: t for k, t in state.items() if t.is_floating_point() or k in outside})
    dtypes = {}  # dtype -> a tensor of it: the model is built from these tensors as they are, so they must agree
    for k, t in outside.items():
        dtypes.setdefault(t.dtype, k)
    if len(dtypes) > 1:
        raise InputError(f"{path / TENSORS}: the weights outside quantized layers mix dtypes ({', '.join(f'{k} is {d}' for d, k in dtypes.items())}); a saved model has one")


def check_counts(where: Path, name: str, layout: dict) -> None:
    """Every number in a layout but its shape (bits, block and group sizes) is a positive int no larger than the
    layer's weight count: a block never holds more than the whole weight, so no count can make a rebuild allocate
    more than the weight itself."""
    weights = layout["shape"][0] * layout["shape"][1]
    for key, value in layout.items():
        numbers = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if key != "shape" and not all(type(v) is int and 0 < v <= weights for v in numbers):
            raise InputError(f"{where}: module {name}: layout {key} is {reprlib.repr(value)}; a count in a layout is a positive int of at most the layer's {weights:,} weights (a flag is true or false)")


def has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def rows(name: str, quantization: dict, state: dict[str, torch.Tensor]) -> int | None:
    """The output width of the Linear `name` as saved: its layout's shape if quantized, else its weight's."""
    if name in quantization["modules"]:
        return quantization["modules"][name]["layout"]["shape"][0]
    return state[f"{name}.weight"].shape[0] if f"{name}.weight" in state else None


def rebuild(path: Path, name: str, entry: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """One quantized layer from its class, layout and the saved tensors under `name.`, run once on a row of ones: its
    output must have the layout's width and be finite."""
    if entry["class"] not in LAYERS:
        raise InputError(f"{path / QUANTIZATION}: module {name} has class {entry['class']!r}; known: {sorted(LAYERS)}")
    prefix = f"{name}."
    tensors = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        layer = LAYERS[entry["class"]](entry["layout"], tensors)
        with torch.no_grad():
            y = layer(torch.ones(1, layer.in_features))  # once, so that a layout its tensors do not fit fails now, not at the first prediction
    except ValueError as err:
        raise InputError(f"{path / TENSORS}: module {name}: {err}") from None
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as err:  # a layout or tensors this layer cannot read
        raise InputError(f"{path / TENSORS}: module {name}: cannot rebuild it from its layout and tensors ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if y.shape != (1, layer.out_features) or not torch.isfinite(y).all():
        raise InputError(f"{path / TENSORS}: module {name}: rebuilt, it maps a row of ones to {tuple(y.shape)} with {int((~torch.isfinite(y)).sum())} NaN or inf; the file is damaged")
    return layer
