"""A Llama-family decoder-only language model: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation
Language Models", section 2.2, on the Transformer decoder of Vaswani et al. 2017 (GPT: Radford et al. 2018).

Three changes to the original Transformer, each a small class here:
- pre-normalisation with RMSNorm (Zhang & Sennrich 2019, eq. 4): x / √(mean(x²) + ε) · g, no mean, no bias;
- the SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6): W_2 (SiLU(W_1 x) ⊙ W_3 x);
- rotary position embeddings (Su et al. 2021; rope.py) on the queries and keys instead of absolute positions;
plus grouped-query attention (Ainslie et al. 2023; attention.py), and the output layer tied to the embeddings.

    h_0 = E[x]
    a_l = h_{l-1} + Attention(RMSNorm(h_{l-1}))             causal: token t attends to tokens ≤ t
    h_l = a_l + SwiGLU(RMSNorm(a_l))
    logits = RMSNorm(h_L) Eᵀ                                 (tied; a separate lm_head when not)

Module names follow the encoder's (attention.query / key / value / out, ffn.up / down, plus ffn.gate), so the
LoRA paper's targets read `("query", "value")` on both models and every PEFT method and quantizer finds the
same names; io/llama.py maps them to `transformers`' (q_proj, …) and llama.cpp's (attn_q, …) names.

Masking: the bias added to the attention scores is 0 where query slot t may see key slot s (s ≤ t and s is not
padding) and the most negative float elsewhere (B, 1, T, S). With a KV cache (kv_cache.py) slots are cache
positions; without one, slot = position in the input. Positions for the rotary angles are `position_ids`, by
default the slots, as in `transformers`; generation passes each row's count of real tokens (left padding).

Packing (SFT, text/sft.py) puts several examples in one row. attention_mask then numbers them, 0 for padding:

    attention_mask  1 1 1 2 2 3 3 3 0 0      three examples and two padding slots
    position_ids    0 1 2 0 1 0 1 2 0 0      each example starts again at 0

and a token sees the earlier tokens of its own example only (a block-diagonal causal mask), so each example is
computed as if it were alone in its row. The usual 0/1 mask is the case of one example a row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..config import DecoderConfig
from .attention import SelfAttention
from .kv_cache import KVCache
from .rope import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    """x / √(mean(x²) + ε) · g over the last dimension, computed in float32 and cast back, as `transformers` does."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))  # g (H,)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # (…, H)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """W_down (SiLU(W_gate x) ⊙ W_up x): a gated FFN of width intermediate_size, no biases."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        H, F_ = config.hidden_size, config.intermediate_size
        self.gate, self.up, self.down = nn.Linear(H, F_, bias=False), nn.Linear(H, F_, bias=False), nn.Linear(F_, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (…, H) -> (…, F) -> (…, H)


class CausalSelfAttention(SelfAttention):
    """SelfAttention whose project step rotates q and k (rope.py) and, when decoding, writes K and V to the cache."""

    def __init__(self, config: DecoderConfig):
        super().__init__(config.hidden_size, config.num_heads, config.num_kv_heads, bias=False, dropout=config.attention_dropout, impl=config.attn_impl)

    def project(self, x, rotary, cache: KVCache | None = None, cache_position: torch.Tensor | None = None):
        """x (B, T, H) -> q (B, nh, T, hd) and k, v (B, nkv, T, hd), or every cache slot's (B, nkv, S, hd)."""
        q, k, v = super().project(x)
        cos, sin = rotary  # (B, 1, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(cache_position, k, v)
        return q, k, v

    def forward(self, x, bias, rotary, cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, rotary, cache, cache_position)
        return self.output(self.attend(q, k, v, bias))


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = CausalSelfAttention(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = SwiGLU(config)

    def forward(self, x, bias, rotary, cache: KVCache | None = None, cache_position=None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), bias, rotary, cache, cache_position)  # pre-norm residual
        return x + self.ffn(self.ffn_norm(x))


def causal_bias(attention_mask: torch.Tensor | None, cache_position: torch.Tensor, keys: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask (B, 1, T, S): 0 where query slot cache_position[t] may attend to key slot s, that is
    s ≤ cache_position[t] and attention_mask[b, s] = attention_mask[b, cache_position[t]] (the same example; a
    padding slot sees only padding, so no row is empty), and the most negative finite float elsewhere."""
    slots = torch.arange(keys, device=cache_position.device)  # (S,)
    allowed = slots[None, None, None, :] <= cache_position[None, None, :, None]  # (1, 1, T, S)
    if attention_mask is not None:
        key_ids = attention_mask[:, :keys]  # (B, S): 0 padding, k the k-th example of the row
        query_ids = key_ids[:, cache_position]  # (B, T)
        allowed = allowed & (key_ids[:, None, None, :] == query_ids[:, None, :, None])  # (B, 1, T, S)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=cache_position.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min).expand(batch, 1, -1, -1)


class Decoder(nn.Module):
    """Embedding, pre-norm decoder layers, final RMSNorm: input_ids (B, T) -> hidden states (B, T, H)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)
        self.gradient_checkpointing = False  # as Encoder.gradient_checkpointing: recompute each layer in backward
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """Llama's initialisation in `transformers`: N(0, 0.02) for every Linear and the embedding."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, caches=None, cache_position=None, inputs_embeds=None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, H). attention_mask: 1 = token, 0 = padding (or packed examples numbered 1, 2,
        …; module docstring), over the T inputs, or over the S cache slots when `caches` (kv_cache.make_caches) are
        given with the slots `cache_position` (T,) to write. position_ids (B, T): the rotary positions, by default
        the slots."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("give exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        B, T, _ = x.shape
        if cache_position is None:
            if caches is not None:
                raise InputError("decoding with caches needs cache_position, the slots the T new tokens take")
            cache_position = torch.arange(T, device=x.device)  # (T,)
        keys = T if caches is None else caches[0].k.size(2)
        if caches is None and T > self.config.max_position_embeddings:
            raise InputError(f"sequence length {T} exceeds max_position_embeddings {self.config.max_position_embeddings}; truncate the input")
        if position_ids is None:
            position_ids = cache_position[None].expand(B, T)  # (B, T)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = causal_bias(attention_mask, cache_position, keys, B, dtype)  # (B, 1, T, S)
        rotary = self.rotary(position_ids, dtype)  # cos, sin (B, 1, T, hd)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            cache = None if caches is None else caches[i]
            if recompute:
                x = checkpoint(layer, x, bias, rotary, cache, cache_position, use_reentrant=False)
            else:
                x = layer(x, bias, rotary, cache, cache_position)
        return self.norm(x)

    def input_embeddings(self) -> nn.Embedding:
        return self.embed
