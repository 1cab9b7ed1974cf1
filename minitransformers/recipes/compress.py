"""`python -m minitransformers compress`: Deep Compression's pipeline on a fine-tuned classifier.

Han, Mao & Dally 2016 (quant/deep_compression.py has the method and the storage arithmetic):

    fine-tuned ─▶ magnitude-prune to --sparsity ─▶ retrain, masks fixed (--epochs, --lr)
               ─▶ cluster the survivors into 2^b − 1 centroids + 0 ─▶ retrain the centroids only (--centroid-lr)

Each retraining is the usual Trainer (AdamW, warmup, the best epoch on validation kept), on the classifier's
own task. The test accuracy is measured after every stage, so the report shows what each step costs and what
retraining wins back. `out` (--out) is a quantized folder (`save_quantized`, kmeans layout, the zero code kept)
that `evaluate` and `predict` read, plus `metrics.json` with the stages, the compression report (the paper's
sparse + relative-index + Huffman sizes of the compressed layers) and the options, and each retraining's log
rows (`train_prune.jsonl`, `train_centroids.jsonl`). The retrainings write nothing else: the Trainer runs with
out=None and keeps the best state in memory.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..io.manifest import publish
from ..model import SequenceClassifier
from ..quant.deep_compression import cluster_model, compression_report, to_weight_only
from ..quant.prune import apply_masks, magnitude_masks, remove_masks
from ..quant.serialize import save_quantized
from ..text.collate import collate, encode_examples
from ..text.datasets import load_classification
from ..text.tokenizer import Tokenizer
from ..train import checkpoint, distributed
from ..train.tasks import Classification
from ..train.trainer import TrainConfig, Trainer
from . import default_device, max_length_for
from .outputs import check_out, data_path, identity


@dataclass
class CompressConfig:
    """`compress`'s options: one field per flag, at the flag's default."""

    model: str  # a whole-model classifier folder
    data: str  # the set it was fine-tuned on
    out: str  # the folder for the compressed model
    sparsity: float = 0.5  # fraction of each Linear weight pruned
    scope: str = "layer"  # layer | global: one threshold per layer, or one for all
    bits: int = 4  # code bits: 2^bits - 1 centroids per layer plus the zero
    index_bits: int = 5  # bits of a relative index in the storage count
    epochs: int = 1  # of each retraining
    lr: float = 2e-5  # retraining the pruned model
    centroid_lr: float = 1e-4
    batch_size: int = 32
    max_length: int | None = None  # None: 128, or the model's positions if fewer
    max_train_examples: int = 0  # 0: all
    seed: int = 0
    device: str = field(default_factory=default_device)


def run(config: CompressConfig) -> dict:
    """Compress as `config` says; returns the report (also written to OUT/metrics.json)."""
    model_dir, out = Path(config.model), check_out(config.out, {"--model": config.model, "--data": data_path(config.data)})
    if (model_dir / "adapter.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise InputError(f"{model_dir} is not a whole fine-tuned classifier (model.safetensors); compress a `finetune --method full` folder")
    checkpoint.seed_everything(config.seed)
    world = distributed.World(device=torch.device(config.device))
    tokenizer = Tokenizer.from_pretrained(model_dir)
    model = SequenceClassifier.from_pretrained(model_dir).to(world.device)
    splits = load_classification(config.data, labels=model.labels)  # the data's labels must be the head's
    splits["train"] = splits["train"][: config.max_train_examples or None]
    max_length = max_length_for(config.max_length, model.encoder.config.max_position_embeddings)
    data = {name: encode_examples(tokenizer, examples, max_length) for name, examples in splits.items()}

    logs: dict[str, list[dict]] = {}  # stage -> the trainer's log rows

    def retrain(stage: str, lr: float, weight_decay: float) -> dict:
        train_config = TrainConfig(out=None, epochs=config.epochs, lr=lr, weight_decay=weight_decay, batch_size=config.batch_size, seed=config.seed)
        best = {}
        trainer = Trainer(model, Classification(len(model.labels)), data["train"], data["validation"], lambda items: collate(items, tokenizer.pad_id),
                          [len(e.input_ids) for e in data["train"]], train_config, world, save=lambda m, _: best.update(state=copy.deepcopy(m.state_dict())),
                          length=lambda e: len(e.input_ids))  # fmt: skip
        trainer.fit()  # in memory: no checkpoint or log files
        model.load_state_dict(best["state"])
        logs[stage] = trainer.history
        return score(model, data["test"], tokenizer.pad_id, world.device)

    stages = {"fine-tuned": score(model, data["test"], tokenizer.pad_id, world.device)}
    apply_masks(model, magnitude_masks(model, config.sparsity, scope=config.scope))
    stages["pruned"] = score(model, data["test"], tokenizer.pad_id, world.device)
    stages["pruned, retrained"] = retrain("prune", config.lr, weight_decay=0.01)
    remove_masks(model)
    cluster_model(model, config.bits, seed=config.seed)
    stages["clustered"] = score(model, data["test"], tokenizer.pad_id, world.device)
    stages["clustered, centroids retrained"] = retrain("centroids", config.centroid_lr, weight_decay=0.0)  # decay would pull centroids to 0
    report = compression_report(model, config.index_bits)

    options = {k: getattr(config, k) for k in ("sparsity", "scope", "bits", "index_bits", "epochs", "lr", "centroid_lr", "max_train_examples", "seed")}
    result = {"source": str(model_dir), "options": options, "test": stages, "compression": report}
    with publish(out, derived_from=identity(model_dir, config.data)) as stage:
        save_quantized(to_weight_only(model.cpu()), stage, "deep_compression", options)
        tokenizer.save_pretrained(stage)
        for name, rows in logs.items():
            (stage / f"train_{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (stage / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def score(model: nn.Module, examples, pad_id: int, device: torch.device, batch_size: int = 128) -> dict:
    """Accuracy, macro-F1 and loss of the model as it stands on `examples`, in batches of similar lengths (each
    padded only to its own longest; the scores are sums over examples, so the order changes none of them)."""
    model.eval()
    examples = sorted(examples, key=lambda e: len(e.input_ids))
    batches = ({k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()} for i in range(0, len(examples), batch_size))
    return Classification(len(model.labels)).evaluate(model, batches)
