"""Pooling: from per-token hidden states (B, T, H) to one vector per sequence (B, H).

- CLS pooling takes the first token's state (Devlin et al. 2019, section 3: "[CLS] ... used as the
  aggregate sequence representation for classification tasks").
- BERT's pooler is tanh(W h_CLS + b), the layer trained by next-sentence prediction; `transformers`
  calls it `pooler.dense`.
- Mean pooling averages the states of real (non-padding) tokens. Sentence-BERT (Reimers & Gurevych 2019,
  section 3) found it the best of the three for sentence embeddings; all-MiniLM-L6-v2 is trained with it
  and then L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLING = ("cls", "mean", "pooler")


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]  # (B, H)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the hidden states over real tokens. hidden (B, T, H), attention_mask (B, T) of 0/1."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, H)


def sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sentence-BERT's embedding: mean pooling, then L2 normalisation, so a dot product is a cosine."""
    return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(h_CLS))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_pool(hidden)))  # (B, H)


def pool(hidden, attention_mask, kind: str, pooler: Pooler | None = None) -> torch.Tensor:
    """One entry point for the three kinds of pooling, as a classifier head selects them."""
    if kind == "cls":
        return cls_pool(hidden)
    if kind == "mean":
        return mean_pool(hidden, attention_mask)
    if kind == "pooler":
        if pooler is None:
            raise ValueError("pooling 'pooler' needs BERT's pooler weights, and this encoder has none")
        return pooler(hidden)
    raise ValueError(f"unknown pooling {kind!r}; use one of {POOLING}")
