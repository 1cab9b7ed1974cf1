"""Recipes: each is a config dataclass and `run(config) -> dict`, the work behind one CLI command.

    finetune.py  FinetuneConfig: fine-tune an encoder with a classification head, in full or with a PEFT method
    pretrain.py  PretrainConfig: MLM pretraining from scratch on WikiText-2
    evaluate.py  EvaluateConfig: score a fine-tuned classifier folder on a split and time it; `load_model`
    quantize.py  QuantizeConfig: a fine-tuned classifier folder -> a quantized one
    compress.py  CompressConfig: Deep Compression's prune -> retrain -> cluster -> retrain pipeline
    generate.py  GenerateConfig: a causal LM's continuation of prompts, raw or through its chat template
    perplexity.py  PerplexityConfig: a causal LM's perplexity, windowed as llama.cpp computes it
    sft.py       SFTConfig: supervised fine-tuning of a causal LM on conversations, in full or with LoRA / QLoRA
    dpo.py       DPOConfig: preference-tune a causal LM with DPO, in full or with LoRA / QLoRA; `load_policy`
    ner.py       NERConfig: fine-tune an encoder with a token-classification head on BIO-tagged sentences

`cli.py` maps parsed arguments to these configs; experiments build the configs themselves.
"""

from dataclasses import dataclass, field, fields

import torch

from ..errors import InputError


def default_device() -> str:
    """cuda if available, else cpu: every recipe's default device."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(kw_only=True)
class TrainingRun:
    """The options that every training recipe's config (finetune, sft, dpo, ner) shares at the same defaults: where
    it runs, how it shards, steps beyond the schedule and resumes; the trainer reads them as TrainConfig's fields.
    Keyword-only, so that each recipe's own fields (the model, the data and the run folder first) come before them;
    the ones whose defaults differ by recipe (epochs, lr, batch size, warmup, schedule, weight decay) are the recipe's."""

    max_steps: int = 0  # 0: the epochs decide
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0: at each epoch end
    seed: int = 0
    device: str = field(default_factory=default_device)
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard over the processes instead of replicating (train/fsdp.py)
    fsdp_offload: bool = False  # with fsdp: the shards in CPU memory (train/fsdp.py)
    resume: bool = False
    resume_anyway: bool = False  # resume even though options or inputs changed (the changes are listed)


def config_from(cls, args, **converted):
    """A recipe's config dataclass `cls` from parsed command-line arguments: each field from the argument of the
    same name, except the `converted` ones, which the caller gives (flags that do not map one to one, such as
    --no-bucket). Each CLI command is `recipes.<name>.run(config_from(...))`."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in converted}, **converted)


def max_length_for(max_length: int | None, positions: int, default: int | None = 128, flag: str = "--max-length") -> int:
    """The length to truncate texts to, for an encoder with `positions` learned position embeddings: `max_length`
    if the model can represent it (else an error naming the flag); None: `default`, or `positions` if fewer
    (None: `positions`)."""
    if max_length is None:
        return positions if default is None else min(default, positions)
    if max_length > positions:
        raise InputError(f"{flag} {max_length} exceeds the model's {positions} positions (max_position_embeddings); use at most {positions}")
    return max_length
