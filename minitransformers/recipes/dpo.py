"""The DPO recipe behind `python -m minitransformers dpo`: a policy, preference pairs -> Trainer with the DPO task.

Rafailov et al. 2023 (train/dpo.py has the loss): the policy starts from an instruction-tuned model (SmolLM2's GGUF,
an HF Llama folder, such as an `sft` or `dpo` run), and the reference is that same starting model, frozen:

    --method full    every weight trains; the reference is a frozen copy (one more set of weights in memory)
    --method lora    LoRA on query and value (peft/lora.py); the reference is the policy with LoRA switched off
    --method qlora   LoRA over an NF4 base (peft/qlora.py); the reference is the NF4 base, LoRA off
    --precompute-reference   any method: the reference's log-probs of every pair are computed once, before
                     training (one pass over the data), and neither a copy nor a second forward is needed after

Defaults are TRL's DPOConfig (which follows the paper): β = 0.1, learning rate 1e-6 (the paper's, with RMSprop and
batch 64; LoRA usually wants 1e-5 to 1e-4), AdamW without weight decay, max_length 1024, batch 8. Validation: the
pairs of --eval-data, else every 10th pair of --data, held out; the best model by validation loss is kept.

The run folder is a model, as `sft`'s: the best checkpoint (lowest validation loss) as an HF LlamaForCausalLM folder,
LoRA and QLoRA merged into a float copy (recipes/sft.py `save_model`), with its tokenizer and chat template, which
`generate`, `chat`, `sft` and `dpo` load; and metrics.json: TRL's reward metrics of that checkpoint on the validation
pairs (train/dpo.py), and the counts of skipped pairs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..io.manifest import publish
from ..model.causal_lm import CausalLM
from ..peft.common import count_parameters, parameter_summary
from ..peft.methods import apply_method, method_config
from ..text.bpe import BPETokenizer
from ..text.chat import ChatTemplate
from ..text.preference import PreferencePair, collate_pairs, load_pairs, read_pairs
from ..train import checkpoint, distributed
from ..train.dpo import DPO, frozen_copy, precompute_reference_logps
from ..train.trainer import TrainConfig, Trainer
from . import TrainingRun, max_length_for
from .finetune import options_dict, peak_memory_mb
from .generate import chat_template, load_tokenizer
from .outputs import check_out, identity, write_json
from .sft import save_model

METHODS = ("full", "lora", "qlora")


@dataclass
class DPOConfig(TrainingRun):
    """`dpo`'s options: a field per flag, at the flag's default; the method's flags make `method_options`."""

    model: str  # the starting policy, and the reference: a GGUF file or folder, an HF Llama folder (an sft/dpo run)
    data: str  # preference pairs, JSONL (text/preference.py)
    out: str  # the run folder
    eval_data: str | None = None  # validation pairs; None: every 10th pair of data
    beta: float = 0.1
    precompute_reference: bool = False
    template: str | None = None  # a chat template name instead of the model's own
    max_length: int | None = None  # None: 1024 (TRL's), or the model's positions if fewer
    epochs: int = 1
    lr: float = 1e-6
    batch_size: int = 8  # pairs a step, over all processes
    warmup: float = 0.1
    schedule: str = "linear"
    weight_decay: float = 0.0
    eval_batch_size: int = 16
    method: str = "full"
    method_options: Any = None  # LoRAConfig / QLoRAConfig, or None for the method's defaults


def conversation_template(config: DPOConfig, tokenizer: BPETokenizer) -> ChatTemplate | None:
    """The chat template that renders the pairs when any of them is a conversation; plain pairs need none."""
    files = [config.data] + ([config.eval_data] if config.eval_data else [])
    conversations = any(isinstance(example["prompt"], list) for path in files for _, example in read_pairs(path))
    return chat_template(tokenizer, config.template) if conversations else None


def splits(config: DPOConfig, tokenizer: BPETokenizer, template: ChatTemplate | None, max_length: int) -> tuple[list[PreferencePair], list[PreferencePair], dict]:
    """The training and validation pairs, and how many of each were skipped (text/preference.py says why)."""
    train, skipped = load_pairs(config.data, tokenizer, template, max_length)
    if skipped.places:
        print(f"{config.data}: skipped {skipped.long_prompt} pairs whose prompt has {max_length} tokens or more and "
              f"{skipped.equal_after_truncation} whose completions are equal once truncated (--max-length): {', '.join(skipped.places[:5])}", file=sys.stderr)  # fmt: skip
    counts = {"skipped_long_prompt": skipped.long_prompt, "skipped_equal_after_truncation": skipped.equal_after_truncation}
    if config.eval_data is None:
        train, validation = [p for i, p in enumerate(train) if i % 10 != 9], train[9::10]
        if not validation:
            raise InputError(f"{config.data}: {len(train)} pairs hold out no validation pair (every 10th); give --eval-data")
    else:
        validation, held = load_pairs(config.eval_data, tokenizer, template, max_length)
        counts["validation_skipped"] = len(held.places)
    counts.update(train_pairs=len(train), validation_pairs=len(validation))
    return train, validation, counts


def best_validation(out: Path) -> dict:
    """The validation metrics of the saved (lowest validation loss) model, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "validation_loss" in row]
    return min(rows, key=lambda row: row["validation_loss"])


def attach_reference_logps(model: nn.Module, pairs: list[PreferencePair], collate, batch_size: int, world: distributed.World) -> None:
    """--precompute-reference: each pair's log π_ref of its chosen and rejected completions under the starting
    model (a PEFT method, just added, is switched off), stored with the pair for the batches to carry."""
    starts = tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch", disable=not world.is_main)
    batches = ({k: v.to(world.device) for k, v in collate(pairs[i : i + batch_size]).items()} for i in starts)
    for pair, logps in zip(pairs, precompute_reference_logps(model.eval(), batches).tolist()):
        pair.reference_logps = tuple(logps)


def reference_kind(config: DPOConfig) -> str:
    if config.precompute_reference:
        return "precomputed"
    return "frozen copy" if config.method == "full" else f"{config.method} switched off"


def run(config: DPOConfig) -> dict:
    """Train the policy with DPO as `config` says; returns the final metrics (on the main process)."""
    if config.method not in METHODS:
        raise InputError(f"--method {config.method!r}: dpo trains with one of {', '.join(METHODS)}")
    world = distributed.init(config.device, config.fsdp)
    out = check_out(config.out, {"--model": config.model, "--data": config.data, "--eval-data": config.eval_data})
    checkpoint.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    if tokenizer.pad_id is None:
        tokenizer.pad_id = tokenizer.eos_id  # as TRL
    template = conversation_template(config, tokenizer)  # reads and checks every pair: bad data stops the run here
    model = CausalLM.from_pretrained(config.model)
    max_length = max_length_for(config.max_length, model.config.max_position_embeddings, default=1024)
    train, validation, counts = splits(config, tokenizer, template, max_length)
    collate = lambda items: collate_pairs(items, tokenizer.pad_id)  # noqa: E731

    model = model.to(world.device)
    reference = frozen_copy(model) if config.method == "full" and not config.precompute_reference else None
    method = method_config(config.method, config.method_options)
    options = options_dict(method)
    apply_method(model, config.method, method)
    model.decoder.gradient_checkpointing = config.gradient_checkpointing
    if config.precompute_reference:
        attach_reference_logps(model, train + validation, collate, config.eval_batch_size, world)
    if world.is_main:
        print(f"dpo {config.method}: {parameter_summary(model)}; reference: {reference_kind(config)}", file=sys.stderr)
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_config = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)}, metric="loss")
    trainer = Trainer(
        model, DPO(config.beta, reference), train, validation, collate, [len(p) for p in train], train_config, world,
        save=lambda best, folder: save_model(best, folder, config.method),
        identity={**identity(config.model, config.data), "method": config.method, "method_options": options, "beta": config.beta,
                  "max_length": max_length, "reference": reference_kind(config), "eval_data": config.eval_data},
    )  # fmt: skip
    if world.is_main:
        with publish(out) as stage:
            tokenizer.save_pretrained(stage, template and template.source)
    result = trainer.fit(resume=config.resume, anyway=config.resume_anyway)

    metrics = {}
    if world.is_main:
        best = best_validation(out)
        metrics.update({k: v for k, v in best.items() if k.startswith("validation_")}, best_step=best["step"])
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(result, **counts, beta=config.beta, reference=reference_kind(config), method=config.method, method_options=options,
                       trainable_parameters=trainable, total_parameters=total, device=str(world.device), world_size=world.size,
                       peak_memory_mb=peak_memory_mb(world.device))  # fmt: skip
        write_json(out, "metrics.json", metrics)
    distributed.shutdown(world)
    return metrics
