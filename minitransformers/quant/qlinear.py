"""Quantized and sparse replacements for nn.Linear, and `quantize_model`, which swaps them into a model in place.

Each layer is made from a trained nn.Linear by `from_linear(linear, **options)` and computes y = x Ŵᵀ + b,
(…, in) -> (…, out) in x's dtype. Its weight lives in compact form: a few named tensors (the module's buffers,
also what `save_quantized` writes) and a small JSON-able `layout`; `cls(layout, tensors)` rebuilds the layer.

W8A8Linear: 8-bit weights and 8-bit activations, an integer matmul. The vector-wise quantization of LLM.int8
(Dettmers et al. 2022, section 3.1, here without its fp16 outlier decomposition), which is SmoothQuant's
per-token × per-channel scheme (Xiao et al. 2023, section 2, here without smoothing); symmetric absmax
scaling with the restricted range ±127 as in Wu et al. 2020, "Integer Quantization for Deep Learning Inference":

    s_W = absmax of each output row of W / 127      W ≈ s_W ⊙ W_q,   W_q int8 (N, K), s_W (N, 1), once
    s_X = absmax of each token (row) of X / 127     X ≈ s_X ⊙ X_q,   X_q int8 (M, K), s_X (M, 1), every call
    Y = X Wᵀ + b ≈ (X_q W_qᵀ) ⊙ (s_X s_Wᵀ) + b        X_q W_qᵀ: int8 × int8 summed in int32, (M, N)

Error: rounding to a step Δ = absmax / 127 adds noise of variance Δ² / 12 per element, so Y's relative error
is about √(ε_X² + ε_W²), ε = absmax / (127 √12 · rms). Gaussian rows of K = 128 … 1024 values have absmax ≈ 2.8 …
3.4 rms, so ε ≈ 0.65 … 0.8% each; measured on XWᵀ: 0.92% at K = 128, 1.11% at K = 1024 (tests/test_qlinear.py).

The layer's product is `w8a8_linear` (kernels/int8_mm.py): the Triton kernels on CUDA, their plain-torch reference
elsewhere.

WeightOnlyLinear: W4A16 / W8A16. Only the weight is compact, in any registered format (quant/format.py: int8 per
channel and int4 per group are "uniform", NF4 / FP4 blocks "codebook", k-means codebooks "kmeans"); the layer keeps
the format's stored tensors as buffers and reads nothing but the registry. x stays in float and the reference
dequantizes Ŵ, then multiplies. On a GPU the gain is memory: a matmul over few tokens is bound by reading W, and a
fused kernel reads 4 or 8 bits a weight instead of 16. `weight_only_matmul` is the one place the product is
computed, and the one place that picks the W4A16 kernels (kernels/int4_mm.py) or the reference.

SparseLinear (sparse.py): a pruned weight (magnitude or 2:4) in the layout of fewest bytes that holds it exactly.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn

from ..errors import InputError
from ..kernels import triton_runs_on
from ..kernels.int4_mm import Packed4Bit, w4a16_linear, w4a16_linear_reference
from ..kernels.int8_mm import w8a8_linear
from .format import QuantizedWeight, format_of
from .kmeans import kmeans_quantize
from .layer import QuantizedLinear, bias_entry, nbytes
from .nonuniform import quantize_fp4, quantize_nf4
from .prune import SKIP, skipped
from .sparse import SparseLinear
from .uniform import UniformQuantized, quantize_uniform


# --- W8A8 ----------------------------------------------------------------------------------------------------------


class W8A8Linear(QuantizedLinear):
    """int8 weights per output channel, int8 activations per token, the product in int32 (see the module docstring)."""

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return ["codes", "scale"]  # W_q (N, K) int8, s_W (N, 1) float32

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> W8A8Linear:
        w = quantize_uniform(linear.weight, 8, block_size=(1, linear.in_features))  # symmetric, absmax / 127 per row
        layout = {"shape": [linear.out_features, linear.in_features]}
        return cls(layout, {"codes": w.codes, "scale": w.scale, **bias_entry(linear.bias)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = w8a8_linear(x.reshape(-1, self.in_features), self.codes, self.scale, self.bias)  # (M, K) -> (M, N), M = all tokens
        return y.reshape(*x.shape[:-1], self.out_features)  # (…, N)


# --- weight-only: int8 / int4 uniform, NF4 / FP4 codebooks, k-means ------------------------------------------------


def int8_per_channel(w: torch.Tensor) -> UniformQuantized:
    """W8A16: symmetric int8, one absmax / 127 scale per output row; 8 + 32 / in bits a weight."""
    return quantize_uniform(w, 8, block_size=(1, w.shape[1]))


def int4_per_group(w: torch.Tensor, group_size: int = 128, symmetric: bool = True) -> UniformQuantized:
    """W4A16: 4-bit codes, one scale (and, if affine, a uint8 zero point) per `group_size` inputs of a row, as
    GPTQ and AWQ store them; 4 + 32 / g bits a weight (+ 8 / g affine)."""
    return quantize_uniform(w, 4, block_size=(1, group_size), symmetric=symmetric)


def per_layer_kmeans(bits: int):
    """Deep Compression's clustering with one codebook of 2^bits centroids per layer: w -> KMeansQuantized."""
    return lambda w: kmeans_quantize(w, bits)


WEIGHT_ONLY = {
    "int8": int8_per_channel, "int4": int4_per_group, "nf4": quantize_nf4, "fp4": quantize_fp4,
    "kmeans4": per_layer_kmeans(4), "kmeans8": per_layer_kmeans(8),
}  # fmt: skip


class WeightOnlyLinear(QuantizedLinear):
    """A linear layer over a compact weight in any registered format (quant/format.py: int8, int4, NF4, FP4,
    k-means); x and the output stay in float. Its buffers are the format's stored tensors."""

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        return format_of(layout).stored_names(layout)

    @classmethod
    def from_representation(cls, q: QuantizedWeight, bias: torch.Tensor | None = None) -> WeightOnlyLinear:
        layout, tensors = q.to_storage()
        return cls(layout, {**tensors, **bias_entry(bias)})

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, method: str = "int4", **options) -> WeightOnlyLinear:
        """Quantize linear.weight with WEIGHT_ONLY[method](weight, **options)."""
        if method not in WEIGHT_ONLY:
            raise InputError(f"unknown weight-only method {method!r}; use one of {list(WEIGHT_ONLY)}")
        return cls.from_representation(WEIGHT_ONLY[method](linear.weight.detach(), **options), linear.bias)

    def stored(self) -> dict[str, torch.Tensor]:
        """The format's stored tensors: the layer's buffers."""
        return dict(self.named_buffers(recurse=False))

    @property
    def qweight(self) -> QuantizedWeight:
        """The weight as its quantizer returned it (a UniformQuantized, CodebookQuantized, KMeansQuantized, …)."""
        return format_of(self.layout).from_storage(self.layout, self.stored())

    @property
    def weight_nbytes(self) -> int:
        """The representation's own count (for NF4 / FP4 the 16-entry codebook is a constant of the format, not
        counted, though it is kept with the layer)."""
        return self.qweight.nbytes

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.qweight.dequantize(dtype)  # (out, in)

    def packed_4bit(self) -> Packed4Bit | None:
        """The W4A16 kernels' view of the buffers, or None when they do not read this format."""
        return format_of(self.layout).packed_4bit(self.layout, self.stored())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weight_only_matmul(x, self)


def weight_only_matmul(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    """y = x Ŵᵀ + b for x (…, in): the one function that computes a weight-only layer's product.

    On CUDA with Triton, a layer whose format the W4A16 kernels read (int4 per group, NF4 / FP4) goes to
    `w4a16_linear`, the kernels of kernels/int4_mm.py on the packed buffers in place (or their reference, for a
    weight they do not take). Everything else is that same reference, `w4a16_linear_reference`: F.linear over the
    format's dequantized weight. Under autocast x is first cast to autocast's dtype, as F.linear's autocast does (the
    kernels would otherwise take LayerNorm's fp32 output down their slower fp32 path); y comes out in that dtype."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    packed = layer.packed_4bit() if triton_runs_on(x) else None
    if packed is not None:
        return w4a16_linear(x, packed, layer.bias)
    return w4a16_linear_reference(x, layer, layer.bias)


# --- a whole model ---------------------------------------------------------------------------------------------------

PRUNING = {"prune50": {"sparsity": 0.5}, "prune2:4": {"n_m": (2, 4)}}
METHODS = (*WEIGHT_ONLY, "w8a8", *PRUNING)


def layer_maker(method: str, options: dict):
    """linear -> quantized layer for a method name, after checking its options."""
    if method not in METHODS:
        raise InputError(f"unknown quantization method {method!r}; use one of {list(METHODS)}")
    accepted = list(inspect.signature(WEIGHT_ONLY[method]).parameters)[1:] if method in WEIGHT_ONLY else []
    if unknown := sorted(set(options) - set(accepted)):
        raise InputError(f"method {method!r} takes the options {accepted}, got {unknown}; drop them or pick another method")
    if method == "w8a8":
        return W8A8Linear.from_linear
    if method in PRUNING:
        return partial(SparseLinear.from_linear, **PRUNING[method])
    return partial(WeightOnlyLinear.from_linear, method=method, **options)


def tied_weight_names(model: nn.Module) -> set[str]:
    """Parameter names that a quantized layer must not replace: both sides of the model's `tied_weights` (alias ->
    owner, e.g. MaskedLM's decoder and word embedding), and every name of a Parameter that two modules hold."""
    names = {name for pair in getattr(model, "tied_weights", {}).items() for name in pair}
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    return names | {name for group in holders.values() if len(group) > 1 for name in group}


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, skip=SKIP, **options) -> dict:
    """Replace, in place, every nn.Linear whose dotted name has no whole part in `skip` and whose weight is not tied
    (`tied_weight_names`: quantizing it would untie it, or quantize the embedding with it) with `method`'s layer:
    "int8" (W8A16 per channel), "int4" (W4A16; group_size=128, symmetric=True), "nf4" / "fp4" (block_size=64,
    double_quant=False), "kmeans4" / "kmeans8" (a codebook per layer), "w8a8", "prune50" (50% magnitude per layer)
    and "prune2:4". The options in brackets are the defaults that `**options` may change.

    Returns the storage report: "layers" replaced; "bits_per_weight", 8 · their weights' real bytes / their weight
    count; "linear_bytes_fp32" and "linear_bytes", those layers (weights and biases) in fp32 and as stored now;
    "model_bytes", the whole model as stored (every other parameter and buffer at its dtype)."""
    make = layer_maker(method, options)
    tied = tied_weight_names(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(n, skip) and f"{n}.weight" not in tied]
    if not names:
        raise InputError(f"no untied nn.Linear outside skip={tuple(skip)} to quantize; is the model already quantized?")
    for name in names:
        model.set_submodule(name, make(model.get_submodule(name)))
    layers = [model.get_submodule(name) for name in names]
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    rest = [t for name, t in [*model.named_parameters(), *model.named_buffers()] if name.rpartition(".")[0] not in quantized]
    weights = sum(m.out_features * m.in_features for m in layers)
    return {
        "method": method,
        "layers": len(layers),
        "bits_per_weight": 8 * sum(m.weight_nbytes for m in layers) / weights,
        "linear_bytes_fp32": 4 * (weights + sum(m.out_features for m in layers if m.bias is not None)),
        "linear_bytes": sum(m.nbytes for m in layers),
        "model_bytes": nbytes(rest) + sum(model.get_submodule(name).nbytes for name in quantized),
    }
