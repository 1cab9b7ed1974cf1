"""The key/value cache of autoregressive decoding, preallocated with a static shape (as gpt-fast's KVCache).

Generating token t needs the keys and values of every earlier token in every layer. Recomputing them costs a
full forward pass over the prefix at each step; keeping them costs memory:

    2 (K and V) · layers · batch · num_kv_heads · max_length · head_dim · bytes per element

(SmolLM2-135M, batch 1, 8192 positions, bf16: 2 · 30 · 3 · 8192 · 64 · 2 B = 189 MB; GQA's 3 K/V heads instead of
9 make it 3× smaller). Each layer's cache is two buffers (B, nkv, S, hd) allocated once; step t writes its K and
V at slot t (`cache_position`) and attention reads all S slots, the ones not yet written masked out. Shapes never
change between steps, so one decode step can be captured in a CUDA graph (torch.compile "reduce-overhead").

Slots are shared by the batch: with left padding, row b's real tokens start at a later slot, and the padding mask
(over slots) hides its empty ones; the rotary positions count real tokens only (decoder.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


class KVCache(nn.Module):
    """One layer's keys and values: `k`, `v` (B, nkv, S, hd), written in place at the given slots."""

    def __init__(self, batch: int, num_kv_heads: int, max_length: int, head_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (batch, num_kv_heads, max_length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, cache_position: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nkv, T, hd) at slots `cache_position` (T,); -> every slot's keys and values (B, nkv, S, hd)."""
        self.k.index_copy_(2, cache_position, k.to(self.k.dtype))
        self.v.index_copy_(2, cache_position, v.to(self.v.dtype))
        return self.k, self.v


def make_caches(config, batch: int, max_length: int, dtype: torch.dtype, device=None) -> nn.ModuleList:
    """One KVCache per layer of a decoder with `config` (a DecoderConfig), for `batch` rows of `max_length` slots."""
    if max_length > config.max_position_embeddings:
        raise InputError(f"a cache of {max_length} slots is longer than the model's {config.max_position_embeddings} positions; generate fewer tokens")
    return nn.ModuleList(KVCache(batch, config.num_kv_heads, max_length, config.head_dim, dtype, device) for _ in range(config.num_layers))
