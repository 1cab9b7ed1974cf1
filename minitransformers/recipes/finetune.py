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

import json
import resource
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..model import SequenceClassifier
from ..peft.common import count_parameters, parameter_summary
from ..peft.methods import apply_method, load_classifier, method_config, save_finetuned
from ..peft.peft_format import save_peft
from ..text.collate import collate, encode_examples
from ..text.datasets import label_names, load_classification
from ..text.tokenizer import Tokenizer
from ..train import checkpoint, distributed
from ..train.tasks import Classification
from ..train.trainer import TrainConfig, Trainer
from . import default_device


@dataclass
class FinetuneConfig:
    """`finetune`'s options: a field per flag, at the flag's default, but for --json (printing is the CLI's);
    `bucket` is --no-bucket negated, and the method's flags (--lora-r, ...) make `method_options`."""

    model: str  # an HF BERT folder to start from
    data: str  # 'sentiment', an aclImdb folder, or a .csv/.jsonl file
    out: str  # the run folder
    labels: list[str] | None = None  # names of label ids 0, 1, ...; None: the data's own (datasets.label_names)
    epochs: int = 3
    max_steps: int = 0  # 0: the epochs decide
    lr: float = 5e-5
    batch_size: int = 32  # global: examples per micro-step over all processes
    grad_accum: int = 1
    max_length: int = 128
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0  # score only the first N validation and test examples; 0: all
    warmup: float = 0.1
    schedule: str = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0: at each epoch end
    metric: str = "accuracy"
    pooling: str = "pooler"
    unpad: bool = False
    bucket: bool = True
    seed: int = 0
    device: str = field(default_factory=default_device)
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    resume: bool = False
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
    world = distributed.init(config.device)
    checkpoint.seed_everything(config.seed)
    names = label_names(config.data, config.labels)  # None: a file of integer labels, named LABEL_0, ... by the model
    splits = load_classification(config.data, labels=names)
    if config.max_train_examples:
        splits["train"] = splits["train"][: config.max_train_examples]
    if config.max_eval_examples:
        for split in ("validation", "test"):
            splits[split] = splits[split][: config.max_eval_examples]
    num_labels = len(names) if names else max(2, 1 + max(e.label for split in splits.values() for e in split))

    tokenizer = Tokenizer.from_pretrained(config.model)
    encoded = {name: encode_examples(tokenizer, examples, config.max_length) for name, examples in splits.items()}
    model = SequenceClassifier.from_encoder(config.model, num_labels, pooling=config.pooling, labels=names, unpad=config.unpad)
    method = method_config(config.method, config.method_options)
    if config.method == "prompt" and config.max_length + method.num_virtual_tokens > model.encoder.config.max_position_embeddings:
        raise ValueError(f"--max-length {config.max_length} + {method.num_virtual_tokens} virtual tokens exceed the model's {model.encoder.config.max_position_embeddings} positions; lower --max-length")
    options = options_dict(method)
    apply_method(model, config.method, method, tokenizer)
    model.encoder.gradient_checkpointing = config.gradient_checkpointing
    if world.is_main:
        print(f"{config.method}: {parameter_summary(model)}")

    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_config = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)})
    trainer = Trainer(
        model, Classification(num_labels), encoded["train"], encoded["validation"],
        lambda items: collate(items, tokenizer.pad_id), [len(e.input_ids) for e in encoded["train"]], train_config, world,
        save=lambda best, folder: save_finetuned(best, folder, config.method, options, config.model),
        identity={"model": config.model, "data": config.data, "method": config.method, "method_options": options, "max_length": config.max_length, "pooling": config.pooling, "max_train_examples": config.max_train_examples},
    )  # fmt: skip
    if world.is_main:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(config.out)
    result = trainer.fit(resume=config.resume)

    metrics = {}
    if world.is_main:  # score the best checkpoint, as saved, on validation and test
        best = load_classifier(config.out).to(world.device)
        for split in ("validation", "test"):
            metrics.update({f"{split}_{k}": v for k, v in trainer.evaluate(encoded[split], best, desc=split).items()})
        metrics.update(result, train_examples=len(splits["train"]), device=str(world.device), world_size=world.size)
        metrics["peak_memory_mb"] = peak_memory_mb(world.device)
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(method=config.method, method_options=options, trainable_parameters=trainable, total_parameters=total, trainable_percent=100 * trainable / total,
                       saved_bytes=sum(f.stat().st_size for f in Path(config.out).glob("*.safetensors")))  # fmt: skip
        if config.method == "lora" and config.pooling == "pooler":  # peft's BERT classifier pools through the pooler only
            save_peft(best, Path(config.out) / "peft", base_model_name_or_path=Path(config.model).resolve())
        (Path(config.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.shutdown(world)
    return metrics
