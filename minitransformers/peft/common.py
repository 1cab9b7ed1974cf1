"""What every parameter-efficient method shares: freezing the base, and counting what trains.

Each method (lora.py, adapters.py, prompts.py, bitfit.py) adds or selects a small set of parameters and
freezes the rest. The task head is new for the task, so it always trains: peft calls it `modules_to_save`.
For a `SequenceClassifier` that is `classifier` (and `encoder.pooler` when the head pools with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

HEAD = ("classifier",)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The prefixes of the task head's parameters: the classifier, plus BERT's pooler when it is used."""
    if getattr(model, "pooling", None) == "pooler":
        return (*HEAD, "encoder.pooler")
    return HEAD


def mark_only_trainable(model: nn.Module, trainable: Callable[[str], bool] | Iterable[str] = (), train_head: bool = True) -> nn.Module:
    """Freeze every parameter except those `trainable` selects (a predicate on the name, or name substrings)
    and, with `train_head`, the task head. Returns the model."""
    if not callable(trainable):
        parts = tuple(trainable)
        trainable = lambda name: any(part in name for part in parts)  # noqa: E731
    head = head_names(model) if train_head else ()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name) or name.startswith(head))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (each shared tensor once), only those with requires_grad by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_summary(model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 22,713,216 || trainable%: 0.0054', as peft prints it."""
    trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what trains (the method's parameters and the head): what a parameter-efficient run saves."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a `trainable_state_dict` onto a base prepared the same way; the names must match exactly."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if missing := expected - state.keys():
        raise KeyError(f"the saved state lacks {sorted(missing)[:5]}; was the model prepared with the same method and options?")
    if unexpected := state.keys() - expected:
        raise KeyError(f"the saved state has {sorted(unexpected)[:5]}, which this model does not train")
    model.load_state_dict(state, strict=False)
    return model
