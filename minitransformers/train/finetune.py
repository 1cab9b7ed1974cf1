"""The fine-tuning recipe behind `python -m minitransformers finetune`: data -> model -> Trainer -> test.

Devlin et al. 2019, section 4 and appendix A.3: a linear head on the pooled [CLS] state, all weights trained,
AdamW at 2e-5 to 5e-5, batch 16 or 32, 2 to 4 epochs, linear warmup and decay. The best epoch on the
validation set is kept, and only that model is scored on the test set.
"""

from __future__ import annotations

import json
import resource
from dataclasses import fields
from pathlib import Path

import torch

from ..model import SequenceClassifier
from ..text.collate import collate, encode_examples
from ..text.datasets import load_classification
from ..text.tokenizer import Tokenizer
from . import checkpoint, distributed
from .tasks import Classification
from .trainer import TrainConfig, Trainer


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on CPU the peak resident size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def finetune(args) -> dict:
    """Run from parsed `finetune` arguments; returns the final metrics (on the main process)."""
    world = distributed.init(args.device)
    checkpoint.seed_everything(args.seed)
    splits = load_classification(args.data)
    if args.max_train_examples:
        splits["train"] = splits["train"][: args.max_train_examples]
    num_labels = max(2, 1 + max(e.label for split in splits.values() for e in split))

    tokenizer = Tokenizer.from_pretrained(args.model)
    encoded = {name: encode_examples(tokenizer, examples, args.max_length) for name, examples in splits.items()}
    model = SequenceClassifier.from_encoder(args.model, num_labels, pooling=args.pooling, unpad=args.unpad)
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    config = TrainConfig(**options, bucket=not args.no_bucket)
    trainer = Trainer(
        model, Classification(num_labels), encoded["train"], encoded["validation"],
        lambda items: collate(items, tokenizer.pad_id), [len(e.input_ids) for e in encoded["train"]], config, world,
    )  # fmt: skip
    if world.is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(args.out)
    result = trainer.fit(resume=args.resume)

    metrics = {}
    if world.is_main:  # score the best checkpoint, as saved, on validation and test
        best = SequenceClassifier.from_pretrained(args.out).to(world.device)
        for split in ("validation", "test"):
            metrics.update({f"{split}_{k}": v for k, v in trainer.evaluate(encoded[split], best).items()})
        metrics.update(result, train_examples=len(splits["train"]), device=str(world.device), world_size=world.size)
        metrics["peak_memory_mb"] = peak_memory_mb(world.device)
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.shutdown(world)
    return metrics
