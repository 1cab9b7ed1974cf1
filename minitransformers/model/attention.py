"""Multi-head self-attention, Vaswani et al. 2017, "Attention Is All You Need", section 3.2.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V                     (eq. 1, plus an additive mask M)
    MultiHead(X)       = Concat(head_1, …, head_h) W_O,  head_i = Attention(X W_Qi, X W_Ki, X W_Vi)

Two paths compute the same function and a test holds them equal:
  - "eager": the equation above written out, the path to read;
  - "sdpa":  `F.scaled_dot_product_attention`, which dispatches to fused (flash / memory-efficient) kernels.

The padding mask is additive: 0 where a key may be attended to and the most negative finite float where it
is padding (as BERT does). A finite value, not -inf, keeps a fully padded row finite: its softmax is uniform
over padding instead of 0/0 = NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from .unpad import Packing


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) mask of 1 = token, 0 = padding -> (B, 1, 1, T) additive bias, broadcast over heads and queries."""
    bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # (B, 1, 1, T)
    return bias


def eager_attention(q, k, v, bias, dropout_p: float, training: bool) -> torch.Tensor:
    """softmax(Q Kᵀ / √d + bias) V, written out. q, k, v: (B, nh, T, hd); bias: (B, 1, 1, T) or None."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    if bias is not None:
        scores = scores + bias
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=training)
    return probs @ v  # (B, nh, T, hd)


def sdpa_attention(q, k, v, bias, dropout_p: float, training: bool) -> torch.Tensor:
    """The same function through PyTorch's fused kernel."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)


ATTENTION = {"eager": eager_attention, "sdpa": sdpa_attention}


class SelfAttention(nn.Module):
    """Projections `query`, `key`, `value` (the names LoRA targets) and the output projection `out`.

    The forward pass is three steps, so that a method or a model family overrides only the one it changes:

        project(x)            x -> Q, K, V, split into heads       (rotary embeddings and a KV cache go here)
        attend(q, k, v, bias) softmax(Q Kᵀ / √d + bias) V           (prefix tuning prepends its keys and values here)
        output(y)             heads concatenated, then W_O

    Grouped-query attention (Ainslie et al. 2023, "GQA", section 2.2): with num_kv_heads < num_heads, K and V have
    num_kv_heads heads, each shared by num_heads / num_kv_heads query heads (`attend` repeats them). The encoder
    has num_kv_heads = num_heads, plain multi-head attention.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, bias: bool = True, dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads or num_heads
        self.head_dim = hidden_size // num_heads
        H, hd = hidden_size, self.head_dim
        self.query = nn.Linear(H, self.num_heads * hd, bias=bias)
        self.key = nn.Linear(H, self.num_kv_heads * hd, bias=bias)
        self.value = nn.Linear(H, self.num_kv_heads * hd, bias=bias)
        self.out = nn.Linear(self.num_heads * hd, H, bias=bias)
        self.dropout_p = dropout
        self.impl = impl

    @classmethod
    def for_encoder(cls, config: EncoderConfig) -> SelfAttention:
        return cls(config.hidden_size, config.num_heads, dropout=config.attention_dropout, impl=config.attn_impl)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)

    def project(self, x: torch.Tensor, packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, H), or (N, H) real tokens with their `packing` (unpad.py) -> q (B, nh, T, hd), k, v (B, nkv, T, hd)."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        if packing is not None:  # attention needs each sequence's tokens side by side: re-pad
            q, k, v = packing.unpack(q), packing.unpack(k), packing.unpack(v)  # (B, T, H)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, nh, T, hd)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """q (B, nh, T, hd), k, v (B, nkv, S, hd), bias broadcastable to (B, nh, T, S) -> (B, nh, T, hd)."""
        if k.size(1) != q.size(1):  # GQA: each K/V head serves a group of query heads
            group = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hd)
        return ATTENTION[self.impl](q, k, v, bias, self.dropout_p, self.training)

    def output(self, y: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """y (B, nh, T, hd) -> W_O Concat(heads): (B, T, H), or (N, H) real tokens with their `packing`."""
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, nh * hd)
        return self.out(y if packing is None else packing.pack(y))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, H), or (N, H) real tokens with their `packing` (unpad.py) -> the same shape."""
        q, k, v = self.project(x, packing)
        return self.output(self.attend(q, k, v, bias), packing)
