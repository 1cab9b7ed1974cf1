"""The fine-tuning recipe behind `python -m minitransformers finetune`: data -> model -> Trainer -> test.

Devlin et al. 2019, section 4 and appendix A.3: a linear head on the pooled [CLS] state, all weights trained,
AdamW at 2e-5 to 5e-5, batch 16 or 32, 2 to 4 epochs, linear warmup and decay. The best epoch on the
validation set is kept, and only that model is scored on the test set.

`--method` swaps full fine-tuning for a parameter-efficient method (peft/methods.py): the same loop, data and
scoring, with the base frozen and only the method's parameters and the head in the optimizer.
`--gradient-checkpointing` recomputes each encoder layer in the backward pass instead of keeping its
activations (model/encoder.py), with any method.
"""

from __future__ import annotations

import json
import resource
from dataclasses import fields
from pathlib import Path

import torch

from ..model import SequenceClassifier
from ..peft.common import count_parameters, parameter_summary
from ..peft.methods import apply_method, load_classifier, save_finetuned
from ..peft.peft_format import save_peft
from ..peft.qlora import ALL_LINEAR
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


def method_options(args) -> dict:
    """The keyword arguments of the chosen method's add_* function, from its command-line flags."""
    if args.method in ("lora", "qlora"):
        targets = args.lora_targets or (ALL_LINEAR if args.method == "qlora" else ("query", "value"))
        options = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": list(targets)}
        return options if args.method == "lora" else {**options, "double_quant": not args.no_double_quant}
    if args.method in ("houlsby", "pfeiffer"):
        return {"reduction_factor": args.reduction_factor, "train_layernorm": args.adapter_layernorm}
    if args.method == "prompt":
        return {"num_virtual_tokens": args.num_virtual_tokens, "init": args.prompt_init, "init_text": args.prompt_init_text}
    if args.method == "prefix":
        return {"num_virtual_tokens": args.num_virtual_tokens, "reparameterize": not args.no_prefix_projection}
    return {}


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
    if args.method == "prompt" and args.max_length + args.num_virtual_tokens > model.encoder.config.max_position_embeddings:
        raise ValueError(f"--max-length {args.max_length} + {args.num_virtual_tokens} virtual tokens exceed the model's {model.encoder.config.max_position_embeddings} positions; lower --max-length")
    options = method_options(args)
    apply_method(model, args.method, options, tokenizer)
    model.encoder.gradient_checkpointing = args.gradient_checkpointing
    if world.is_main:
        print(f"{args.method}: {parameter_summary(model)}")

    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    train_options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    config = TrainConfig(**train_options, bucket=not args.no_bucket)
    trainer = Trainer(
        model, Classification(num_labels), encoded["train"], encoded["validation"],
        lambda items: collate(items, tokenizer.pad_id), [len(e.input_ids) for e in encoded["train"]], config, world,
        save=lambda best, folder: save_finetuned(best, folder, args.method, options, args.model),
    )  # fmt: skip
    if world.is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(args.out)
    result = trainer.fit(resume=args.resume)

    metrics = {}
    if world.is_main:  # score the best checkpoint, as saved, on validation and test
        best = load_classifier(args.out).to(world.device)
        for split in ("validation", "test"):
            metrics.update({f"{split}_{k}": v for k, v in trainer.evaluate(encoded[split], best).items()})
        metrics.update(result, train_examples=len(splits["train"]), device=str(world.device), world_size=world.size)
        metrics["peak_memory_mb"] = peak_memory_mb(world.device)
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        metrics.update(method=args.method, method_options=options, trainable_parameters=trainable, total_parameters=total, trainable_percent=100 * trainable / total,
                       saved_bytes=sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors")))  # fmt: skip
        if args.method == "lora" and args.pooling == "pooler":  # peft's BERT classifier pools through the pooler only
            save_peft(best, Path(args.out) / "peft", base_model_name_or_path=Path(args.model).resolve())
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    distributed.shutdown(world)
    return metrics
