"""Rotary position embeddings: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding",
section 3.4.2, eq. 34.

Each pair of dimensions of a query or key at position m is rotated by the angle m·θ_i, θ_i = base^(−2i/d),
i = 0 … d/2 − 1, so that q_m · k_n depends on the positions only through m − n:

    RoPE(x, m) = x ⊙ cos(m θ) + rotate_half(x) ⊙ sin(m θ)

The layout is the "rotate half" one of GPT-NeoX and of `transformers`' Llama: dimension i is paired with
i + d/2 (not with i + 1, as the paper's eq. 34 interleaves them), so that

    rotate_half([x_1, x_2]) = [−x_2, x_1]        x_1 = x[..., :d/2],  x_2 = x[..., d/2:]
    cos(m θ), sin(m θ) = the d/2 angles, repeated twice: [m θ_0 … m θ_{d/2−1}, m θ_0 … m θ_{d/2−1}]

A checkpoint converted from Meta's interleaved layout has its query and key rows permuted to match (that is
the permutation io/llama.py undoes for GGUF files). The angles are computed once, in float32, for every position
up to max_positions (as `transformers` computes them: θ_i first, then m · θ_i), and looked up per token.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., d/2) each
    return torch.cat([-x2, x1], dim=-1)  # (..., d)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, d); cos, sin (B, 1, T, d) -> x rotated, in x's dtype."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """The cos and sin of every position's angles, (max_positions, d) each, as non-persistent buffers."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # θ_i (d/2,)
        angles = torch.arange(max_positions, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # m θ_i (P, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, d): the rotate-half layout
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, 1, T, d) in `dtype`, broadcast over heads. No bounds check here
        (it would synchronise with the GPU at every step): the decoder checks lengths before it gets here."""
        return self.cos[position_ids][:, None].to(dtype), self.sin[position_ids][:, None].to(dtype)
