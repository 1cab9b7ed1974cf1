"""The fine-tuning recipe behind `python -m minitransformers finetune`: data -> model -> Trainer -> test.

Devlin et al. 2019, section 4 and appendix A.3: a linear head on the pooled [CLS] state, all weights trained,
AdamW at 2e-5 to 5e-5, batch 16 or 32, 2 to 4 epochs, linear warmup and decay. The best epoch on the
validation set is kept, and only that model is scored on the test set.

`method` (`--method`) swaps full fine-tuning for a parameter-efficient method (peft/methods.py): the same loop,
data and scoring, with the base frozen and only the method's parameters and the head in the optimizer; its
options are the method's dataclass (`method_options`, None for its defaults). `gradient_checkpointing`
recomputes each encoder layer in the backward pass instead of keeping its activations (model/encoder.py),
with any method.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io.manifest import publish
from ..model import SequenceClassifier
from ..peft.common import count_parameters, parameter_summary
from ..peft.methods import apply_method, load_classifier, method_config, save_finetuned
from ..peft.peft_format import save_peft
from ..text.collate import collate, encode_examples
from ..text.datasets import labelled_splits
from ..text.tokenizer import Tokenizer
from ..train import checkpoint, distributed
from ..train.tasks import Classification
from ..train.trainer import TrainConfig, Trainer
from . import TrainingRun, max_length_for
from .outputs import check_out, data_path, identity, write_json


@dataclass
class FinetuneConfig(TrainingRun):
    """`finetune`'s options: a field per flag, at the flag's default, but for --json (printing is the CLI's);
    `bucket` is --no-bucket negated, and the method's flags (--lora-r, ...) make `method_options`."""

    model: str  # an HF BERT folder to start from
    data: str  # 'sentiment', 'reviews-sentiment', an aclImdb folder, or a .csv/.jsonl file
    out: str  # the run folder
    labels: list[str] | None = None  # names of label ids 0, 1, ...; None: the data's own (datasets.label_names)
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32  # global: examples per micro-step over all processes
    max_length: int | None = None  # None: 128, or the model's positions if fewer
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0  # score only the first N validation and test examples; 0: all
    warmup: float = 0.1
    schedule: str = "linear"
    weight_decay: float = 0.01
    metric: str = "accuracy"
    pooling: str = "pooler"
    unpad: bool = False
    bucket: bool = True
    method: str = "full"
    method_options: Any = None  # the method's dataclass (peft.methods.METHOD_CONFIGS), or None for its defaults


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on CPU the peak resident size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def options_dict(options) -> dict:
    """A method's options dataclass as the JSON dict that metrics.json and adapter.json record ({} for None)."""
    return {} if options is None else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def run(config: FinetuneConfig) -> dict:
    """Fine-tune as `config` says; returns the final metrics (on the main process)."""
    world = distributed.init(config.device, config.fsdp)
    out = check_out(config.out, {"--model": config.model, "--data": data_path(config.data)})
    checkpoint.seed_everything(config.seed)
    # names None: a file of integer labels, named LABEL_0, ... by the model; bad data is refused here, before any training
    names, splits, num_labels = labelled_splits(config.data, config.labels, config.max_train_examples, config.max_eval_examples)

    tokenizer = Tokenizer.from_pretrained(config.model)
    model = SequenceClassifier.from_encoder(config.model, num_labels, pooling=config.pooling, labels=names, unpad=config.unpad)
    positions = model.encoder.config.max_position_embeddings
    max_length = max_length_for(config.max_length, positions)
    encoded = {name: encode_examples(tokenizer, examples, max_length) for name, examples in splits.items()}
    method = method_config(config.method, config.method_options)
    if config.method == "prompt" and max_length + method.num_virtual_tokens > positions:
        raise InputError(f"--max-length {max_length} + {method.num_virtual_tokens} virtual tokens exceed the model's {positions} positions; lower --max-length")
    options = options_dict(method)
    apply_method(model, config.method, method, tokenizer)
    model.encoder.gradient_checkpointing = config.gradient_checkpointing
    if world.is_main:
        print(f"{config.method}: {parameter_summary(model)}", file=sys.stderr)

    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_config = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)})
    trainer = Trainer(
        model, Classification(num_labels), encoded["train"], encoded["validation"],
        lambda items: collate(items, tokenizer.pad_id), [len(e.input_ids) for e in encoded["train"]], train_config, world,
        save=lambda best, folder: save_finetuned(best, folder, config.method, options, config.model),
        identity={**identity(config.model, config.data), "method": config.method, "method_options": options, "max_length": max_length, "pooling": config.pooling, "max_train_examples": config.max_train_examples},
        length=lambda example: len(example.input_ids),
    )  # fmt: skip
    if world.is_main:
        with publish(out) as stage:
            tokenizer.save_pretrained(stage)
    result = trainer.fit(resume=config.resume, anyway=config.resume_anyway)

    metrics = {}
    if world.is_main:  # score the best checkpoint, as saved, on validation and test
        best = load_classifier(out).to(world.device)
        for split in ("validation", "test"):
            metrics.update({f"{split}_{k}": v for k, v in trainer.evaluate(encoded[split], best, desc=split).items()})
        metrics.update(result, train_examples=len(splits["train"]), device=str(world.device), world_size=world.size)
        metrics["peak_memory_mb"] = peak_memory_mb(world.device)
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(method=config.method, method_options=options, trainable_parameters=trainable, total_parameters=total, trainable_percent=100 * trainable / total,
                       saved_bytes=sum(f.stat().st_size for f in out.glob("*.safetensors")))  # fmt: skip
        if config.method == "lora" and config.pooling == "pooler":  # peft's BERT classifier pools through the pooler only
            save_peft(best, out / "peft", base_model_name_or_path=Path(config.model).resolve())
        write_json(out, "metrics.json", metrics)
    distributed.shutdown(world)
    return metrics
