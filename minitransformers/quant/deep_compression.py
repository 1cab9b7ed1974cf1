"""Deep Compression, Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding" (ICLR): the three stages, and what each saves in storage.

    dense fp32 ──prune + retrain──▶ sparse (section 2) ──cluster + retrain centroids──▶ shared weights (section 3)
               ──Huffman──▶ entropy-coded codes and index gaps (section 4)

1. Pruning (prune.py): the smallest-magnitude weights are set to 0, then the network retrains with the mask
   fixed. A sparse layer is stored as its nonzero entries, each with the gap to the previous entry in
   `index_bits` bits (section 2, Figure 2: "relative index", 5 bits for AlexNet's fully connected layers).
   A gap d larger than 2^r needs filler entries of value 0: an entry every 2^r positions, so
   ⌈d / 2^r⌉ entries in all. Positions run row-major over the (out, in) weight.
2. Trained quantization (kmeans.py, keep_zero=True): the surviving weights of a layer share 2^b − 1
   centroids, code 0 stands for the zeros (and the fillers); then the centroids are fine-tuned, each by the
   sum of its weights' gradients (eq. 3), the codes fixed.
3. Huffman coding: the stream of codes and the stream of index gaps are each coded with a Huffman code of
   their own measured frequencies (section 4: "saves 20% − 30% of network storage"). The size is the sum over
   symbols of count × code length; the code tables themselves (at most 2^b and 2^r entries) are left out.

Bits of one layer with n weights, E stored entries (nonzeros + fillers), b-bit codes and r-bit gaps:

    dense     32 n
    pruned    E (32 + r)                     fp32 values with their relative indices
    quantized E (b + r) + 32 · 2^b           + the fp32 codebook
    Huffman   H(codes) + H(gaps) + 32 · 2^b  H: the length of the Huffman-coded stream

and the compression ratio of each stage is dense / its bits, as in the paper's Table 1 (35× for AlexNet,
49× for VGG-16). The packed model that `save_quantized` writes keeps dense 4-bit codes (WeightOnlyLinear's
kmeans layout) so it runs as is; the sparse and Huffman sizes are what the paper's storage format would take.
"""

from __future__ import annotations

import heapq

import torch
from torch import nn

from ..errors import InputError
from .kmeans import ClusteredLinear
from .prune import SKIP, skipped
from .qlinear import WeightOnlyLinear


def relative_index(codes: torch.Tensor, index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 2's stream of a clustered sparse weight: the code and the gap (1 … 2^r) of every stored entry,
    fillers included. codes: the weight's codes, 0 where the weight is 0. -> (stored codes (E,), gaps (E,))"""
    if not 1 <= index_bits <= 16:
        raise InputError(f"index_bits must be from 1 to 16 (the paper uses 5 for fully connected layers), got {index_bits}")
    flat = codes.flatten().long()  # (n,)
    position = flat.nonzero().squeeze(1)  # (nnz,)
    gaps = position.diff(prepend=position.new_tensor([-1]))  # (nnz,): each ≥ 1, from the position before the first
    span = 2**index_bits
    fillers = (gaps - 1) // span  # (nnz,): a filler every 2^r positions of a longer gap
    own = (fillers + 1).cumsum(0) - 1  # (nnz,): where each nonzero's entry falls in the stream, after its fillers
    entries = int(own[-1]) + 1 if own.numel() else 0
    stored, gap_stream = flat.new_zeros(entries), flat.new_full((entries,), span)  # fillers: code 0, gap 2^r
    stored[own], gap_stream[own] = flat[position], gaps - fillers * span  # each gap in 1 … 2^r
    return stored, gap_stream


def huffman_bits(symbols: torch.Tensor) -> int:
    """The length in bits of `symbols` Huffman-coded with their own frequencies. Each merge of the two least
    frequent subtrees adds one bit to every symbol below it, so the total is the sum of the merged counts."""
    counts = torch.unique(symbols, return_counts=True)[1].tolist()
    if len(counts) == 1:
        return counts[0]  # a single symbol still takes one bit each
    heapq.heapify(counts)
    total = 0
    while len(counts) > 1:
        merged = heapq.heappop(counts) + heapq.heappop(counts)
        total += merged
        heapq.heappush(counts, merged)
    return total


def layer_storage(layer: ClusteredLinear, index_bits: int = 5) -> dict[str, int]:
    """The bits of one clustered, pruned layer at each stage (the table in the module docstring)."""
    stored, gaps = relative_index(layer.codes, index_bits)
    codebook = 32 * 2**layer.bits
    entries = stored.numel()
    return {
        "weights": layer.codes.numel(),
        "nonzero": int((layer.codes != 0).sum()),
        "entries": entries,
        "dense": 32 * layer.codes.numel(),
        "pruned": entries * (32 + index_bits),
        "quantized": entries * (layer.bits + index_bits) + codebook,
        "huffman": huffman_bits(stored) + huffman_bits(gaps) + codebook,
    }


def compression_report(model: nn.Module, index_bits: int = 5) -> dict:
    """`layer_storage` of every ClusteredLinear and their totals, with each stage's compression ratio."""
    layers = {name: layer_storage(m, index_bits) for name, m in model.named_modules() if isinstance(m, ClusteredLinear)}
    if not layers:
        raise InputError("the model has no ClusteredLinear layers; run cluster_model on it first")
    total = {key: sum(row[key] for row in layers.values()) for key in next(iter(layers.values()))}
    ratios = {stage: total["dense"] / total[stage] for stage in ("pruned", "quantized", "huffman")}
    return {"index_bits": index_bits, "layers": layers, "total": total, "ratio": ratios, "density": total["nonzero"] / total["weights"]}


def cluster_model(model: nn.Module, bits: int = 4, skip=SKIP, **kmeans) -> list[str]:
    """Stage 2's start: swap every nn.Linear not in `skip` for a ClusteredLinear (keep_zero: its zeros stay 0)
    and freeze everything but the centroids. Returns the names of the clustered layers."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(f"{name}.weight", skip)]
    for p in model.parameters():
        p.requires_grad_(False)  # the biases too: ClusteredLinear keeps the base layer's bias Parameter
    for name in names:
        model.set_submodule(name, ClusteredLinear(model.get_submodule(name), bits, keep_zero=True, **kmeans))  # new codebooks train
    return names


def to_weight_only(model: nn.Module) -> nn.Module:
    """Replace each ClusteredLinear by the WeightOnlyLinear of its trained codes and codebook (kmeans layout),
    which `save_quantized` writes and `load_quantized` reads back."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, ClusteredLinear)]:
        bias = None if m.bias is None else m.bias.detach()
        model.set_submodule(name, WeightOnlyLinear.from_representation(m.quantized(), bias))
    return model

