"""`python -m minitransformers quantize`: a fine-tuned classifier folder -> a quantized one, with its report.

Reads a whole-model folder (what `finetune --method full`, or `head` / `bitfit` merged, writes: an HF
BertForSequenceClassification folder), replaces its Linear layers (`quantize_model`), and writes the packed
model (`save_quantized`), its tokenizer, and `metrics.json` with the storage report: bits per weight, the
bytes of the quantized layers against fp32, the whole model's bytes and the folder's size on disk. Score it
with `python -m minitransformers evaluate --model OUT --data ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.manifest import publish
from ..model import SequenceClassifier
from ..quant.qlinear import quantize_model
from ..quant.serialize import save_quantized
from ..text.tokenizer import Tokenizer
from .outputs import check_out, identity, write_json


@dataclass
class QuantizeConfig:
    """`quantize`'s options: one field per flag, at the flag's default."""

    model: str  # a whole-model classifier folder
    method: str  # one of quant.qlinear.METHODS
    out: str  # the folder for the quantized model
    skip: tuple[str, ...] = ("classifier",)  # Linear layers whose dotted name has one of these parts stay fp32
    group_size: int | None = None  # int4: inputs per scale (None: quantize_model's default, 128)
    double_quant: bool = False  # nf4, fp4: quantize the absmax too


def run(config: QuantizeConfig) -> dict:
    """Quantize as `config` says; returns the report (also written to OUT/metrics.json)."""
    model_dir, out = Path(config.model), check_out(config.out, {"--model": config.model})
    if (model_dir / "adapter.json").is_file():
        raise InputError(f"{model_dir} holds an adapter, not a whole model; quantize the model it adapts, or a full fine-tune")
    model = SequenceClassifier.from_pretrained(model_dir).eval()
    options = {k: v for k, v in {"group_size": config.group_size, "double_quant": config.double_quant or None}.items() if v is not None}
    report = quantize_model(model, config.method, skip=tuple(config.skip), **options)
    with publish(out, derived_from=identity(model_dir)) as stage:
        save_quantized(model, stage, config.method, options)
        Tokenizer.from_pretrained(model_dir).save_pretrained(stage)
    report = {**report, "options": options, "source": str(model_dir), "folder_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))}
    write_json(out, "metrics.json", report)
    return report
