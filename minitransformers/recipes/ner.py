"""The NER recipe behind `python -m minitransformers ner`: BIO data -> token classifier -> Trainer -> entity F1.

Devlin et al. 2019, section 5.3 (CoNLL-2003 NER): the encoder's last hidden state of each word's first sub-word into
a linear layer over the BIO tags, every weight trained; the fine-tuning settings of appendix A.3 (AdamW at 5e-5,
batch 32, a few epochs, linear warmup and decay). The best epoch by validation entity F1 is kept, and only that model
is scored on the test split: entity precision, recall and F1 overall and per type, as seqeval computes them.

Data (`--data`): "wnut16", WNUT-16's 2,394 training tweets in our own seeded split (text/ner.py), or a BIO file, cut
the same way. `--method lora` trains LoRA's A and B on query and value (peft/lora.py, Hu et al. 2021) and the new
head, the rest frozen; the saved model has the update merged into its weights (W + (α/r) B A, Hu et al. section 4.1),
so every run folder is an HF BertForTokenClassification folder with its tokenizer, which `transformers`' pipeline
and `text/entities.py` read alike.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io.manifest import fingerprint, publish
from ..model.token_classifier import TokenClassifier
from ..peft.common import count_parameters, parameter_summary
from ..peft.lora import merge_lora
from ..peft.methods import apply_method, method_config
from ..text.ner import collate_tokens, encode_sentences, ner_splits
from ..text.sources import data_dir
from ..text.tokenizer import Tokenizer
from ..train import checkpoint, distributed
from ..train.tasks import TokenClassification
from ..train.trainer import TrainConfig, Trainer
from . import TrainingRun, max_length_for
from .finetune import options_dict, peak_memory_mb
from .outputs import check_out, write_json

METHODS = ("full", "lora")


@dataclass
class NERConfig(TrainingRun):
    """`ner`'s options: a field per flag, at the flag's default, but for --json (printing is the CLI's); the LoRA
    flags (--lora-r, ...) make `method_options`."""

    model: str  # an HF BERT folder to start from
    data: str  # 'wnut16' or a BIO file
    out: str  # the run folder
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32  # global: sentences per micro-step over all processes
    max_length: int | None = None  # None: 128, or the model's positions if fewer
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0  # score only the first N validation and test sentences; 0: all
    warmup: float = 0.1
    schedule: str = "linear"
    weight_decay: float = 0.01
    metric: str = "f1"
    method: str = "full"
    method_options: Any = None  # LoRAConfig for lora, or None for its defaults


def data_file(spec: str) -> Path:
    """The file `--data` reads: the fetched WNUT-16 file for "wnut16", else the path itself."""
    return data_dir("wnut16") / "ner.txt" if spec == "wnut16" else Path(spec)


def save_model(model: TokenClassifier, folder: Path, method: str) -> None:
    """The best model as an HF folder; LoRA's update merged into a copy first (the module docstring)."""
    (merge_lora(copy.deepcopy(model)) if method == "lora" else model).save_pretrained(folder)


def run(config: NERConfig) -> dict:
    """Train and score as `config` says; returns the final metrics (on the main process)."""
    if config.method not in METHODS:
        raise InputError(f"ner --method {config.method!r}: use one of {', '.join(METHODS)}")
    world = distributed.init(config.device, config.fsdp)
    out = check_out(config.out, {"--model": config.model, "--data": data_file(config.data)})
    checkpoint.seed_everything(config.seed)
    labels, splits = ner_splits(config.data)  # bad data is refused here, before any training
    cut = {"train": config.max_train_examples, "validation": config.max_eval_examples, "test": config.max_eval_examples}
    splits = {name: sentences[: cut[name] or None] for name, sentences in splits.items()}

    tokenizer = Tokenizer.from_pretrained(config.model)
    model = TokenClassifier.from_encoder(config.model, len(labels), labels=labels)
    max_length = max_length_for(config.max_length, model.encoder.config.max_position_embeddings)
    encoded = {name: encode_sentences(tokenizer, sentences, labels, max_length) for name, sentences in splits.items()}
    options = options_dict(method_config(config.method, config.method_options))
    apply_method(model, config.method, config.method_options)
    model.encoder.gradient_checkpointing = config.gradient_checkpointing
    if world.is_main:
        print(f"{config.method}: {parameter_summary(model)}", file=sys.stderr)

    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_config = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)})
    identity = {"model_sha256": fingerprint(config.model), "data_sha256": fingerprint(data_file(config.data)), "method": config.method,
                "method_options": options, "max_length": max_length, "max_train_examples": config.max_train_examples}  # fmt: skip
    trainer = Trainer(
        model, TokenClassification(labels), encoded["train"], encoded["validation"], lambda items: collate_tokens(items, tokenizer),
        [len(e.input_ids) for e in encoded["train"]], train_config, world,
        save=lambda best, folder: save_model(best, folder, config.method), identity=identity, length=lambda e: len(e.input_ids),
    )  # fmt: skip
    if world.is_main:
        with publish(out) as stage:
            tokenizer.save_pretrained(stage)
    result = trainer.fit(resume=config.resume, anyway=config.resume_anyway)

    metrics = {}
    if world.is_main:  # score the best model, as saved, on validation and test
        best = TokenClassifier.from_pretrained(out).to(world.device)
        for split in ("validation", "test"):
            metrics.update({f"{split}_{k}": v for k, v in trainer.evaluate(encoded[split], best, desc=split).items()})
        sizes = {f"{name}_sentences": len(sentences) for name, sentences in splits.items()}
        metrics.update(result, **sizes, labels=labels, device=str(world.device), world_size=world.size, peak_memory_mb=peak_memory_mb(world.device))
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(method=config.method, method_options=options, trainable_parameters=trainable, total_parameters=total, trainable_percent=100 * trainable / total)
        write_json(out, "metrics.json", metrics)
    distributed.shutdown(world)
    return metrics
