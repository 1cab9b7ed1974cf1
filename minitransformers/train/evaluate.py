"""`python -m minitransformers evaluate`: score a fine-tuned classifier folder on a split, and time it.

Any folder that `finetune` or `quantize` writes loads here: a whole model, an adapter over its base
(peft/methods.py) or a quantized model (quant/). The metrics are the task's (accuracy, macro-F1, loss); the
latency is the median wall time of one forward pass over a batch, after one warm-up batch, on a batch of
`--batch-size` examples in dataset order (so with real lengths and padding).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..peft.methods import load_classifier
from ..quant.serialize import QUANTIZATION, load_quantized
from ..text.collate import collate, encode_examples
from ..text.datasets import load_classification
from ..text.tokenizer import Tokenizer
from .tasks import Classification


def load_model(path: str | Path) -> torch.nn.Module:
    """Whatever classifier folder `finetune` or `quantize` wrote: quantized, an adapter over its base, or whole."""
    return load_quantized(path) if (Path(path) / QUANTIZATION).is_file() else load_classifier(path)


def timed_batches(batches: list[dict], device: torch.device, seconds: list[float]):
    """Yield the batches, appending each one's forward time (from this yield to the next request) to
    `seconds`; CUDA work is synchronised so that the time is the GPU's too."""
    for batch in batches:
        start = time.perf_counter()
        yield batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)


def evaluate(args) -> dict:
    """Run from parsed `evaluate` arguments; returns the metrics (also written to --model/eval_SPLIT.json)."""
    device = torch.device(args.device)
    model = load_model(args.model).to(device).eval()
    tokenizer = Tokenizer.from_pretrained(args.model)
    examples = encode_examples(tokenizer, load_classification(args.data)[args.split], args.max_length)
    size = args.batch_size
    batches = [{k: v.to(device) for k, v in collate(examples[i : i + size], tokenizer.pad_id).items()} for i in range(0, len(examples), size)]
    seconds: list[float] = []
    with torch.inference_mode():
        metrics = Classification(len(model.labels)).evaluate(model, timed_batches(batches, device, seconds))
    metrics = {
        **metrics, "split": args.split, "examples": len(examples), "batch_size": size, "device": str(device),
        "latency_ms_per_batch": 1000 * statistics.median(seconds[1:] or seconds),
    }  # fmt: skip
    (Path(args.model) / f"eval_{args.split}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
