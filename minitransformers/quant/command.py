"""`python -m minitransformers quantize`: a fine-tuned classifier folder -> a quantized one, with its report.

Reads a whole-model folder (what `finetune --method full`, or `head` / `bitfit` merged, writes: an HF
BertForSequenceClassification folder), replaces its Linear layers (`quantize_model`), and writes the packed
model (`save_quantized`), its tokenizer, and `metrics.json` with the storage report: bits per weight, the
bytes of the quantized layers against fp32, the whole model's bytes and the folder's size on disk. Score it
with `python -m minitransformers evaluate --model OUT --data ...`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model import SequenceClassifier
from ..text.tokenizer import Tokenizer
from .qlinear import quantize_model
from .serialize import save_quantized


def quantize(args) -> dict:
    """Run from parsed `quantize` arguments; returns the report (also written to --out/metrics.json)."""
    model_dir, out = Path(args.model), Path(args.out)
    if (model_dir / "adapter.json").is_file():
        raise ValueError(f"{model_dir} holds an adapter, not a whole model; quantize the model it adapts, or a full fine-tune")
    model = SequenceClassifier.from_pretrained(model_dir).eval()
    options = {k: v for k, v in {"group_size": args.group_size, "double_quant": args.double_quant or None}.items() if v is not None}
    report = quantize_model(model, args.method, skip=tuple(args.skip), **options)
    save_quantized(model, out, args.method, options)
    Tokenizer.from_pretrained(model_dir).save_pretrained(out)
    report = {**report, "options": options, "source": str(model_dir), "folder_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
