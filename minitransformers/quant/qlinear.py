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

WeightOnlyLinear: W4A16 / W8A16. Only the weight is compact (int8 per channel, int4 per group, NF4 / FP4
blocks, k-means codebooks); x stays in float and the reference path dequantizes Ŵ, then multiplies. On a GPU
the gain is memory: a matmul over few tokens is bound by reading W, and a fused kernel reads 4 or 8 bits a
weight instead of 16. That kernel plugs into `weight_only_matmul`, the one place the product is computed.

SparseLinear (sparse.py): a pruned weight (magnitude or 2:4) in the layout of fewest bytes that holds it exactly.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import triton_runs_on
from ..kernels.int4_mm import Packed4Bit, w4a16_linear
from ..kernels.int8_mm import w8a8_linear
from .kmeans import KMeansQuantized, kmeans_quantize
from .layer import QuantizedLinear, bias_entry, nbytes
from .nonuniform import CodebookQuantized, DoubleQuantized, dynamic_codebook_on, quantize_fp4, quantize_nf4
from .pack import pack_int4, unpack_int4
from .prune import SKIP, skipped
from .sparse import SparseLinear
from .uniform import EPS, UniformQuantized, quantize_uniform


# --- the integer matmul --------------------------------------------------------------------------------------------


def int_mm_supported(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch._int_mm's preconditions: int8 matrices on the CPU (any shape) or on CUDA, where cuBLASLt needs M > 16
    and K, N positive multiples of 8 (the checks of `_int_mm_out_cuda`, aten/src/ATen/native/cuda/Blas.cpp)."""
    (M, K), N = a.shape, b.shape[1]
    if a.device.type == "cpu":
        return True
    return a.device.type == "cuda" and M > 16 and K > 0 and K % 8 == 0 and N > 0 and N % 8 == 0


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> (M, N) int32, exact.

    Fast path: torch._int_mm, whenever `int_mm_supported` (every CPU shape; CUDA shapes with M > 16 and K, N
    multiples of 8). W8A8Linear passes b as the transposed view of its contiguous (N, K) weight, a column-major
    (K, N) that needs no copy. Fallback, everywhere else: a float64 matmul, rounded to int32. It is exact
    because every product |a b| ≤ 128² = 2^14 and every partial sum stays below 2^53 for K < 2^39. Either path
    wraps around once a sum leaves int32: possible from K = 2^31 / 2^14 = 131,072 on (133,144 for codes in ±127)."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul multiplies int8 matrices, got {a.dtype} and {b.dtype}; quantize them first")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul needs a (M, K) and b (K, N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if int_mm_supported(a, b):
        return torch._int_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)  # exact, see above


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
        x2 = x.reshape(-1, self.in_features)  # (M, K): M = all tokens
        if triton_runs_on(x2):  # the fused Triton kernels of kernels/int8_mm.py
            return w8a8_linear(x2, self.codes, self.scale, self.bias).reshape(*x.shape[:-1], self.out_features)
        codes, scale = quantize_per_token(x2)  # (M, K) int8, s_X (M, 1)
        acc = int8_matmul(codes, self.codes.t())  # (M, K) @ (K, N) -> (M, N) int32; codes.t() is column-major
        y = acc.to(scale.dtype).mul_(scale).mul_(self.scale.t())  # (M, N) ⊙ s_X (M, 1) ⊙ s_Wᵀ (1, N), in place
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (…, N)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> int8 codes (M, K) and s_X (M, 1) float32: symmetric absmax / 127 per row, as
    `quantize_uniform(x, 8, block_size=(1, K))` computes it (a test checks), in fewer passes over x: a
    dynamic quantization runs at every call, so its cost is the layer's. |x| · 127 / absmax ≤ 127 rounds
    inside the int8 range, so no clamp is needed."""
    scale = x.float().abs().amax(-1, keepdim=True).clamp_min(EPS) / 127  # (M, 1)
    return (x.float() / scale).round_().to(torch.int8), scale


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
WeightOnlyQuantized = UniformQuantized | CodebookQuantized | KMeansQuantized


def check_stored_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"WeightOnlyLinear stores 4-bit codes two per byte and 8-bit codes one per byte, got bits={bits} "
                         "(whole bytes would overstate its size's report); quantize to 4 or 8 bits")


def to_storage(q: WeightOnlyQuantized) -> tuple[dict, dict[str, torch.Tensor]]:
    """(layout, tensors) of a weight-only representation, 4-bit codes packed two per byte along each row."""
    layout = {"shape": list(q.shape)}
    if isinstance(q, UniformQuantized):
        check_stored_bits(q.bits)
        codes = q.codes
        if q.bits == 4:
            codes = pack_int4(codes + 8 if q.symmetric else codes)  # symmetric [-7, 7] -> [1, 15]; (out, in / 2)
        layout.update(format="uniform", bits=q.bits, block_size=list(q.block_size), symmetric=q.symmetric)
        return layout, {"codes": codes, "scale": q.scale, **({} if q.symmetric else {"zero_point": q.zero_point})}
    if isinstance(q, CodebookQuantized):
        double = isinstance(q.absmax, DoubleQuantized)
        layout.update(format="codebook", dtype=str(q.dtype).removeprefix("torch."), block_size=q.block_size, double_quant=double)
        if not double:
            return layout, {"codes": q.codes, "codebook": q.codebook, "absmax": q.absmax}
        layout["absmax_block_size"] = q.absmax.block_size
        stats = {"absmax_codes": q.absmax.codes, "absmax_scale": q.absmax.scale, "absmax_offset": q.absmax.offset}
        return layout, {"codes": q.codes, "codebook": q.codebook, **stats}
    if isinstance(q, KMeansQuantized):
        check_stored_bits(q.bits)
        layout.update(format="kmeans", bits=q.bits)
        return layout, {"codes": pack_int4(q.codes) if q.bits == 4 else q.codes, "codebook": q.codebook}
    raise TypeError(f"WeightOnlyLinear holds a UniformQuantized, CodebookQuantized or KMeansQuantized weight, got {type(q).__name__}")


def from_storage(layout: dict, t: dict[str, torch.Tensor]) -> WeightOnlyQuantized:
    """The representation back from `to_storage`'s layout and tensors (codes unpacked where they were packed)."""
    shape = torch.Size(layout["shape"])
    if layout["format"] == "uniform":
        codes = t["codes"]
        if layout["bits"] == 4:
            codes = unpack_int4(codes, shape[1])  # (out, in) uint8 in [0, 15]
            codes = codes.to(torch.int8) - 8 if layout["symmetric"] else codes
        zero_point = torch.zeros_like(t["scale"], dtype=torch.int8) if layout["symmetric"] else t["zero_point"]
        return UniformQuantized(codes, t["scale"], zero_point, layout["bits"], tuple(layout["block_size"]), layout["symmetric"])
    if layout["format"] == "codebook":
        absmax = t["absmax"] if not layout["double_quant"] else DoubleQuantized(
            t["absmax_codes"], t["absmax_scale"], t["absmax_offset"], layout["absmax_block_size"]
        )  # fmt: skip
        return CodebookQuantized(t["codes"], absmax, t["codebook"], shape, getattr(torch, layout["dtype"]), layout["block_size"])
    codes = unpack_int4(t["codes"], shape[1]) if layout["bits"] == 4 else t["codes"]
    return KMeansQuantized(codes, t["codebook"], layout["bits"])


class WeightOnlyLinear(QuantizedLinear):
    """A linear layer over a compact weight (int8, int4, NF4, FP4, k-means); x and the output stay in float."""

    @staticmethod
    def stored_names(layout: dict) -> list[str]:
        if layout["format"] == "uniform":
            return ["codes", "scale"] + ([] if layout["symmetric"] else ["zero_point"])
        if layout["format"] == "codebook":
            return ["codes", "codebook"] + (["absmax_codes", "absmax_scale", "absmax_offset"] if layout["double_quant"] else ["absmax"])
        return ["codes", "codebook"]

    @classmethod
    def from_representation(cls, q: WeightOnlyQuantized, bias: torch.Tensor | None = None) -> WeightOnlyLinear:
        layout, tensors = to_storage(q)
        return cls(layout, {**tensors, **bias_entry(bias)})

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, method: str = "int4", **options) -> WeightOnlyLinear:
        """Quantize linear.weight with WEIGHT_ONLY[method](weight, **options)."""
        if method not in WEIGHT_ONLY:
            raise ValueError(f"unknown weight-only method {method!r}; use one of {list(WEIGHT_ONLY)}")
        return cls.from_representation(WEIGHT_ONLY[method](linear.weight.detach(), **options), linear.bias)

    @property
    def qweight(self) -> WeightOnlyQuantized:
        """The weight as its quantizer returned it (UniformQuantized, CodebookQuantized or KMeansQuantized)."""
        return from_storage(self.layout, dict(self.named_buffers(recurse=False)))

    @property
    def weight_nbytes(self) -> int:
        """The representation's own count (for NF4 / FP4 the 16-entry codebook is a constant of the format, not
        counted, though it is kept with the layer)."""
        return self.qweight.nbytes

    def dequantize(self) -> torch.Tensor:
        return self.qweight.dequantize()  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weight_only_matmul(x, self)


def weight_only_matmul(x: torch.Tensor, layer: WeightOnlyLinear) -> torch.Tensor:
    """y = x Ŵᵀ + b for x (…, in): the one function that computes a weight-only layer's product.

    4-bit layers (int4 per group, NF4 / FP4) on CUDA with Triton take the fused dequantize-and-multiply kernels of
    kernels/int4_mm.py, which read the packed buffers in place. Elsewhere this reference dequantizes, then matmuls.
    Under autocast x is first cast to autocast's dtype, as F.linear's autocast does (the kernels would otherwise
    take LayerNorm's fp32 output down their slower fp32 path); y comes out in that dtype."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    if triton_runs_on(x) and Packed4Bit.supports(layer.layout):
        weight = Packed4Bit.from_storage(layer.layout, dict(layer.named_buffers(recurse=False)), dynamic_codebook_on(x.device))
        return w4a16_linear(x, weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.dequantize().to(x.dtype), bias)


# --- a whole model ---------------------------------------------------------------------------------------------------

PRUNING = {"prune50": {"sparsity": 0.5}, "prune2:4": {"n_m": (2, 4)}}
METHODS = (*WEIGHT_ONLY, "w8a8", *PRUNING)


def layer_maker(method: str, options: dict):
    """linear -> quantized layer for a method name, after checking its options."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; use one of {list(METHODS)}")
    accepted = list(inspect.signature(WEIGHT_ONLY[method]).parameters)[1:] if method in WEIGHT_ONLY else []
    if unknown := sorted(set(options) - set(accepted)):
        raise ValueError(f"method {method!r} takes the options {accepted}, got {unknown}; drop them or pick another method")
    if method == "w8a8":
        return W8A8Linear.from_linear
    if method in PRUNING:
        return partial(SparseLinear.from_linear, **PRUNING[method])
    return partial(WeightOnlyLinear.from_linear, method=method, **options)


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, skip=SKIP, **options) -> dict:
    """Replace, in place, every nn.Linear whose dotted name has no whole part in `skip` with `method`'s layer:
    "int8" (W8A16 per channel), "int4" (W4A16; group_size=128, symmetric=True), "nf4" / "fp4" (block_size=64,
    double_quant=False), "kmeans4" / "kmeans8" (a codebook per layer), "w8a8", "prune50" (50% magnitude per layer)
    and "prune2:4". The options in brackets are the defaults that `**options` may change.

    Returns the storage report: "layers" replaced; "bits_per_weight", 8 · their weights' real bytes / their weight
    count; "linear_bytes_fp32" and "linear_bytes", those layers (weights and biases) in fp32 and as stored now;
    "model_bytes", the whole model as stored (every other parameter and buffer at its dtype)."""
    make = layer_maker(method, options)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(name, skip)]
    if not names:
        raise ValueError(f"no nn.Linear outside skip={tuple(skip)} to quantize; is the model already quantized?")
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
