"""`python -m minitransformers evaluate`: score a fine-tuned classifier folder on a split, and time it.

Any folder that `finetune` or `quantize` writes loads here: a whole model, an adapter over its base
(peft/methods.py; `base` replaces the base model's folder that adapter.json names) or a quantized model
(quant/). A file's labels are mapped to ids by the model's label names, as finetune mapped them. The metrics are the task's (accuracy, macro-F1, loss); the
latency is the median wall time of one forward pass over a batch, after one warm-up batch, on a batch of
`batch_size` examples in dataset order (so with real lengths and padding).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..peft.methods import load_classifier
from ..quant.serialize import QUANTIZATION, load_quantized
from ..text.collate import collate, encode_examples
from ..text.datasets import load_classification
from ..text.tokenizer import Tokenizer
from ..train.tasks import Classification
from . import default_device, max_length_for


@dataclass
class EvaluateConfig:
    """`evaluate`'s options: one field per flag, at the flag's default."""

    model: str  # a folder written by finetune, quantize or compress
    data: str  # 'sentiment', 'reviews-sentiment', an aclImdb folder, or a .csv/.jsonl file
    base: str | None = None  # an adapter folder's base model, instead of the one adapter.json names
    split: str = "test"  # train | validation | test
    max_examples: int = 0  # score only the first N examples of the split; 0: all
    batch_size: int = 32
    max_length: int | None = None  # None: 128, or the model's positions if fewer
    device: str = field(default_factory=default_device)


def load_model(path: str | Path, base: str | Path | None = None) -> torch.nn.Module:
    """Whatever classifier folder `finetune` or `quantize` wrote: quantized, an adapter over its base (BASE, if
    given, instead of the one adapter.json names), or whole."""
    if (Path(path) / QUANTIZATION).is_file():
        if base is not None:
            raise InputError(f"{path}: holds a quantized model, not an adapter; --base applies to adapter folders only")
        return load_quantized(path)
    return load_classifier(path, base)


def timed_batches(batches: list[dict], device: torch.device, seconds: list[float]):
    """Yield the batches, appending each one's forward time (from this yield to the next request) to
    `seconds`; CUDA work is synchronised so that the time is the GPU's too."""
    for batch in batches:
        start = time.perf_counter()
        yield batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)


def run(config: EvaluateConfig) -> dict:
    """Score and time the model as `config` says; returns the metrics (also written to eval_<split>.json in the model folder)."""
    device = torch.device(config.device)
    model = load_model(config.model, config.base).to(device).eval()
    max_length = max_length_for(config.max_length, model.encoder.config.max_position_embeddings)
    tokenizer = Tokenizer.from_pretrained(config.model)
    split = load_classification(config.data, labels=model.labels)[config.split]
    if config.max_examples:
        split = split[: config.max_examples]
    examples = encode_examples(tokenizer, split, max_length)
    size = config.batch_size
    batches = [{k: v.to(device) for k, v in collate(examples[i : i + size], tokenizer.pad_id).items()} for i in range(0, len(examples), size)]
    seconds: list[float] = []
    with torch.inference_mode():
        bar = tqdm(batches, desc=config.split, unit="batch", leave=False)  # on stderr: stdout stays the metrics
        metrics = Classification(len(model.labels)).evaluate(model, timed_batches(bar, device, seconds))
    metrics = {
        **metrics, "split": config.split, "examples": len(examples), "batch_size": size, "device": str(device),
        "latency_ms_per_batch": 1000 * statistics.median(seconds[1:] or seconds),
    }  # fmt: skip
    (Path(config.model) / f"eval_{config.split}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
