"""The SFT recipe behind `python -m minitransformers sft`: a causal LM + conversations -> Trainer -> a model that
`generate --model OUT` loads.

InstructGPT (Ouyang et al. 2022, section 3.5): "We fine-tune GPT-3 on our labeler demonstrations using supervised
learning. We trained for 16 epochs, using a cosine learning rate decay, and residual dropout of 0.2", and note that the
SFT models overfit on validation loss after one epoch. TRL's SFTTrainer defaults, which we take where the paper is
silent or sized for GPT-3: learning rate 2e-5 for full fine-tuning, no weight decay, completion-only loss for
prompt/completion data, packing off. The data, the labels and packing are text/sft.py's; the loss is
train/tasks.py's SupervisedFineTuning; `method` (`--method`) is full fine-tuning, LoRA or QLoRA (peft/methods.py;
QLoRA freezes every Linear of the layers in NF4, from the weights the model was loaded with, e.g. SmolLM2's Q4_1
blocks dequantized; the tied embedding and output stay float and frozen).

The run folder is a model: the best checkpoint (lowest validation loss) as an HF LlamaForCausalLM folder
(config.json, model.safetensors) with its tokenizer and chat template; LoRA and QLoRA are merged into a float copy
first (merge_lora, merge_qlora), so `generate`, `chat` and `transformers` load it like any model.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import InputError
from ..io.manifest import publish
from ..model.causal_lm import CausalLM
from ..peft import merge_lora, merge_qlora
from ..peft.common import count_parameters, parameter_summary
from ..peft.methods import apply_method, method_config
from ..text.sft import collate, pack, sft_splits, tokenize_all
from ..train import checkpoint, distributed
from ..train.tasks import SupervisedFineTuning
from ..train.trainer import TrainConfig, Trainer
from . import TrainingRun
from .finetune import options_dict, peak_memory_mb
from .generate import chat_template, load_tokenizer
from .outputs import check_out, data_path, identity, write_json

METHODS = ("full", "lora", "qlora")
MERGE = {"full": lambda model: model, "lora": lambda model: merge_lora(copy.deepcopy(model)), "qlora": lambda model: merge_qlora(copy.deepcopy(model))}


@dataclass
class SFTConfig(TrainingRun):
    """`sft`'s options: a field per flag, at the flag's default; the LoRA flags make `method_options`."""

    model: str  # a GGUF file, a folder holding one, or an HF Llama folder
    data: str  # 'reviews' or a .jsonl file of conversations / prompt-completion pairs
    out: str  # the run folder
    method: str = "full"  # full | lora | qlora
    method_options: Any = None  # LoRAConfig / QLoRAConfig, or None for the method's defaults
    template: str | None = None  # a chat template by name instead of the model's own
    completion_only: bool = True  # loss on the assistant turns only; False: on every token
    packing: bool = False
    max_length: int = 512
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0
    epochs: int = 1
    lr: float = 2e-5
    batch_size: int = 8  # rows (packed or not) per micro-step, over all processes
    warmup: float = 0.03
    schedule: str = "cosine"
    weight_decay: float = 0.0


def save_model(model: CausalLM, folder, method: str) -> None:
    """The whole float model into `folder`: LoRA and QLoRA merged into a copy, the trained model left as it is."""
    MERGE[method](model).save_pretrained(folder)


def run(config: SFTConfig) -> dict:
    """Fine-tune as `config` says; returns the final metrics (on the main process)."""
    if config.method not in METHODS:
        raise InputError(f"--method {config.method!r}: sft takes {', '.join(METHODS)}")
    world = distributed.init(config.device, config.fsdp)
    out = check_out(config.out, {"--model": config.model, "--data": data_path(config.data)})
    checkpoint.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    template = chat_template(tokenizer, config.template)
    conversations = sft_splits(config.data, config.max_train_examples, config.max_eval_examples)
    encoded, skipped = {}, {}
    for split, items in conversations.items():  # bad data is refused here, before the model loads
        encoded[split], skipped[split] = tokenize_all(tokenizer, template, items, config.max_length, config.completion_only)
    if any(skipped.values()) and world.is_main:
        print(f"skipped {skipped['train']:,} train and {skipped['validation']:,} validation examples longer than --max-length {config.max_length}", file=sys.stderr)

    model = CausalLM.from_pretrained(config.model)
    if config.max_length > model.config.max_position_embeddings:
        raise InputError(f"--max-length {config.max_length} exceeds the model's {model.config.max_position_embeddings} positions")
    method = method_config(config.method, config.method_options)
    options = options_dict(method)
    apply_method(model, config.method, method)
    model.decoder.gradient_checkpointing = config.gradient_checkpointing
    if world.is_main:
        print(f"{config.method}: {parameter_summary(model)}", file=sys.stderr)

    train = encoded["train"]
    rows = pack([len(e.input_ids) for e in train], config.max_length) if config.packing else [[i] for i in range(len(train))]
    train_rows = [[train[i] for i in row] for row in rows]
    pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_config = TrainConfig(**{f.name: getattr(config, f.name) for f in fields(TrainConfig) if hasattr(config, f.name)}, metric="loss", eval_batch_size=config.batch_size)
    trainer = Trainer(
        model, SupervisedFineTuning(), train_rows, [[e] for e in encoded["validation"]], lambda items: collate(items, pad_id),
        [sum(len(e.input_ids) for e in row) for row in train_rows], train_config, world,
        save=lambda best, folder: save_model(best, folder, config.method),
        identity={**identity(config.model, config.data), "method": config.method, "method_options": options, "template": template.name,
                  "completion_only": config.completion_only, "packing": config.packing, "max_length": config.max_length,
                  "max_train_examples": config.max_train_examples, "max_eval_examples": config.max_eval_examples},
    )  # fmt: skip
    if world.is_main:
        with publish(out) as stage:
            tokenizer.save_pretrained(stage, template.source)
    result = trainer.fit(resume=config.resume, anyway=config.resume_anyway)

    metrics = {}
    if world.is_main:  # score the best model as saved, the folder generate will load
        best = CausalLM.from_pretrained(out).to(world.device)
        metrics.update({f"validation_{k}": v for k, v in trainer.evaluate([[e] for e in encoded["validation"]], best, desc="validation").items()})
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(result, method=config.method, method_options=options, trainable_parameters=trainable, total_parameters=total, trainable_percent=100 * trainable / total,
                       train_examples=len(train), train_rows=len(train_rows), skipped_too_long=skipped, completion_only=config.completion_only, packing=config.packing,
                       device=str(world.device), world_size=world.size, peak_memory_mb=peak_memory_mb(world.device))  # fmt: skip
        write_json(out, "metrics.json", metrics)
    distributed.shutdown(world)
    return metrics
