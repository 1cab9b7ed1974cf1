"""STS benchmark with all-MiniLM-L6-v2: Spearman ρ × 100 between cosine similarity and gold scores.

The protocol of Reimers & Gurevych 2019 (Sentence-BERT, section 4.1): embed both sentences of every STS-B pair
(Cer et al. 2017) without fine-tuning on it, take the cosine similarity, and report Spearman's rank correlation
with the gold scores, × 100. When `transformers` is installed the same embeddings are also computed with
`transformers.BertModel` in the same run, as a side-by-side check.

    python experiments/sts_benchmark.py [--model data/minilm] [--device cpu]

Writes experiments/results/sts_benchmark.md; the last line printed is JSON: {"test": …, "dev": …}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an HF BERT folder (default: the fetched data/minilm)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
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
        f"Command: `python experiments/sts_benchmark.py`. Device: {device}, torch {torch.__version__}.",
        "Metric: Spearman ρ × 100 between cosine similarity and the gold score (Reimers & Gurevych 2019, §4.1).",
        "",
        "| split | pairs | implementation | Spearman × 100 | seconds |",
        "|---|---|---|---|---|",
        *[f"| {s} | {n} | {name} | {rho:.2f} | {sec:.1f} |" for s, n, name, rho, sec in rows],
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sts_benchmark.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULTS / 'sts_benchmark.md'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
