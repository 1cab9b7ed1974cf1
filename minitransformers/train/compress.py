"""`python -m minitransformers compress`: Deep Compression's pipeline on a fine-tuned classifier.

Han, Mao & Dally 2016 (quant/deep_compression.py has the method and the storage arithmetic):

    fine-tuned ─▶ magnitude-prune to --sparsity ─▶ retrain, masks fixed (--epochs, --lr)
               ─▶ cluster the survivors into 2^b − 1 centroids + 0 ─▶ retrain the centroids only (--centroid-lr)

Each retraining is the usual Trainer (AdamW, warmup, the best epoch on validation kept), on the classifier's
own task. The test accuracy is measured after every stage, so the report shows what each step costs and what
retraining wins back. --out is a quantized folder (`save_quantized`, kmeans layout, the zero code kept) that
`evaluate` and `predict` read, plus `metrics.json` with the stages, the compression report (the paper's
sparse + relative-index + Huffman sizes of the compressed layers) and the options.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..model import SequenceClassifier
from ..quant.deep_compression import cluster_model, compression_report, to_weight_only
from ..quant.prune import apply_masks, magnitude_masks, remove_masks
from ..quant.serialize import save_quantized
from ..text.collate import collate, encode_examples
from ..text.datasets import load_classification
from ..text.tokenizer import Tokenizer
from . import checkpoint, distributed
from .tasks import Classification
from .trainer import TrainConfig, Trainer


def compress(args) -> dict:
    """Run from parsed `compress` arguments; returns the report (also written to --out/metrics.json)."""
    model_dir, out = Path(args.model), Path(args.out)
    if (model_dir / "adapter.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise ValueError(f"{model_dir} is not a whole fine-tuned classifier (model.safetensors); compress a `finetune --method full` folder")
    checkpoint.seed_everything(args.seed)
    world = distributed.World(device=torch.device(args.device))
    tokenizer = Tokenizer.from_pretrained(model_dir)
    splits = load_classification(args.data)
    splits["train"] = splits["train"][: args.max_train_examples or None]
    data = {name: encode_examples(tokenizer, examples, args.max_length) for name, examples in splits.items()}
    model = SequenceClassifier.from_pretrained(model_dir).to(world.device)

    def retrain(stage: str, lr: float, weight_decay: float) -> dict:
        config = TrainConfig(out=str(out / stage), epochs=args.epochs, lr=lr, weight_decay=weight_decay, batch_size=args.batch_size, seed=args.seed)
        best = {}
        trainer = Trainer(model, Classification(len(model.labels)), data["train"], data["validation"], lambda items: collate(items, tokenizer.pad_id),
                          [len(e.input_ids) for e in data["train"]], config, world, save=lambda m, _: best.update(state=copy.deepcopy(m.state_dict())))  # fmt: skip
        trainer.fit()
        model.load_state_dict(best["state"])
        (out / stage / "checkpoint.pt").unlink()  # the resume state (model + AdamW) is not needed once the stage is done
        return score(model, data["test"], tokenizer.pad_id, world.device)

    stages = {"fine-tuned": score(model, data["test"], tokenizer.pad_id, world.device)}
    apply_masks(model, magnitude_masks(model, args.sparsity, scope=args.scope))
    stages["pruned"] = score(model, data["test"], tokenizer.pad_id, world.device)
    stages["pruned, retrained"] = retrain("prune", args.lr, weight_decay=0.01)
    remove_masks(model)
    cluster_model(model, args.bits, seed=args.seed)
    stages["clustered"] = score(model, data["test"], tokenizer.pad_id, world.device)
    stages["clustered, centroids retrained"] = retrain("centroids", args.centroid_lr, weight_decay=0.0)  # decay would pull centroids to 0
    report = compression_report(model, args.index_bits)

    options = {k: getattr(args, k) for k in ("sparsity", "scope", "bits", "index_bits", "epochs", "lr", "centroid_lr", "max_train_examples", "seed")}
    save_quantized(to_weight_only(model.cpu()), out, "deep_compression", options)
    tokenizer.save_pretrained(out)
    for stage in ("prune", "centroids"):
        shutil.move(out / stage / "metrics.jsonl", out / f"train_{stage}.jsonl")
        (out / stage).rmdir()
    result = {"source": str(model_dir), "options": options, "test": stages, "compression": report}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def score(model: nn.Module, examples, pad_id: int, device: torch.device, batch_size: int = 128) -> dict:
    """Accuracy, macro-F1 and loss of the model as it stands on `examples`."""
    model.eval()
    batches = ({k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()} for i in range(0, len(examples), batch_size))
    return Classification(len(model.labels)).evaluate(model, batches)
