"""Sparse replacements for nn.Linear: a pruned weight stored exactly, in as few bytes as it takes.

SparseLinear: a pruned weight (prune.py's magnitude or 2:4 masks) in the layout of fewest bytes that holds it exactly:

    dense   W as is                                             32 bits a weight (fp32)
    csr     row offsets, int32 column indices, the values        ≈ 64 · density bits: smaller below density 1/2
    2:4     the 2 kept values of each 4 inputs, (out, in / 2),   16 + 1 bits a weight; NVIDIA's sparse tensor cores
            and their places i < j as a 4-bit code 4 i + j       keep the same 2 × 2 bits (Mishra et al. 2021)

So 50% unstructured pruning stays dense and 2:4 takes 17 bits. dense and 2:4 multiply with F.linear over the dense
weight, equal to the masked layer exactly; csr with torch.sparse.mm, which pays off only when very sparse (on 2 CPU
cores, 1024 × 1024 and 128 tokens: as fast as dense at about 80% sparsity, 4× faster at 95%).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layer import QuantizedLinear, bias_entry, nbytes
from .pack import pack_int4, unpack_int4
from .prune import keep_largest, nm_mask


def csr_tensors(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compressed sparse rows: row i's nonzeros are values[crow[i]:crow[i + 1]], in columns col[crow[i]:crow[i + 1]]."""
    nonzero = w != 0  # (out, in)
    crow = F.pad(nonzero.sum(dim=1).cumsum(dim=0), (1, 0)).to(torch.int32)  # (out + 1,)
    col = nonzero.nonzero()[:, 1].to(torch.int32)  # (nnz,), row by row
    return {"crow_indices": crow, "col_indices": col, "values": w[nonzero]}  # w[nonzero]: the same row-major order


def is_two_four(w: torch.Tensor) -> bool:
    return w.shape[1] % 4 == 0 and bool(((w != 0).reshape(w.shape[0], -1, 4).sum(dim=-1) <= 2).all())


def two_four_tensors(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two kept values of each group of 4 inputs, and their places i < j as one 4-bit code 4 i + j."""
    out_features, in_features = w.shape
    groups = w.reshape(out_features, in_features // 4, 4)  # (out, in/4, 4)
    nonzero_first = (groups != 0).to(torch.int8).argsort(dim=-1, descending=True, stable=True)  # (out, in/4, 4)
    places = nonzero_first[..., :2].sort(dim=-1).values  # (out, in/4, 2): i < j, zeros kept where a group has < 2
    values = groups.gather(-1, places).reshape(out_features, in_features // 2)  # (out, in/2)
    return {"values": values, "patterns": pack_int4(places[..., 0] * 4 + places[..., 1])}  # patterns (out, in/8)


class SparseLinear(QuantizedLinear):
    """A pruned linear layer in the smallest exact layout: dense, csr or 2:4 (see the module docstring)."""

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return {"dense": ["weight"], "csr": ["crow_indices", "col_indices", "values"], "2:4": ["values", "patterns"]}[layout["format"]]

    def __init__(self, layout: dict, tensors: dict[str, torch.Tensor]):
        super().__init__(layout, tensors)
        if layout["format"] == "csr":  # check the indices once (a file may be corrupt), so forward can skip it
            torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, layout["shape"], check_invariants=True)

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias: torch.Tensor | None = None) -> SparseLinear:
        """The layout of fewest bytes that holds w exactly; on a tie, dense."""
        layouts = {"dense": {"weight": w}, "csr": csr_tensors(w)}
        if is_two_four(w):
            layouts["2:4"] = two_four_tensors(w)
        form = min(layouts, key=lambda name: nbytes(layouts[name].values()))
        return cls({"shape": list(w.shape), "format": form}, {**layouts[form], **bias_entry(bias)})

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, sparsity: float = 0.5, n_m: tuple[int, int] | None = None) -> SparseLinear:
        """Prune linear.weight: the smallest |w| at `sparsity` (Han et al.), or the N:M mask n_m=(2, 4) (Mishra et al.)."""
        w = linear.weight.detach()
        mask = nm_mask(w, *n_m) if n_m is not None else keep_largest(w.abs(), sparsity)
        return cls.from_weight(w * mask, linear.bias)

    def dense_weight(self) -> torch.Tensor:
        """W (out, in) with its zeros back in."""
        form = self.layout["format"]
        if form == "dense":
            return self.weight
        if form == "2:4":
            places = unpack_int4(self.patterns, self.in_features // 4).long()  # (out, in/4) codes 4 i + j
            places = torch.stack((places >> 2, places & 3), dim=-1)  # (out, in/4, 2)
            values = self.values.view(self.out_features, -1, 2)  # (out, in/4, 2)
            dense = values.new_zeros(self.out_features, self.in_features // 4, 4).scatter_(-1, places, values)  # (out, in/4, 4)
            return dense.view(self.out_features, self.in_features)
        rows = torch.arange(self.out_features, device=self.values.device).repeat_interleave(self.crow_indices.diff())  # (nnz,)
        return self.values.new_zeros(self.out_features, self.in_features).index_put_((rows, self.col_indices.long()), self.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.layout["format"] != "csr":
            return F.linear(x, self.dense_weight().to(x.dtype), bias)
        dtype = torch.promote_types(x.dtype, torch.float32)  # torch's CPU CSR matmul has no bf16 / fp16 kernels
        W = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values.to(dtype), self.layout["shape"], check_invariants=False)
        x2 = x.reshape(-1, self.in_features).to(dtype)  # (M, in)
        y = torch.sparse.mm(W, x2.t()).t()  # (out, in) @ (in, M) -> (out, M) -> (M, out)
        y = y if bias is None else y + bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
