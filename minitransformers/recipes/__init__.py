"""Recipes: each is a config dataclass and `run(config) -> dict`, the work behind one CLI command.

    finetune.py  FinetuneConfig: fine-tune an encoder with a classification head, in full or with a PEFT method
    pretrain.py  PretrainConfig: MLM pretraining from scratch on WikiText-2
    evaluate.py  EvaluateConfig: score a fine-tuned classifier folder on a split and time it; `load_model`
    quantize.py  QuantizeConfig: a fine-tuned classifier folder -> a quantized one
    compress.py  CompressConfig: Deep Compression's prune -> retrain -> cluster -> retrain pipeline

`cli.py` maps parsed arguments to these configs; experiments build the configs themselves.
"""

import torch


def default_device() -> str:
    """cuda if available, else cpu: every recipe's default device."""
    return "cuda" if torch.cuda.is_available() else "cpu"
