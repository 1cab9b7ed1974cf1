"""What every quantized or sparse replacement for nn.Linear shares (qlinear.py, sparse.py): the weight stored as
named buffers plus a small JSON-able `layout`, from which `cls(layout, tensors)` rebuilds the layer, and the
byte counts that the size reports add up."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored as named buffers plus a JSON-able `layout`; the bias stays a float
    Parameter. `tensors` may hold "bias"; the others must be exactly `stored_names(layout)`."""

    def __init__(self, layout: dict, tensors: dict[str, torch.Tensor]):
        super().__init__()
        tensors = dict(tensors)
        bias = tensors.pop("bias", None)
        expected = set(self.stored_names(layout))
        if set(tensors) != expected:
            raise InputError(
                f"{type(self).__name__} with layout {layout} stores {sorted(expected)}, got {sorted(tensors)}; "
                "make the layer with from_linear, or load it with load_quantized"
            )
        self.layout = layout
        self.out_features, self.in_features = layout["shape"]
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.bias = None if bias is None else nn.Parameter(bias)

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        raise NotImplementedError

    @property
    def weight_nbytes(self) -> int:
        """The weight's real storage in bytes (bias excluded)."""
        return nbytes(self.buffers(recurse=False))

    @property
    def nbytes(self) -> int:
        return self.weight_nbytes + (0 if self.bias is None else nbytes([self.bias]))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_nbytes / (self.out_features * self.in_features)

    def extra_repr(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.layout.items() if k != "shape")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {details}"


def bias_entry(bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if bias is None else {"bias": bias.detach().clone()}
