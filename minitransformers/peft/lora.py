"""LoRA, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models".

A pretrained weight W (out × in) stays frozen; its update is learned as a product of two thin matrices:

    h = W x + b + (α / r) · B A dropout(x)                      (section 4.1, eq. 3, with loralib's dropout)

                     h (…, out)
                         ▲
          ┌─────────────(+)─────────────┐
          │                             │ × α/r
   ┌──────┴──────┐               ┌──────┴──────┐
   │             │               │  B  out × r │  zeros at the start
   │ W  out × in │               └──────▲──────┘
   │   frozen    │               ┌──────┴──────┐
   │             │               │  A  r × in  │  kaiming-uniform
   └──────▲──────┘               └──────▲──────┘
          │                             │ dropout
          └──────────────┬──────────────┘
                     x (…, in)

- Rank r ≪ min(in, out): r · (in + out) trainable numbers per matrix instead of in · out.
- B = 0 at the start, so B A = 0 and the adapted model is exactly the pretrained one; training moves away
  from it smoothly. A is initialised as nn.Linear initialises its weight (kaiming-uniform, a = √5), as in
  the reference code (microsoft/LoRA's loralib, and peft).
- α / r scales the update so that changing r needs no retuning of the learning rate (section 4.1).
- The paper's defaults: adapt only the attention projections W_q and W_v (section 4.2; section 7.1, Table 5
  shows them best for a fixed budget), rank r = 8 on GLUE (appendix D); the released RoBERTa-large scripts
  (microsoft/LoRA, examples/NLU) pair it with α = 16. Here: `targets=("query", "value")`, r=8, alpha=16.
- Merge (section 4.1, "No Additional Inference Latency"): W' = W + (α / r) B A is a plain matrix of W's
  shape, so the merged layer costs one matmul, exactly as the base did. Unmerge subtracts it again.

The model is wrapped, not forked: `add_lora` swaps chosen nn.Linear modules for `LoRALinear`, which keeps
the original layer as `base` (its weights become `….base.weight`), and freezes all but LoRA and the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .common import PEFTModule, adaptable_linears, attach, base_requires_grad, detach, mark_only_trainable, refuse_stacking


@dataclass
class LoRAConfig:
    """`add_lora`'s options, at the paper's defaults: rank 8, α 16, W_q and W_v (see the module docstring)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")


class LoRALinear(PEFTModule, nn.Module):
    """An nn.Linear plus the low-rank update (α / r) B A, which `merge` folds into the weight."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise InputError(f"LoRA rank r must be a positive integer, got {r}")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))  # A (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))  # B (out, r): 0, so B A = 0 at the start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.enabled:
            return self.base(x)  # merged: F.linear(x, W + (α/r) B A, b), one matmul; disabled: the base layer
        h = self.base(x)  # W x + b: (…, in) -> (…, out)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # B A x: (…, in) -> (…, r) -> (…, out)
        return h + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A  # (out, r) @ (r, in) -> (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (α / r) B A. Merging twice would add the update twice, so it is refused."""
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged; merging again would add (α/r) B A twice")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (α / r) B A: the base weight back, up to rounding."""
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged; nothing to unmerge")
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def is_lora(name: str) -> bool:
    """Is this parameter name one of LoRA's A or B matrices?"""
    return "lora_" in name


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def matches(name: str, targets) -> bool:
    """peft's rule for a module name: equal to a target, or ending with "." + a target."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def wrap_linears(model: nn.Module, r: int, alpha: float, dropout: float, targets) -> list[str]:
    """Wrap each adaptable nn.Linear (common.adaptable_linears: not a module to save, not tied) whose name ends
    with one of `targets` in a LoRALinear, in place. -> the wrapped names."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    chosen = [n for n in adaptable_linears(model) if matches(n, targets)]
    if not chosen:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise InputError(f"no nn.Linear module name ends with one of the targets {targets} (modules to save and tied weights excepted); the Linear modules are {linear[:8]}…")
    for name in chosen:
        model.set_submodule(name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return chosen


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0, targets=("query", "value")) -> nn.Module:
    """Wrap each nn.Linear whose name ends with one of `targets` (never a module to save, which trains in full,
    nor a tied weight) in a LoRALinear, then freeze everything but LoRA's A, B and the modules to save.
    Returns the model."""
    refuse_stacking(model, "lora")
    frozen = base_requires_grad(model)
    wrap_linears(model, r, alpha, dropout, targets)
    attach(model, "lora", frozen)
    return mark_only_trainable(model, is_lora)


def unwrap_linears(model: nn.Module, merge: bool) -> nn.Module:
    """Put every LoRALinear's base layer back, folding (α / r) B A into it first with `merge`, else unmerging
    any merged layer."""
    for name, layer in lora_layers(model).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        model.set_submodule(name, layer.base)
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """The base model back (peft's `unload`): every LoRALinear replaced by the nn.Linear it wraps, unchanged
    bit for bit unless it was merged (then W − (α / r) B A, up to rounding)."""
    return detach(unwrap_linears(model, merge=False), "lora")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight and put the plain nn.Linear back (peft's `merge_and_unload`),
    so the model has its original layout again and `save_pretrained` writes an ordinary HF folder."""
    return detach(unwrap_linears(model, merge=True), "lora")
