"""Autoregressive generation: one prefill over the prompt, then one-token decode steps over a static KV cache
(kv_cache.py), in the manner of gpt-fast's generate.py; the next token chosen as `transformers`' generate does.

    prefill:  logits = model(prompt, slots 0 … T−1)          fills every layer's cache with the prompt's K, V
    step i:   x_i ~ P(· | logits);  logits = model(x_i, slot T + i)

Choosing a token, in `transformers`' order (its LogitsProcessor list for do_sample=True):
  1. repetition penalty (Keskar et al. 2019, "CTRL", section 4.1): the logit of every token already in the
     sequence, prompt included, is divided by θ if positive and multiplied by θ if negative;
  2. temperature τ: logits / τ (τ = 0 means greedy: argmax, no sampling);
  3. top-k (Fan et al. 2018): keep the k largest logits;
  4. top-p, nucleus sampling (Holtzman et al. 2020, section 3.1): keep the smallest set of tokens whose
     probability sums to at least p (always at least one);
  5. sample from softmax of what is left, with `torch.multinomial`.
A row stops at its first stop token; later steps give it `pad_id`. Rows are left-padded, so that every row's
next token goes to the same cache slot; the rotary positions count each row's real tokens only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .kv_cache import make_caches


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    seed: int | None = None  # None: torch's global generator

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens is {self.max_new_tokens}; generate at least 1 token")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise InputError(f"temperature ≥ 0, top_k ≥ 0, 0 < top_p ≤ 1 and repetition_penalty > 0, got {self.temperature}, {self.top_k}, {self.top_p}, {self.repetition_penalty}")


def penalise_repetition(logits: torch.Tensor, seen: torch.Tensor, real: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); seen (B, N) the tokens so far, real (B, N) 1 where they are not padding -> logits with each
    seen token's logit divided by the penalty if positive, multiplied if negative (CTRL). Padding is not seen."""
    B, V = logits.shape
    present = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
    present.scatter_(1, seen.masked_fill(real == 0, V), True)  # padding goes to the extra column V, dropped below
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(present[:, :V], penalised, logits)


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = logits.topk(min(k, logits.size(-1))).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering as `transformers` computes it: sort ascending, drop the tokens whose cumulative
    probability stays ≤ 1 − p, never the most likely one."""
    sorted_logits, order = logits.sort(dim=-1)  # ascending (B, V)
    drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def next_token(logits: torch.Tensor, seen: torch.Tensor, real: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) of the last position; seen (B, N) the tokens so far, `real` 1 where not padding -> the next
    token of each row (B,)."""
    logits = logits.float()
    if config.repetition_penalty != 1.0:
        logits = penalise_repetition(logits, seen, real, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k:
        logits = keep_top_k(logits, config.top_k)
    if config.top_p < 1.0:
        logits = keep_top_p(logits, config.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, config: GenerationConfig = GenerationConfig()) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,), step by step (for streaming), until each row has stopped or
    max_new_tokens are out. input_ids (B, T), left-padded when rows differ in length (attention_mask 0 there)."""
    B, T = input_ids.shape
    device = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    caches = make_caches(model.config, B, T + config.max_new_tokens, dtype, device)
    slot_mask = torch.cat([mask, mask.new_ones(B, config.max_new_tokens)], dim=1)  # (B, S): the new tokens are real
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): each row counts its real tokens
    generator = None if config.seed is None else torch.Generator(device).manual_seed(config.seed)
    stops = torch.tensor(config.stop_ids, device=device, dtype=torch.long)
    slots = torch.arange(T, T + config.max_new_tokens, device=device)  # the decode steps' cache slots, made once
    seen, running = input_ids, torch.ones(B, dtype=torch.bool, device=device)
    logits = model(input_ids, slot_mask, positions, caches, torch.arange(T, device=device), logits_to_keep=1)[:, -1]  # (B, V)
    for step in range(config.max_new_tokens):
        token = next_token(logits, seen, slot_mask[:, : seen.size(1)], config, generator)  # (B,)
        token = torch.where(running, token, torch.full_like(token, config.pad_id))
        yield token
        if step == config.max_new_tokens - 1:
            return
        if stops.numel():  # reading `running` waits for the GPU: only when a row can stop
            running = running & ~torch.isin(token, stops)
            if not running.any():
                return
        if config.repetition_penalty != 1.0:  # the tokens so far, which only the penalty reads
            seen = torch.cat([seen, token[:, None]], dim=1)  # (B, N + 1)
        positions = positions[:, -1:] + 1  # (B, 1)
        logits = model(token[:, None], slot_mask, positions, caches, slots[step : step + 1], logits_to_keep=1)[:, -1]


def generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, config: GenerationConfig = GenerationConfig()) -> torch.Tensor:
    """The new tokens (B, N), N ≤ max_new_tokens; rows that stopped early are filled with pad_id."""
    return torch.stack(list(generate_tokens(model, input_ids, attention_mask, config)), dim=1)
