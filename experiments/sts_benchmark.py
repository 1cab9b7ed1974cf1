"""STS benchmark with all-MiniLM-L6-v2: Spearman ρ × 100 between cosine similarity and gold scores.

The protocol of Reimers & Gurevych 2019 (Sentence-BERT, section 4.1): embed both sentences of every STS-B pair
(Cer et al. 2017) without fine-tuning on it, take the cosine similarity, and report Spearman's rank correlation
with the gold scores, × 100. When `transformers` is installed the same embeddings are also computed with
`transformers.BertModel` in the same run, as a side-by-side check.

    python experiments/sts_benchmark.py [--model data/minilm] [--device cpu]   # about 1 minute on the 2-core CPU machine (measured: see the report's wall time)

Writes runs/sts_benchmark/sts_benchmark.md; with --write-reference, experiments/results/ instead, the committed
report, which `make experiment` must not rewrite on every run. The last line printed is JSON: {"test": …, "dev": …}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from common import add_output_args, resolve_output, wall_time

from minitransformers import Encoder, Tokenizer
from minitransformers.metrics import spearman
from minitransformers.sentence import embed
from minitransformers.text.datasets import load_stsb
from minitransformers.text.sources import data_dir

RESULTS = Path(__file__).resolve().parent / "results"


def cosine_scores(encoder, tokenizer, pairs, batch_size) -> list[float]:
    a = embed(encoder, tokenizer, [p.text_a for p in pairs], batch_size, progress=True)
    b = embed(encoder, tokenizer, [p.text_b for p in pairs], batch_size, progress=True)
    return (a * b).sum(-1).tolist()  # unit vectors: the dot product is the cosine


class HFEncoder(torch.nn.Module):
    """transformers.BertModel behind our Encoder's call signature, so `embed` runs both."""

    def __init__(self, path):
        super().__init__()
        import transformers

        self.bert = transformers.BertModel.from_pretrained(path)
        self.config = self.bert.config

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options and `out`: runs/sts_benchmark unless --out names another folder; experiments/results, the
    committed report, only with --write-reference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an HF BERT folder (default: the fetched data/minilm)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    add_output_args(parser, "sts_benchmark")
    args = parser.parse_args(argv)
    return resolve_output(parser, args, "sts_benchmark", argv)


def main(argv: list[str] | None = None) -> dict:
    """Score every split, write the report into args.out, print it; -> {split: Spearman × 100 of ours}."""
    started = time.perf_counter()  # the whole run; `start` times each split and implementation
    args = parse_args(argv)
    model_dir = Path(args.model) if args.model else data_dir("minilm")

    tokenizer = Tokenizer.from_pretrained(model_dir)
    encoders = {"minitransformers": Encoder.from_pretrained(model_dir)}
    try:
        encoders["transformers"] = HFEncoder(model_dir)
    except ImportError:
        print("transformers is not installed: reporting minitransformers only")

    rows, result = [], {}
    for split in ("test", "dev"):
        pairs = load_stsb(split)
        gold = [p.score for p in pairs]
        for name, encoder in encoders.items():
            start = time.perf_counter()
            rho = 100 * spearman(cosine_scores(encoder.to(args.device), tokenizer, pairs, args.batch_size), gold)
            seconds = time.perf_counter() - start
            rows.append((split, len(pairs), name, rho, seconds))
            print(f"{split:>4}  {name:<16}  spearman x100 = {rho:.2f}  ({len(pairs)} pairs, {seconds:.1f} s)")
            if name == "minitransformers":
                result[split] = round(rho, 2)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})"
    lines = [
        "# STS benchmark: all-MiniLM-L6-v2, cosine similarity of mean-pooled embeddings",
        "",
        f"Command: `{args.command}`; torch {torch.__version__}; device: {device}; wall time {wall_time(time.perf_counter() - started)}.",
        f"Profile: model `{args.model or 'data/minilm'}` ({', '.join(encoders)}), STS-B test and dev in full, batch size {args.batch_size}, no fine-tuning on STS-B.",
        "Metric: Spearman ρ × 100 between cosine similarity and the gold score (Reimers & Gurevych 2019, §4.1).",
        "",
        "| split | pairs | implementation | Spearman × 100 | seconds |",
        "|---|---|---|---|---|",
        *[f"| {s} | {n} | {name} | {rho:.2f} | {sec:.1f} |" for s, n, name, rho, sec in rows],
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sts_benchmark.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
