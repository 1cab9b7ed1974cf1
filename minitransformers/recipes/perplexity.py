"""`python -m minitransformers perplexity`: a causal LM's perplexity on a text, computed as llama.cpp's
`llama-perplexity` tool computes it (examples/perplexity/perplexity.cpp, `perplexity()`).

The whole split is read as one text (the raw file, newlines and all) and tokenized once, without BOS. The tokens
are cut into non-overlapping windows of `context` tokens (a last partial window is dropped). Each window runs on
its own, from an empty context, and only the second half of its predictions is scored, so that every scored
token has at least context/2 tokens of context:

    window w = tokens[w·n … w·n + n − 1]                      n = context
    NLL_w    = − Σ_{j = n/2}^{n−2} log P(x_{j+1} | x_0 … x_j)       n/2 − 1 predictions (255 of 512)
    PPL      = exp( Σ_w NLL_w / (number of scored tokens) )

(llama.cpp also replaces each window's first token by BOS when the model adds one; SmolLM2's GGUF has
add_bos_token = False, so here no BOS is ever used.) Windows run `batch_size` at a time; with `max_chunks` only the
first K windows are scored, as llama.cpp's `--chunks K`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from ..text.datasets import decoded_lines
from ..text.sources import data_dir
from . import default_device
from .generate import load_language_model


@dataclass
class PerplexityConfig:
    """`perplexity`'s options: one field per flag, at the flag's default."""

    model: str  # a GGUF file, a folder holding one, or an HF Llama folder
    data: str = "wikitext2"
    split: str = "test"  # train | validation | test
    context: int = 512
    max_chunks: int = 0  # 0: every window
    batch_size: int = 8
    device: str = field(default_factory=default_device)
    dtype: str = "float32"


@torch.no_grad()
def window_nll(model: torch.nn.Module, ids: list[int], context: int, max_chunks: int = 0, batch_size: int = 8, device="cpu", progress: bool = True) -> dict:
    """Sum of the NLL of the scored predictions over the windows (see the module docstring), and their count."""
    if context < 4 or context % 2:
        raise InputError(f"context {context}: use an even number of tokens, at least 4")
    chunks = len(ids) // context
    if max_chunks:
        chunks = min(chunks, max_chunks)
    if chunks == 0:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one window of {context}")
    tokens = torch.tensor(ids[: chunks * context]).view(chunks, context)  # (W, n)
    first = context // 2
    total, count = 0.0, 0
    for start in tqdm(range(0, chunks, batch_size), desc="perplexity", unit="batch", disable=not progress):
        batch = tokens[start : start + batch_size].to(device)  # (b, n)
        logits = model(batch).float()  # (b, n, V)
        predicted = logits[:, first : context - 1]  # positions n/2 … n−2 predict tokens n/2 + 1 … n − 1
        targets = batch[:, first + 1 :]  # (b, n/2 − 1)
        total += F.cross_entropy(predicted.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return {"nll_sum": total, "tokens_scored": count, "chunks": chunks, "perplexity": math.exp(total / count)}


def split_text(data: str, split: str) -> str:
    """The raw text of a split: `wikitext2` reads data/wikitext2/{train,valid,test}.raw; any other value is a file."""
    if data == "wikitext2":
        name = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}.get(split)
        if name is None:
            raise InputError(f"unknown split {split!r} of wikitext2; use train, validation or test")
        path = data_dir("wikitext2") / f"{name}.raw"
    else:
        path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; fetch wikitext2 first (python -m minitransformers fetch wikitext2) or give a text file")
    text = "".join(decoded_lines(path)).replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines
    if not text.strip():
        raise InputError(f"{path}: no text to score; give a UTF-8 text file with at least one window of tokens")
    return text


def run(config: PerplexityConfig) -> dict:
    """Perplexity of the model on the split, as llama.cpp computes it (module docstring)."""
    model, tokenizer = load_language_model(config.model, config.device, config.dtype)
    ids = tokenizer.encode(split_text(config.data, config.split))
    result = window_nll(model, ids, config.context, config.max_chunks, config.batch_size, config.device)
    return {"perplexity": result["perplexity"], "tokens_scored": result["tokens_scored"], "chunks": result["chunks"],
            "tokens": len(ids), "context": config.context, "split": config.split}  # fmt: skip
