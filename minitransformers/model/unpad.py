"""Padding removal: run the dense layers on real tokens only.

A padded batch (B, T) of which N positions are real tokens wastes (B·T − N)/(B·T) of every projection, FFN,
LayerNorm and dropout on padding. Everything in a transformer layer except attention acts on each token
alone, so those layers can run on the N real tokens packed into one (N, H) matrix; only attention needs to
know which tokens share a sequence. This is the idea of "ByteTransformer" (Zhai et al. 2023, section 4.1)
and of MosaicBERT (Portes et al. 2023, section 3.1), which pack once after the embeddings and unpack at the
end. Here attention re-pads its Q, K and V to (B, T, H), so that the same masked kernel (and its dropout)
serves both layouts; the padded and packed paths are held equal by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where the real tokens of a padded batch sit: `index` (N,) into the B·T flattened positions."""

    index: torch.Tensor  # (N,) int64, increasing
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Packing:
        """attention_mask (B, T) of 1 = token, 0 = padding."""
        B, T = attention_mask.shape
        return cls(attention_mask.flatten().nonzero().squeeze(1), B, T)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens, in order."""
        return SelectRows.apply(x.flatten(0, 1), self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), with zeros at the padding positions."""
        padded = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return padded.index_copy(0, self.index, x).view(self.batch, self.length, *x.shape[1:])


class SelectRows(torch.autograd.Function):
    """x[index] for x (M, ...) and an index of distinct rows (N,). Because no row is picked twice, the gradient
    is a plain scatter of the rows back into zeros; autograd's own backward for `index_select` cannot know
    that and sums with atomic adds, which on a GPU costs more than the rows saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)  # (N, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy_(0, index, grad), None  # (M, ...)
