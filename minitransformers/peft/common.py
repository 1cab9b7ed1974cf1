"""What every parameter-efficient method shares: what the task model declares, freezing, counting, and the lifecycle.

The task model says what always trains and what is tied (model/heads.py, model/mlm.py):
- `modules_to_save` (peft's name): the modules that train in full whatever the method, such as a new head;
- `tied_weights`: parameters used by two modules (alias -> owner), such as an LM head tied to the embeddings.
PEFT reads only these: no method wraps, quantizes or unties a tied weight, and a module to save is never adapted.

The lifecycle of every method (lora.py, qlora.py, adapters.py, prompts.py, bitfit.py), as in peft:

    add_X(model, …)      insert or select the method's parameters; freeze the rest (`attach` records it)
    set_enabled(model, False) / disabled(model)   compute what the base computes; True gives the adapted model back
    remove_X(model)      the base model back, its state dict and requires_grad flags bit for bit
    merge_X(model)       fold the method into the base weights, where the paper defines a merge

Methods do not stack: a second add_X on a prepared model is refused (`refuse_stacking`), since each method
freezes everything but its own parameters and would silently re-freeze what the first one opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import InputError
from ..quant.layer import QuantizedLinear


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The prefixes of the modules that always train, as the task model declares them (none for a bare encoder)."""
    return tuple(getattr(model, "modules_to_save", ()))


def tied_names(model: nn.Module) -> set[str]:
    """Every parameter name the task model declares tied, alias and owner alike."""
    tied = getattr(model, "tied_weights", {})
    return set(tied) | set(tied.values())


def in_head(name: str, head: tuple[str, ...]) -> bool:
    """Is the module or parameter `name` inside one of the `head` modules (whole dotted parts only)?"""
    return any(name == h or name.startswith(f"{h}.") for h in head)


def adaptable_linears(model: nn.Module) -> list[str]:
    """The nn.Linear modules a method may wrap or quantize: outside the modules to save, their weight not tied."""
    head, tied = head_names(model), tied_names(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not in_head(n, head) and f"{n}.weight" not in tied]


def mark_only_trainable(model: nn.Module, trainable: Callable[[str], bool] | Iterable[str] = (), train_head: bool = True) -> nn.Module:
    """Freeze every parameter except those `trainable` selects (a predicate on the name, or name substrings)
    and, with `train_head`, the modules to save. Returns the model."""
    if not callable(trainable):
        parts = tuple(trainable)
        trainable = lambda name: any(part in name for part in parts)  # noqa: E731
    head = head_names(model) if train_head else ()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name) or in_head(name, head))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (each shared tensor once), only those with requires_grad by default.

    A quantized layer (any QuantizedLinear: QLoRA's NF4Linear, WeightOnlyLinear, W8A8Linear) stores its weight
    as packed buffers, which are not Parameters; it counts its logical out_features × in_features weights,
    frozen, as peft counts a bitsandbytes 4-bit weight. So quantizing a model leaves its total unchanged."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if trainable_only:
        return params  # a quantized weight never trains
    return params + sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, QuantizedLinear))


def parameter_summary(model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 22,713,216 || trainable%: 0.0054', as peft prints it; a
    quantized weight counts its logical parameters (count_parameters)."""
    trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what trains (the method's parameters and the head): what a parameter-efficient run saves."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source="the saved state") -> nn.Module:
    """Load a `trainable_state_dict` onto a base prepared the same way; the names and shapes must match exactly.
    An InputError names `source` (the file the state came from) and the names that differ."""
    if merged := [n for n, m in model.named_modules() if getattr(m, "merged", False)]:
        raise RuntimeError(f"layers {merged[:3]} are merged: new weights would leave the old update inside W; unmerge them first")
    expected = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if missing := expected.keys() - state.keys():
        raise InputError(f"{source} lacks {sorted(missing)[:5]}; was the model prepared with the same method and options?")
    if unexpected := state.keys() - expected.keys():
        raise InputError(f"{source} has {sorted(unexpected)[:5]}, which this model does not train")
    if wrong := [f"{k}: saved {tuple(state[k].shape)}, model {tuple(p.shape)}" for k, p in expected.items() if state[k].shape != p.shape]:
        raise InputError(f"{source} has mis-shaped tensors {wrong[:5]}; was the model prepared with the same method and options?")
    model.load_state_dict(state, strict=False)
    return model


# --- the lifecycle ----------------------------------------------------------------------------------------------


class PEFTModule:
    """Marks a module that a method inserted. With `enabled = False` it computes what the base computed."""

    enabled: bool = True


def set_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every inserted module of the model's method on or off (peft's enable/disable_adapter_layers)."""
    for module in model.modules():
        if isinstance(module, PEFTModule):
            module.enabled = enabled
    return model


@contextlib.contextmanager
def disabled(model: nn.Module):
    """`with disabled(model):` the base model's outputs; the method is on again afterwards (peft's disable_adapter)."""
    set_enabled(model, False)
    try:
        yield model
    finally:
        set_enabled(model, True)


def attached(model: nn.Module) -> str | None:
    """The method the model was prepared with, or None."""
    return getattr(model, "peft_method", None)


def refuse_stacking(model: nn.Module, method: str) -> None:
    """Raise, naming what was found and the fix, when `model` already carries a method."""
    found = attached(model)
    inserted = sorted({type(m).__name__ for m in model.modules() if isinstance(m, PEFTModule) and not isinstance(m, TrainedInPlace)})
    if not (found or inserted):
        return
    what = f"{type(model).__name__} prepared with {found or 'a parameter-efficient method'}" + (f" ({', '.join(inserted)})" if inserted else "")
    fix = f"call remove_{found}(model) first" if found else "remove those modules first"
    if found == "lora":
        fix += ", or merge_lora(model) to keep LoRA's update in the weights"
    raise InputError(f"cannot add {method}: expected a base model without a parameter-efficient method, found {what}; "
                     f"methods do not stack. Start from a fresh base model, or {fix}")


class TrainedInPlace(PEFTModule, nn.Module):
    """The pretrained values of the base parameters a method trains in place (BitFit's biases, Houlsby's
    LayerNorms), which exist nowhere else once training moves them. `enabled = False` swaps them into the
    model's Parameters (and the trained values out); True swaps back. The copies are non-persistent buffers:
    they follow the model across devices but are not part of its state dict."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self.names = list(params)
        object.__setattr__(self, "params", list(params.values()))  # the model's own Parameters, not registered twice
        for i, p in enumerate(self.params):
            self.register_buffer(f"pretrained_{i}", p.detach().clone(), persistent=False)
        self._enabled = True

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    @torch.no_grad()
    def enabled(self, on: bool) -> None:
        if on != self._enabled:
            for i, p in enumerate(self.params):
                kept = getattr(self, f"pretrained_{i}")
                trained = p.detach().clone()
                p.copy_(kept)
                kept.copy_(trained)
            self._enabled = on


def attach(model: nn.Module, method: str, frozen: dict[str, bool], in_place: dict[str, nn.Parameter] | None = None) -> None:
    """Record on the model which method prepared it, the requires_grad flags of its base before (`frozen`), and
    the pretrained values of the base parameters it will train `in_place`."""
    model.peft_method, model.peft_base_requires_grad = method, frozen
    if in_place:
        model.peft_trained_in_place = TrainedInPlace(in_place)


def base_requires_grad(model: nn.Module) -> dict[str, bool]:
    """The requires_grad flag of every parameter, to give back at removal."""
    return {name: p.requires_grad for name, p in model.named_parameters()}


def detach(model: nn.Module, method: str) -> nn.Module:
    """The last step of every remove_X: check the method, put back the pretrained values of what it trained in
    place and the base's requires_grad flags, and forget it."""
    if attached(model) != method:
        raise InputError(f"remove_{method}: expected a model prepared with {method}, found {attached(model) or 'none'}")
    if hasattr(model, "peft_trained_in_place"):
        model.peft_trained_in_place.enabled = False
        del model.peft_trained_in_place
    flags = model.peft_base_requires_grad
    for name, p in model.named_parameters():
        p.requires_grad_(flags[name])
    del model.peft_method, model.peft_base_requires_grad
    return model
