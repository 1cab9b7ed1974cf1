"""Sentence embeddings and semantic search, Reimers & Gurevych 2019, "Sentence-BERT".

    u = normalize(mean_{t : mask_t = 1} h_t)          (mean pooling over real tokens, section 3)
    sim(a, b) = cos(u_a, u_b) = u_a · u_b              (after L2 normalisation, a dot product)

Texts are embedded in batches sorted by length, so a batch pads to similar lengths, then put back in order.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .model import Encoder, sentence_embedding
from .text.tokenizer import Tokenizer

# all-MiniLM-L6-v2 was trained with sequences of at most 256 tokens (its sentence_bert_config.json).
MAX_LENGTH = 256


@torch.no_grad()
def embed(
    encoder: Encoder,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = MAX_LENGTH,
    progress: bool = False,
) -> torch.Tensor:
    """texts -> (N, H) unit-norm embeddings, on the encoder's device, in the order of `texts`."""
    encoder.eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = torch.empty(len(texts), encoder.config.hidden_size, device=device)
    for chunk in tqdm(chunks, desc="embed", unit="batch", disable=not progress):
        batch = {k: v.to(device) for k, v in tokenizer([texts[i] for i in chunk], max_length=max_length).items()}
        out[chunk] = sentence_embedding(encoder(**batch), batch["attention_mask"]).float()
    return out


def search(query: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k. query (Q, H) and corpus (N, H), both unit-norm -> scores and indices, each (Q, k)."""
    scores = query @ corpus.T  # (Q, N)
    return scores.topk(min(k, corpus.size(0)), dim=-1)
