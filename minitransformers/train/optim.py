"""AdamW with BERT's weight-decay groups, and a warmup-then-decay learning-rate schedule.

AdamW (Loshchilov & Hutter 2019) decays weights directly, θ ← θ − lr·(m̂/(√v̂+ε) + λθ), instead of adding λθ
to the gradient. BERT (Devlin et al. 2019, appendix A.2) exempts biases and LayerNorm parameters from the
decay and warms the learning rate up linearly, then decays it linearly to 0:

    lr(t) = lr · t / w                         for t < w        (warmup)
    lr(t) = lr · (T − t) / (T − w)             linear decay
    lr(t) = lr · ½ (1 + cos(π (t − w)/(T − w)))  cosine decay (Loshchilov & Hutter 2017, SGDR)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm weights (all 1-D tensors) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.01, fused: bool = False) -> torch.optim.AdamW:
    """fused=True runs the whole update as one CUDA kernel per parameter group (the fast path)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def warmup_decay(step: int, warmup: int, total: int, kind: str = "linear") -> float:
    """The multiplier of the base learning rate at `step` (0-based, before the step is taken)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise InputError(f"unknown schedule {kind!r}; use 'linear' or 'cosine'")


def schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, kind: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    warmup_decay(warmup, warmup, total, kind)  # fail now, not at the first step, on an unknown kind
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_decay(step, warmup, total, kind))
