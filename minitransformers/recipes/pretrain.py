"""Masked-language-model pretraining from scratch on WikiText-2, behind `python -m minitransformers pretrain`.

Devlin et al. 2019, section 3.1 and appendix A.2, at small scale:
  1. learn a WordPiece vocabulary on the training text (`train_wordpiece`);
  2. concatenate the text and cut it into [CLS] … [SEP] sequences of one length (`pack_sequences`);
  3. train an encoder from random initialisation to predict 15% masked tokens (80% [MASK], 10% random,
     10% unchanged), with AdamW, warmup and linear decay.
Validation uses one fixed masking of the validation split, so every evaluation scores the same positions.

`size` (`--size`) picks one of config.SIZES (tiny 2 × 128, small 4 × 256, base 12 × 768).
A model that predicted every masked token from unigram frequencies alone would score a loss of the unigram
entropy H = −Σ_w p(w) log p(w); the gap below it is what context teaches.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field, fields

import torch

from ..config import SIZES, EncoderConfig
from ..errors import InputError
from ..io.manifest import fingerprint, publish
from ..model import Encoder, MaskedLM
from ..text.collate import pack_sequences
from ..text.datasets import load_wikitext2
from ..text.masking import MaskingCollator, mask_tokens
from ..text.sources import data_dir
from ..text.tokenizer import Tokenizer, train_wordpiece
from ..train import checkpoint, distributed
from ..train.tasks import MaskedLanguageModeling
from ..train.trainer import TrainConfig, Trainer
from . import default_device
from .outputs import check_out, data_path, write_json


@dataclass
class PretrainConfig:
    """`pretrain`'s options: one field per flag, at the flag's default."""

    steps: int  # optimizer steps
    out: str  # the run folder
    data: str = "wikitext2"
    size: str = "small"  # a key of config.SIZES
    seq_length: int = 128  # tokens per packed sequence, [CLS] and [SEP] included
    vocab_size: int = 8192
    mask_probability: float = 0.15
    whole_word: bool = False
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    eval_every: int = 0  # 0: at the end
    max_eval_sequences: int = 0  # validate on the first N packed sequences only; 0: all
    seed: int = 0
    device: str = field(default_factory=default_device)
    precision: str = "fp32"
    resume: bool = False
    resume_anyway: bool = False  # resume even though options or inputs changed (the changes are listed)


def unigram_entropy(sequences: list[list[int]], special: set[int]) -> float:
    """H = −Σ p log p in nats, p the frequency of each non-special token in `sequences`."""
    counts = Counter(t for s in sequences for t in s if t not in special)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def fixed_masks(sequences: list[list[int]], collator: MaskingCollator, seed: int) -> list[dict]:
    """Mask the (equal-length) sequences once, with their own generator: the evaluation set."""
    ids = torch.tensor(sequences)  # (N, T)
    special = torch.isin(ids, torch.tensor(sorted(collator.special_ids)))
    word_starts = ~collator.continuation[ids] if collator.whole_word else None  # (N, T)
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids, special, collator.vocab_size, collator.mask_id, collator.probability, word_starts, generator)
    return [{"input_ids": x, "labels": y} for x, y in zip(inputs, labels)]


def stack(items: list[dict]) -> dict[str, torch.Tensor]:
    input_ids = torch.stack([item["input_ids"] for item in items])  # (B, T), no padding: sequences are packed
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": torch.zeros_like(input_ids),
            "labels": torch.stack([item["labels"] for item in items])}  # fmt: skip


def say(world, line: str) -> None:
    """A progress line on stderr (the main process only): stdout is for results."""
    if world.is_main:
        print(line, file=sys.stderr, flush=True)


def run(config: PretrainConfig) -> dict:
    """Pretrain as `config` says; returns the final metrics (on the main process)."""
    world = distributed.init(config.device)
    checkpoint.seed_everything(config.seed)
    out = check_out(config.out, {"--data": data_path(config.data)})
    if config.seq_length < 3:
        raise InputError(f"--seq-length {config.seq_length}: a packed sequence holds [CLS], [SEP] and at least one token; use 3 or more (default 128)")
    text = data_dir("wikitext2") / "train.raw"
    if config.resume and (out / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_pretrained(out)
    else:
        say(world, f"training a WordPiece vocabulary of {config.vocab_size} on {text} ...")
        tokenizer = train_wordpiece([text], vocab_size=config.vocab_size)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    sequences = {}
    for split in ("train", "validation"):
        say(world, f"tokenizing and packing the {split} split into sequences of {config.seq_length} tokens ...")
        encoded = tokenizer.encode(load_wikitext2(split), truncation=False, special_tokens=False)
        sequences[split] = pack_sequences((ids for ids, _ in encoded), config.seq_length, cls_id, sep_id)
    if config.max_eval_sequences:
        sequences["validation"] = sequences["validation"][: config.max_eval_sequences]

    encoder_config = EncoderConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=config.seq_length, **SIZES[config.size])
    model = MaskedLM(Encoder(encoder_config, add_pooler=False))
    collator = MaskingCollator.for_tokenizer(tokenizer, probability=config.mask_probability, whole_word=config.whole_word)
    options = {f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)}
    train_config = TrainConfig(**options, max_steps=config.steps, metric="loss", bucket=False)
    trainer = Trainer(
        model, MaskedLanguageModeling(), sequences["train"], fixed_masks(sequences["validation"], collator, config.seed),
        collator, [config.seq_length] * len(sequences["train"]), train_config, world, eval_collate=stack,
        identity={**{k: getattr(config, k) for k in ("size", "seq_length", "vocab_size", "mask_probability", "whole_word")}, "data_sha256": fingerprint(text)},
    )  # fmt: skip
    if world.is_main:
        with publish(out) as stage:
            tokenizer.save_pretrained(stage)
    result = trainer.fit(resume=config.resume, anyway=config.resume_anyway)

    metrics = {}
    if world.is_main:  # the best checkpoint, as saved, on the fixed validation masks
        best = MaskedLM.from_pretrained(out).to(world.device)
        metrics.update({f"validation_{k}": v for k, v in trainer.evaluate(trainer.eval_set, best, desc="validation").items()})
        metrics["unigram_entropy"] = unigram_entropy(sequences["train"], {cls_id, sep_id})
        metrics.update(result, size=config.size, parameters=sum(p.numel() for p in model.parameters()), vocab_size=tokenizer.vocab_size,
                       train_sequences=len(sequences["train"]), seq_length=config.seq_length, device=str(world.device), world_size=world.size)  # fmt: skip
        write_json(out, "metrics.json", metrics)
    distributed.shutdown(world)
    return metrics
